"""The reparameterization trick and Monte Carlo gradient estimators (notebook 04).

Sampling: :func:`reparameterize` (z = μ + σ·ε, diagonal) and :func:`reparameterize_full`
(z = μ + L ε). Estimators of ∇θ E_q[f(z)] return one gradient per sample, so that both their mean
(the estimate) and their variance can be studied: :func:`pathwise_gradient` and the score-function
estimators for Gaussian, Bernoulli and categorical q. ``f`` maps samples (n, *param.shape) to n
values, value i depending on sample i only.
"""

from __future__ import annotations

import torch

from ._helpers import (
    broadcast_batch_shape,
    check_finite,
    check_floating,
    check_generator_device,
    check_last_dims,
    check_lower_triangular,
    check_min_ndim,
    check_positive_int,
    check_same_shape,
    checked,
)
from .errors import NonFiniteError, ShapeError


def _check_diagonal(mu, logvar, n_samples=None, generator=None, names=("mu", "logvar")) -> None:
    for t, name in zip((mu, logvar), names):
        check_floating(t, name)
    check_same_shape(mu, logvar, names)
    for t, name in zip((mu, logvar), names):
        check_finite(t, name)
    check_generator_device(generator, mu.device)
    if n_samples is not None:
        check_positive_int(n_samples, "n_samples")


def _noise(shape, n_samples, a: torch.Tensor, b: torch.Tensor, generator) -> torch.Tensor:
    """ε ~ N(0, I) of ``shape``, or of (n_samples, *shape), on a's device, in the dtype of a and b."""
    shape = tuple(shape) if n_samples is None else (n_samples, *shape)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.randn(shape, generator=generator, device=a.device, dtype=dtype)


@checked(_check_diagonal)
def reparameterize(mu, logvar, n_samples: int | None = None, generator: torch.Generator | None = None):
    """Draw z ~ N(μ, diag σ²) as z = μ + σ·ε with ε ~ N(0, I) and σ = exp(logvar / 2).

    Shapes: ``mu`` and ``logvar`` alike; the result has their shape, or (n_samples, *shape).
    Gradients flow to μ (dz/dμ = 1) and to log σ² (dz/dlogvar = σ·ε/2). Notebook 04.
    """
    eps = _noise(mu.shape, n_samples, mu, logvar, generator)
    return mu + torch.exp(0.5 * logvar) * eps


def _check_full(mu, scale_tril, n_samples=None, generator=None) -> None:
    check_floating(mu, "mu")
    check_floating(scale_tril, "scale_tril")
    check_min_ndim(mu, 1, "mu")
    d = mu.shape[-1]
    check_last_dims(scale_tril, (d, d), f"scale_tril (matching mu of shape {tuple(mu.shape)})")
    broadcast_batch_shape([mu.shape[:-1], scale_tril.shape[:-2]], ["mu", "scale_tril"])
    check_finite(mu, "mu")
    check_lower_triangular(scale_tril, "scale_tril")
    check_generator_device(generator, mu.device)
    if n_samples is not None:
        check_positive_int(n_samples, "n_samples")


@checked(_check_full)
def reparameterize_full(mu, scale_tril, n_samples: int | None = None, generator: torch.Generator | None = None):
    """Draw z ~ N(μ, L Lᵀ) as z = μ + L ε with ε ~ N(0, I); L = ``scale_tril`` (..., d, d) is lower
    triangular with a positive diagonal, e.g. a Cholesky factor. Notebook 04."""
    batch = torch.broadcast_shapes(mu.shape[:-1], scale_tril.shape[:-2])
    eps = _noise((*batch, mu.shape[-1]), n_samples, mu, scale_tril, generator)
    return mu + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------- gradient estimators
def _check_gaussian_estimator(f, mu, log_sigma, n_samples, generator=None, baseline=None) -> None:
    _check_diagonal(mu, log_sigma, n_samples, generator, names=("mu", "log_sigma"))
    check_positive_int(n_samples, "n_samples")


def _values(f, z: torch.Tensor) -> torch.Tensor:
    """f(z), checked: one finite value per sample."""
    values = f(z)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(values).__name__}")
    if tuple(values.shape) != (z.shape[0],):
        raise ShapeError(f"f must map samples of shape {tuple(z.shape)} to values of shape ({z.shape[0]},), "
                         f"one per sample; it returned shape {tuple(values.shape)}")
    return check_finite(values, "f(z)")


def _weights(f, z: torch.Tensor, baseline, param_ndim: int) -> torch.Tensor:
    """w = f(z) − b per sample, without gradients, shaped to broadcast against the parameter.

    b is 0 (``None``), a constant, or ``"mean"``: the mean of the other samples' values (leave one
    out). Each keeps the estimator unbiased, because the score has mean 0 under q.
    """
    with torch.no_grad():
        values = _values(f, z).to(z.dtype)
    n = values.shape[0]
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be None, a number or 'mean', got {baseline!r}")
        if n < 2:
            raise ValueError("baseline='mean' (leave-one-out) needs n_samples >= 2")
        values = values - (values.sum() - values) / (n - 1)
    elif baseline is not None:
        b = torch.as_tensor(baseline, dtype=values.dtype, device=values.device)
        if b.dim() != 0:
            raise ShapeError(f"baseline must be a scalar (a constant independent of the samples), got shape {tuple(b.shape)}")
        values = values - check_finite(b, "baseline")
    return values.reshape(n, *([1] * param_ndim))


