"""Log-likelihoods, the ELBO and the importance-weighted bound (notebooks 03, 04, 05 and 08).

Everything is in nats, summed over the event dimensions (pixels, latent coordinates), never over
the batch. The functions that take a ``model`` need five methods, which :class:`vaelib.models.VAE`
has and a small model written in a notebook can have too: ``prepare_input(x)``, ``encode(x)`` →
(μ, log σ²) of q(z|x), ``decode(z)``, ``log_px_given_z(x, decoded)`` and ``kl(mu, logvar)``.
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F

from ._helpers import (
    check_beta,
    check_floating,
    check_likelihood_args,
    check_min_ndim,
    check_model_input,
    check_no_nan,
    check_nonempty_batch,
    check_positive_int,
    checked,
    evaluating,
    unchecked,
)
from .errors import NonFiniteError, ShapeError, VaelibInputError
from .reparam import reparameterize

ELBOTerms = namedtuple("ELBOTerms", ["elbo", "reconstruction", "kl"])
ELBOTerms.__doc__ = "Per-data-point ELBO and its two parts: ``elbo = reconstruction − β·kl``."


def _sum_event(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-event_dims, 0))) if event_dims else t


def _check_gaussian(x, mean, sigma=1.0, event_dims=1) -> None:
    check_likelihood_args(x, mean, event_dims, "gaussian_log_likelihood", "mean")
    sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device)
    if not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
        raise VaelibInputError("gaussian_log_likelihood: sigma must be positive and finite")
    shape = torch.broadcast_shapes(x.shape, mean.shape)
    try:
        fits = torch.broadcast_shapes(sigma.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ShapeError(f"gaussian_log_likelihood: sigma of shape {tuple(sigma.shape)} does not broadcast to the "
                         f"shape {tuple(shape)} of x and mean")
    if bool((torch.isinf(x) & (x == mean)).any()):
        raise NonFiniteError("gaussian_log_likelihood: x and mean are both infinite, with the same sign, at some "
                             "entries; their difference is undefined")


@checked(_check_gaussian)
def gaussian_log_likelihood(x, mean, sigma: float | torch.Tensor = 1.0, event_dims: int = 1) -> torch.Tensor:
    """log N(x; mean, σ² I) summed over the last ``event_dims`` axes (notebook 04):

        Σ_pixels [ −½ ((x − mean)/σ)² − log σ − ½ log 2π ]

    ``sigma`` is a positive number or a tensor broadcastable to ``x`` (one σ per pixel).
    """
    sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device)
    log_density = -0.5 * ((x - mean) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return _sum_event(log_density.expand(torch.broadcast_shapes(log_density.shape, x.shape)), event_dims)


def _check_bernoulli(x, logits, event_dims=1) -> None:
    check_likelihood_args(x, logits, event_dims, "bernoulli_log_likelihood", "logits")
    check_floating(logits, "bernoulli_log_likelihood: logits")
    if bool(((x < 0) | (x > 1)).any()):
        raise VaelibInputError("bernoulli_log_likelihood: x must lie in [0, 1] (binarized pixels)")


@checked(_check_bernoulli)
def bernoulli_log_likelihood(x, logits, event_dims: int = 1) -> torch.Tensor:
    """log Bernoulli(x; σ(ℓ)) summed over the last ``event_dims`` axes, ℓ = ``logits`` (notebook 04):

        Σ_pixels [ x log σ(ℓ) + (1 − x) log(1 − σ(ℓ)) ] = Σ_pixels [ x ℓ − log(1 + e^ℓ) ]

    A likelihood needs binary x; grey levels in between give the cross-entropy some tutorials
    train on, which is not a log-likelihood.
    """
    x, logits = torch.broadcast_tensors(x.to(logits.dtype), logits)
    # PyTorch's binary cross-entropy with logits is minus this sum, computed without overflow.
    log_p = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    # An infinite logit is a certain pixel, where the line above gives inf − inf: the
    # log-likelihood is 0 where x agrees with it and −inf where it does not.
    certain = torch.where(x == (logits > 0).to(x.dtype), 0.0, -math.inf).to(log_p.dtype)
    return _sum_event(torch.where(torch.isinf(logits), certain, log_p), event_dims)


def _check_elbo(model, x, beta=1.0, n_samples=1, generator=None, return_terms=False) -> None:
    check_positive_int(n_samples, "n_samples")
    check_beta(beta)
    check_model_input(model, x)


@checked(_check_elbo)
def elbo(model, x, beta: float = 1.0, n_samples: int = 1, generator=None, return_terms: bool = False):
    """Monte Carlo estimate of the β-weighted ELBO, one value per data point (notebooks 03, 04):

        ELBO_β(x) = E_q[log p(x|z)] − β · KL(q(z|x) ‖ p(z)),

    the expectation from ``n_samples`` reparameterized draws z ~ q(z|x), the KL in closed form.
    With β = 1 its expectation is ≤ log p(x) (a single estimate can exceed it). Returns shape (N,),
    or :class:`ELBOTerms` (elbo, reconstruction, kl) with ``return_terms=True``.
    """
    x = model.prepare_input(x)
    mu, logvar = unchecked(model.encode)(x)
    z = reparameterize.unchecked(mu, logvar, n_samples=n_samples, generator=generator)  # (S, N, d)
    reconstruction = model.log_px_given_z(x, unchecked(model.decode)(z)).mean(0)
    kl = model.kl(mu, logvar)
    value = reconstruction - beta * kl
    return ELBOTerms(value, reconstruction, kl) if return_terms else value


def _check_iwae_bound(log_weights, dim=0) -> None:
    check_no_nan(log_weights, "log_weights")
    check_min_ndim(log_weights, 1, "log_weights")
    if not -log_weights.dim() <= dim < log_weights.dim():
        raise ShapeError(f"iwae_bound: dim={dim} is out of range for log_weights of shape {tuple(log_weights.shape)}")
    if bool((log_weights == math.inf).any()):
        raise NonFiniteError("log_weights contains +inf: some importance weight is infinite")
    if log_weights.shape[dim] == 0:
        raise ValueError("iwae_bound: need at least one log weight along dim")


@checked(_check_iwae_bound)
def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The importance-weighted bound log (1/K) Σₖ wₖ, from log weights along ``dim`` (notebooks 05, 08).

    With log wₖ = log p(x, zₖ) − log q(zₖ|x), zₖ ~ q(z|x), its expectation is ≤ log p(x) and rises
    with K; K = 1 is the ELBO. logsumexp keeps log weights of −1000 from underflowing.
    """
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])


