"""Log-likelihoods, the ELBO and the importance-weighted bound.

Introduced in notebooks 03 (the ELBO, the importance-weighted bound), 04 (the VAE loss from the
ELBO) and 07 (honest test log-likelihoods). All quantities are in nats, summed over the event
dimensions (pixels, latent coordinates) and never over the batch.

The functions that take a ``model`` need only these methods (``vaelib.models.VAE`` has them,
and so can any small model written in a notebook): ``prepare_input(x)``, ``encode(x) ->
(mu, logvar)`` of a diagonal Gaussian q(z|x), ``decode(z)``, ``log_px_given_z(x, decoded)``
and ``kl(mu, logvar)`` (the KL of q(z|x) to the prior N(0, I)).
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F

from ._helpers import (
    evaluating,
    NonFiniteError,
    ShapeError,
    VaelibInputError,
    check_beta,
    check_floating,
    check_min_ndim,
    check_no_nan,
    check_nonempty_batch,
    check_positive_int,
    check_tensor,
)

ELBOTerms = namedtuple("ELBOTerms", ["elbo", "reconstruction", "kl"])
ELBOTerms.__doc__ = """Per-data-point ELBO and its two parts: ``elbo = reconstruction − β·kl``."""


def _sum_event(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    if event_dims < 0 or event_dims > t.dim():
        raise ShapeError(f"event_dims={event_dims} is not valid for a tensor with {t.dim()} dimensions")
    return t.sum(dim=tuple(range(-event_dims, 0))) if event_dims else t


def _check_broadcast(x: torch.Tensor, param: torch.Tensor, event_dims: int, func: str, pname: str) -> None:
    """x and the distribution's parameter must share their event shape and broadcast, without NaN."""
    for t, name in ((x, "x"), (param, pname)):
        check_tensor(t, f"{func}: {name}")
        check_no_nan(t, f"{func}: {name}")
    xs, ps = tuple(x.shape[x.dim() - event_dims :]), tuple(param.shape[param.dim() - event_dims :])
    if xs != ps:
        raise ShapeError(
            f"{func}: x and {pname} have different event shapes {xs} and {ps} "
            f"(full shapes {tuple(x.shape)} and {tuple(param.shape)})"
        )
    try:
        torch.broadcast_shapes(x.shape, param.shape)
    except RuntimeError:
        raise ShapeError(f"{func}: shapes {tuple(x.shape)} and {tuple(param.shape)} do not broadcast") from None


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, sigma: float | torch.Tensor = 1.0, event_dims: int = 1
) -> torch.Tensor:
    """log N(x; mean, σ² I) summed over the last ``event_dims`` axes, constant included.

    For p pixels: −(p/2)·log(2πσ²) − ‖x − mean‖² / (2σ²). ``sigma`` is a positive number or a
    tensor broadcastable to ``x`` (one standard deviation per pixel). Introduced in notebook 04.
    """
    _check_broadcast(x, mean, event_dims, "gaussian_log_likelihood", "mean")
    sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device)
    if not torch.all(sigma > 0) or not torch.all(torch.isfinite(sigma)):
        raise VaelibInputError("gaussian_log_likelihood: sigma must be positive and finite")
    data_shape = torch.broadcast_shapes(x.shape, mean.shape)
    try:
        fits = torch.broadcast_shapes(sigma.shape, data_shape) == data_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ShapeError(
            f"gaussian_log_likelihood: sigma of shape {tuple(sigma.shape)} does not broadcast to the "
            f"shape {tuple(data_shape)} of x and mean"
        )
    log_density = -0.5 * ((x - mean) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    if torch.any(torch.isnan(log_density)):
        raise NonFiniteError(
            "gaussian_log_likelihood: x and mean are both infinite, with the same sign, at some "
            "entries; their difference is undefined"
        )
    return _sum_event(log_density.expand(torch.broadcast_shapes(log_density.shape, x.shape)), event_dims)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor, event_dims: int = 1) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last ``event_dims`` axes.

    Equals minus the binary cross-entropy with logits: Σ x·ℓ − log(1 + e^ℓ), computed stably.
    ``x`` must lie in [0, 1] (a likelihood needs binary x; values in between give the
    cross-entropy used by some tutorials on grey levels, which is not a log-likelihood).
    Introduced in notebook 04.
    """
    _check_broadcast(x, logits, event_dims, "bernoulli_log_likelihood", "logits")
    check_floating(logits, "bernoulli_log_likelihood: logits")
    if torch.any((x < 0) | (x > 1)):
        raise VaelibInputError("bernoulli_log_likelihood: x must lie in [0, 1] (binarized pixels)")
    x, logits = torch.broadcast_tensors(x.to(logits.dtype), logits)
    log_p = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    infinite = torch.isinf(logits)
    if bool(infinite.any()):
        # An infinite logit is a probability of exactly 1 or 0, where the formula above gives
        # inf - inf; the log-likelihood there is 0 when x agrees with it and -inf otherwise.
        certain = torch.where(x == (logits > 0).to(x.dtype), 0.0, -math.inf).to(log_p.dtype)
        log_p = torch.where(infinite, certain, log_p)
    return _sum_event(log_p, event_dims)


def elbo(
    model,
    x: torch.Tensor,
    beta: float = 1.0,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    return_terms: bool = False,
):
    """Monte Carlo estimate of the (β-weighted) ELBO of a VAE, one value per data point.

    ELBO_β(x) = E_q[log p(x|z)] − β·KL(q(z|x) ‖ p(z)), with the KL in closed form and the
    expectation estimated from ``n_samples`` reparameterized draws of z. With β = 1 its expectation
    (over the draws) is the evidence lower bound, ≤ log p(x); a single estimate is random and can
    exceed log p(x). Returns a tensor of shape (N,), or
    :class:`ELBOTerms` (elbo, reconstruction, kl) when ``return_terms`` is true.
    Introduced in notebooks 03 and 04.
    """
    from .reparam import reparameterize

    n_samples = check_positive_int(n_samples, "n_samples")
    beta = check_beta(beta)
    xf = model.prepare_input(x)
    mu, logvar = model.encode(xf)
    z = reparameterize(mu, logvar, n_samples=n_samples, generator=generator)  # (S, N, d)
    reconstruction = model.log_px_given_z(xf, model.decode(z)).mean(0)
    kl = model.kl(mu, logvar)
    value = reconstruction - beta * kl
    return ELBOTerms(value, reconstruction, kl) if return_terms else value


def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The importance-weighted bound log (1/K) Σₖ wₖ from log weights, along ``dim``.

    With log wₖ = log p(x, zₖ) − log q(zₖ|x) and zₖ ~ q(z|x), its expectation is ≤ log p(x) and
    rises with K; K = 1 gives the ELBO. Computed as logsumexp − log K, so very negative log
    weights (−500 and below) do not underflow. Introduced in notebooks 03 and 07.
    """
    check_no_nan(log_weights, "log_weights")
    check_min_ndim(log_weights, 1, "log_weights")
    if not -log_weights.dim() <= dim < log_weights.dim():
        raise ShapeError(
            f"iwae_bound: dim={dim} is out of range for log_weights of shape {tuple(log_weights.shape)}"
        )
    if torch.any(log_weights == math.inf):
        raise NonFiniteError("log_weights contains +inf: some importance weight is infinite")
    k = log_weights.shape[dim]
    if k == 0:
        raise ValueError("iwae_bound: need at least one log weight along dim")
    return torch.logsumexp(log_weights, dim=dim) - math.log(k)