@checked(_check_gaussian_estimator)
def pathwise_gradient(f, mu, log_sigma, n_samples: int, generator: torch.Generator | None = None):
    """Per-sample pathwise gradients of E_{z ~ N(μ, σ²)}[f(z)], σ = exp(log_sigma), elementwise:

        z_i = μ + σ ε_i,   grad_μ_i = f'(z_i),   grad_log_σ_i = f'(z_i) · σ ε_i

    Returns (grad_mu, grad_log_sigma), each (n_samples, *mu.shape); their means over the first
    axis are unbiased estimates. ``f`` must be differentiable with autograd. Notebook 04.
    """
    eps = _noise(mu.shape, n_samples, mu, log_sigma, generator)
    sigma = torch.exp(log_sigma.detach().to(eps.dtype))
    with torch.enable_grad():
        z = (mu.detach().to(eps.dtype) + sigma * eps).requires_grad_(True)
        values = _values(f, z)
        if not values.requires_grad:
            raise ValueError("f(z) does not depend differentiably on z (no autograd graph); the pathwise "
                             "estimator needs a differentiable f -- use score_function_gradient instead")
        (grad_z,) = torch.autograd.grad(values.sum(), z, allow_unused=True)
    grad_z = torch.zeros_like(z) if grad_z is None else grad_z.detach()
    if not bool(torch.isfinite(grad_z).all()):
        raise NonFiniteError("the gradient of f at some samples is not finite")
    return grad_z, grad_z * sigma * eps


@checked(_check_gaussian_estimator)
def score_function_gradient(f, mu, log_sigma, n_samples: int, generator=None, baseline=None):
    """Per-sample score-function (REINFORCE) gradients of E_{z ~ N(μ, σ²)}[f(z)]; f is only evaluated:

        w_i = f(z_i) − b,   grad_μ_i = w_i ε_i / σ,   grad_log_σ_i = w_i (ε_i² − 1)

    (ε/σ and ε² − 1 are d log q(z)/dμ and d log q(z)/d log σ). ``baseline``: None, a constant or
    ``"mean"`` (see :func:`_weights`). Returns (grad_mu, grad_log_sigma) as
    :func:`pathwise_gradient`. Notebook 04.
    """
    eps = _noise(mu.shape, n_samples, mu, log_sigma, generator)
    sigma = torch.exp(log_sigma.detach().to(eps.dtype))
    if bool((sigma == 0).any()):
        raise NonFiniteError(f"log_sigma is too negative for {eps.dtype}: sigma = exp(log_sigma) underflows to 0 "
                             f"(first: log_sigma = {log_sigma[sigma == 0].flatten()[0].item()}), so the score "
                             "eps / sigma is not finite")
    w = _weights(f, mu.detach().to(eps.dtype) + sigma * eps, baseline, mu.dim())
    return w * eps / sigma, w * (eps.square() - 1)


def _check_logits(f, logits, n_samples, generator=None, baseline=None, min_ndim=0) -> None:
    check_floating(logits, "logits")
    check_min_ndim(logits, min_ndim, "logits")
    if min_ndim and logits.shape[-1] == 0:
        raise ShapeError(f"logits has an empty class axis (shape {tuple(logits.shape)})")
    check_finite(logits, "logits")
    check_generator_device(generator, logits.device)
    check_positive_int(n_samples, "n_samples")


@checked(_check_logits)
def score_function_gradient_bernoulli(f, logits, n_samples: int, generator=None, baseline=None):
    """Per-sample score-function gradients of E_{z ~ Bernoulli(p)}[f(z)], p = sigmoid(logits):

        grad_i = (f(z_i) − b) · (z_i − p)          since d log q(z)/d logit = z − p

    ``f`` receives 0/1 floats (n_samples, *logits.shape). There is no path from the logits to a
    0/1 sample, so discrete latents need this estimator (notebook 04).
    """
    probs = torch.sigmoid(logits.detach())
    u = torch.rand((n_samples, *logits.shape), generator=generator, device=logits.device, dtype=logits.dtype)
    z = (u < probs).to(logits.dtype)
    return _weights(f, z, baseline, logits.dim()) * (z - probs)


@checked(lambda f, logits, n_samples, generator=None, baseline=None: _check_logits(f, logits, n_samples, generator,
                                                                                    baseline, min_ndim=1))
def score_function_gradient_categorical(f, logits, n_samples: int, generator=None, baseline=None):
    """Per-sample score-function gradients of E_{z ~ Categorical(p)}[f(z)], p = softmax(logits):

        grad_i = (f(z_i) − b) · (onehot(z_i) − p)

    ``logits`` is (..., K): one categorical variable per batch entry; ``f`` receives one-hot floats
    (n_samples, *logits.shape). Notebook 04.
    """
    probs = torch.softmax(logits.detach(), dim=-1)
    k = logits.shape[-1]
    idx = torch.multinomial(probs.reshape(-1, k), n_samples, replacement=True, generator=generator)
    z = torch.nn.functional.one_hot(idx.T.reshape(n_samples, *logits.shape[:-1]), k).to(logits.dtype)
    return _weights(f, z, baseline, logits.dim()) * (z - probs)