def _check_log_weights(model, x, k, generator=None) -> None:
    check_positive_int(k, "k")
    check_model_input(model, x)


@checked(_check_log_weights)
def log_weights(model, x, k: int, generator=None) -> torch.Tensor:
    """log wₖ = log p(x|zₖ) + log p(zₖ) − log q(zₖ|x) for k draws zₖ ~ q(z|x): shape (k, N). Notebook 08."""
    x = model.prepare_input(x)
    mu, logvar = unchecked(model.encode)(x)
    z = reparameterize.unchecked(mu, logvar, n_samples=k, generator=generator)  # (k, N, d)
    log_px_z = model.log_px_given_z(x, unchecked(model.decode)(z))
    log_pz = gaussian_log_likelihood.unchecked(z, torch.zeros_like(z))
    log_qz = gaussian_log_likelihood.unchecked(z, mu, torch.exp(0.5 * logvar))
    return log_px_z + log_pz - log_qz


def _check_iwae_loss(model, x, k, generator=None) -> None:
    check_nonempty_batch(x, "x")
    _check_log_weights(model, x, k)


@checked(_check_iwae_loss)
def iwae_loss(model, x, k: int, generator=None) -> torch.Tensor:
    """The IWAE training loss: minus the k-sample bound, averaged over the batch (nats per image).

    Gradients flow through the draws to the encoder and through the weights to the decoder (Burda,
    Grosse & Salakhutdinov, 2016). k = 1 is the ELBO loss of notebook 04, computed as such (the KL
    in closed form), so ``iwae_loss(model, x, 1, g)`` equals ``model.loss(x, generator=g)``.
    """
    if k == 1:
        return -elbo.unchecked(model, x, generator=generator).mean()
    return -iwae_bound.unchecked(log_weights.unchecked(model, x, k, generator=generator), dim=0).mean()


@torch.no_grad()
def log_likelihood(model, x, k: int = 5000, batch_size: int = 100, max_rows: int = 50_000, generator=None):
    """Importance-sampled log p(x) per data point: the IWAE bound with k samples (notebook 08).

    Works through the data in batches and the samples in chunks, so that no decoder call sees more
    than ``max_rows`` codes: k = 5000 on the 10,000 MNIST test images fits in a few hundred MB.
    Returns float64 values of shape (N,) on ``x``'s device.
    """
    k = check_positive_int(k, "k")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_model_input(model, x)
    with evaluating(model):
        xf = model.prepare_input(x)
        if xf.dim() != 2:
            raise ShapeError(f"log_likelihood needs a batch of images, one image per row of the first axis "
                             f"(N, {xf.shape[-1]}); got x of shape {tuple(x.shape)}")
        out = torch.empty(xf.shape[0], dtype=torch.float64)
        per_call = max(1, min(k, max_rows // max(1, min(batch_size, xf.shape[0]))))
        for start in range(0, xf.shape[0], batch_size):
            xb = xf[start : start + batch_size]
            lw = [log_weights.unchecked(model, xb, min(per_call, k - s), generator).double() for s in range(0, k, per_call)]
            out[start : start + xb.shape[0]] = iwae_bound.unchecked(torch.cat(lw), dim=0).cpu()
    return out.to(x.device)