def log_weights(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x, zₖ) − log q(zₖ|x) for k draws zₖ ~ q(z|x): shape (k, N). Introduced in notebook 07."""
    from .reparam import reparameterize

    xf = model.prepare_input(x)
    mu, logvar = model.encode(xf)
    z = reparameterize(mu, logvar, n_samples=k, generator=generator)  # (k, N, d)
    log_px_z = model.log_px_given_z(xf, model.decode(z))
    log_pz = gaussian_log_likelihood(z, torch.zeros_like(z))
    log_qz = gaussian_log_likelihood(z, mu, torch.exp(0.5 * logvar))
    return log_px_z + log_pz - log_qz


def iwae_loss(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The IWAE training loss: minus the k-sample importance-weighted bound, averaged over the batch.

    For every image, k reparameterized draws zₖ ~ q(z|x) give log weights
    log wₖ = log p(x, zₖ) − log q(zₖ|x) (:func:`log_weights`), and the loss is
    −mean over images of log (1/k) Σₖ wₖ (:func:`iwae_bound`), in nats per image. Gradients
    flow through the draws to the encoder and through the weights to the decoder (Burda, Grosse
    and Salakhutdinov, 2016). k = 1 is the ELBO, and is computed exactly as the ELBO training
    loss of notebook 04 (``model.loss(x, generator=generator)``: the same draw of z, with the KL
    term in closed form rather than its one-sample estimate log q(z|x) − log p(z)); so
    ``iwae_loss(model, x, 1, g)`` equals ``model.loss(x, generator=g)`` when ``g`` is seeded
    alike. Introduced in notebook 07.
    """
    k = check_positive_int(k, "k")
    check_nonempty_batch(x, "x")
    if k == 1:
        return -elbo(model, x, generator=generator).mean()
    return -iwae_bound(log_weights(model, x, k, generator=generator), dim=0).mean()


@torch.no_grad()
def log_likelihood(
    model,
    x: torch.Tensor,
    k: int = 5000,
    batch_size: int = 100,
    max_rows: int = 50_000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for each data point: the IWAE bound with k samples.

    The work is chunked over data points (``batch_size``) and over samples, so that no decoder
    call sees more than ``max_rows`` codes at once: k = 5000 on the 10,000 MNIST test images runs
    in bounded memory (a few hundred MB on CPU). Returns a tensor of shape (N,) on ``x``'s
    device. Introduced in notebook 07.
    """
    k = check_positive_int(k, "k")
    batch_size = check_positive_int(batch_size, "batch_size")
    with evaluating(model):
        xf = model.prepare_input(x)
        if xf.dim() != 2:
            raise ShapeError(
                f"log_likelihood needs a batch of images, one image per row of the first axis "
                f"(N, {xf.shape[-1]}); got x of shape {tuple(x.shape)}"
            )
        n = xf.shape[0]
        out = torch.empty(n, dtype=torch.float64)
        samples_per_call = max(1, min(k, max_rows // max(1, min(batch_size, n))))
        for start in range(0, n, batch_size):
            xb = xf[start : start + batch_size]
            chunks = []
            for s in range(0, k, samples_per_call):
                lw = log_weights(model, xb, min(samples_per_call, k - s), generator=generator)
                chunks.append(lw.to(torch.float64))
            out[start : start + xb.shape[0]] = iwae_bound(torch.cat(chunks, 0), dim=0).cpu()
    return out.to(x.device)
