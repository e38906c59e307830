"""The reparameterization trick and Monte Carlo gradient estimators (notebook 04).

Sampling:

- :func:`reparameterize`       ``z = mu + exp(logvar / 2) * eps`` for diagonal Gaussians
- :func:`reparameterize_full`  ``z = mu + L eps`` for full-covariance Gaussians

Gradient estimators of ``grad_theta E_{q_theta}[f(z)]``, returning one
gradient per sample so that their mean (the estimate) and their variance can
both be studied:

- :func:`pathwise_gradient`                   reparameterization (pathwise) estimator, Gaussian ``q``
- :func:`score_function_gradient`             score-function (REINFORCE) estimator, Gaussian ``q``
- :func:`score_function_gradient_bernoulli`   score-function estimator, independent Bernoulli ``q``
- :func:`score_function_gradient_categorical` score-function estimator, categorical ``q``

For the estimators, ``f`` maps a batch of samples of shape
``(n_samples, *param.shape)`` to ``n_samples`` values, one per sample, and
must treat the samples independently (value ``i`` depends on sample ``i`` only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._helpers import (
    NonFiniteError,
    ShapeError,
    broadcast_batch_shape,
    check_finite,
    check_floating,
    check_generator_device,
    check_last_dims,
    check_lower_triangular,
    check_min_ndim,
    check_positive_int,
    check_same_shape,
)

__all__ = [
    "reparameterize",
    "reparameterize_full",
    "pathwise_gradient",
    "score_function_gradient",
    "score_function_gradient_bernoulli",
    "score_function_gradient_categorical",
]


def _sample_shape(n_samples, shape) -> tuple[int, ...]:
    if n_samples is None:
        return tuple(shape)
    return (check_positive_int(n_samples, "n_samples"), *shape)


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    n_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``z ~ N(mu, diag exp(logvar))`` as ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``.

    Introduced in notebook 04. ``mu`` and ``logvar`` must have the same shape
    (any shape). Without ``n_samples`` the result has ``mu.shape``; with
    ``n_samples=K`` it has shape ``(K, *mu.shape)``. The noise comes from
    ``torch.randn`` with ``generator`` on ``mu``'s device, so a seeded
    generator gives reproducible draws. Gradients flow to ``mu``
    (``dz/dmu = 1``) and ``logvar`` (``dz/dlogvar = exp(logvar / 2) * eps / 2``).

    Raises :class:`~vaelib.errors.ShapeError` if the shapes differ and
    :class:`~vaelib.errors.NonFiniteError` for ``nan``/``inf`` input.
    """
    check_floating(mu, "mu")
    check_floating(logvar, "logvar")
    check_same_shape(mu, logvar, ("mu", "logvar"))
    check_finite(mu, "mu")
    check_finite(logvar, "logvar")
    check_generator_device(generator, mu.device)
    dtype = torch.promote_types(mu.dtype, logvar.dtype)
    eps = torch.randn(
        _sample_shape(n_samples, mu.shape), generator=generator, device=mu.device, dtype=dtype
    )
    return mu + torch.exp(0.5 * logvar) * eps


def reparameterize_full(
    mu: torch.Tensor,
    scale_tril: torch.Tensor,
    n_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``z ~ N(mu, L L^T)`` as ``z = mu + L eps``, ``eps ~ N(0, I)``.

    Introduced in notebook 04. ``mu`` has shape ``(..., d)`` and the scale
    factor ``scale_tril`` (``L``) shape ``(..., d, d)``; it must be lower
    triangular with a positive diagonal, e.g. a Cholesky factor of the
    covariance. Batch dimensions broadcast. The result has shape
    ``(*batch, d)``, or ``(K, *batch, d)`` with ``n_samples=K``. Gradients
    flow to ``mu`` and to ``scale_tril``.

    Raises :class:`~vaelib.errors.ShapeError` for inconsistent shapes,
    :class:`~vaelib.errors.NotLowerTriangularError` if ``scale_tril`` is not
    lower triangular with a positive diagonal, and
    :class:`~vaelib.errors.NonFiniteError` for ``nan``/``inf`` input.
    """
    check_floating(mu, "mu")
    check_floating(scale_tril, "scale_tril")
    check_min_ndim(mu, 1, "mu")
    d = int(mu.shape[-1])
    check_last_dims(scale_tril, (d, d), f"scale_tril (matching mu of shape {tuple(mu.shape)})")
    batch = broadcast_batch_shape([mu.shape[:-1], scale_tril.shape[:-2]], ["mu", "scale_tril"])
    check_finite(mu, "mu")
    check_lower_triangular(scale_tril, "scale_tril")
    check_generator_device(generator, mu.device)
    dtype = torch.promote_types(mu.dtype, scale_tril.dtype)
    eps = torch.randn(
        _sample_shape(n_samples, (*batch, d)), generator=generator, device=mu.device, dtype=dtype
    )
    return mu + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------- #
# Gradient estimators
# --------------------------------------------------------------------------- #
def _check_gaussian_params(mu, log_sigma, generator) -> None:
    check_floating(mu, "mu")
    check_floating(log_sigma, "log_sigma")
    check_same_shape(mu, log_sigma, ("mu", "log_sigma"))
    check_finite(mu, "mu")
    check_finite(log_sigma, "log_sigma")
    check_generator_device(generator, mu.device)


def _check_values(values, n: int, sample_shape) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(values).__name__}")
    if tuple(values.shape) != (n,):
        raise ShapeError(
            f"f must map samples of shape {tuple(sample_shape)} to values of shape ({n},), "
            f"one per sample; it returned shape {tuple(values.shape)}"
        )
    check_finite(values, "f(z)")
    return values


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape ``(n,)`` values so they broadcast against ``(n, *param.shape)``."""
    return values.reshape(values.shape[0], *([1] * ndim))


def _apply_baseline(values: torch.Tensor, baseline) -> torch.Tensor:
    """Return ``values - b``: ``b = 0``, a constant, or the leave-one-out mean (``"mean"``)."""
    if baseline is None:
        return values
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be None, a number or 'mean', got {baseline!r}")
        n = values.shape[0]
        if n < 2:
            raise ValueError("baseline='mean' (leave-one-out) needs n_samples >= 2")
        loo_mean = (values.sum() - values) / (n - 1)
        return values - loo_mean
    b = torch.as_tensor(baseline, dtype=values.dtype, device=values.device)
    if b.dim() != 0:
        raise ShapeError(
            f"baseline must be a scalar (a constant independent of the samples), "
            f"got shape {tuple(b.shape)}"
        )
    check_finite(b, "baseline")
    return values - b


def _score_weights(f, z: torch.Tensor, n: int, baseline, param_ndim: int) -> torch.Tensor:
    """f(z) − b for each sample, evaluated without gradients and shaped to broadcast against the parameter."""
    with torch.no_grad():
        values = _check_values(f(z), n, z.shape).to(z.dtype)
    return _per_sample(_apply_baseline(values, baseline), param_ndim)


def pathwise_gradient(
    f: Callable[[torch.Tensor], torch.Tensor],
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample pathwise (reparameterization) gradients of ``E_{z ~ N(mu, sigma^2)}[f(z)]``.

    Introduced in notebook 04. ``q`` is the elementwise Gaussian with mean
    ``mu`` and standard deviation ``sigma = exp(log_sigma)`` (same shape, any
    shape). Draws ``z_i = mu + sigma * eps_i`` for ``i = 1..n_samples`` and
    returns ``(grad_mu, grad_log_sigma)``, each of shape
    ``(n_samples, *mu.shape)``:

        grad_mu_i        = f'(z_i)
        grad_log_sigma_i = f'(z_i) * sigma * eps_i

    Their means over the first axis are unbiased estimates of the gradient;
    their variances measure the estimator's noise. ``f`` must be
    differentiable with torch autograd and return ``n_samples`` values (one per
    sample, each depending on its own sample only). The inputs are not
    modified and no graph is kept.
    """
    _check_gaussian_params(mu, log_sigma, generator)
    n = check_positive_int(n_samples, "n_samples")
    dtype = torch.promote_types(mu.dtype, log_sigma.dtype)
    eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=dtype)
    sigma = torch.exp(log_sigma.detach().to(dtype))
    with torch.enable_grad():
        z = (mu.detach().to(dtype) + sigma * eps).requires_grad_(True)
        values = _check_values(f(z), n, z.shape)
        if not values.requires_grad:
            raise ValueError(
                "f(z) does not depend differentiably on z (no autograd graph); the pathwise "
                "estimator needs a differentiable f -- use score_function_gradient instead"
            )
        (grad_z,) = torch.autograd.grad(values.sum(), z, allow_unused=True)
    if grad_z is None:
        grad_z = torch.zeros_like(z)
    grad_z = grad_z.detach()
    if not bool(torch.isfinite(grad_z).all()):
        raise NonFiniteError("the gradient of f at some samples is not finite")
    return grad_z, grad_z * sigma * eps


def score_function_gradient(
    f: Callable[[torch.Tensor], torch.Tensor],
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    baseline: float | torch.Tensor | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample score-function (REINFORCE) gradients of ``E_{z ~ N(mu, sigma^2)}[f(z)]``.

    Introduced in notebook 04. Same family, sampling and output format as
    :func:`pathwise_gradient`, but ``f`` is only evaluated, never
    differentiated (it may be discontinuous). With ``z_i = mu + sigma * eps_i``
    and ``w_i = f(z_i) - b``:

        grad_mu_i        = w_i * eps_i / sigma          (= w_i * d log q(z_i) / d mu)
        grad_log_sigma_i = w_i * (eps_i^2 - 1)          (= w_i * d log q(z_i) / d log_sigma)

    ``baseline`` sets ``b``: ``None`` (no baseline, ``b = 0``), a scalar
    constant, or ``"mean"`` for the leave-one-out mean of the other samples'
    values; all three keep the estimator unbiased because the score has mean
    zero. Returns ``(grad_mu, grad_log_sigma)`` of shape ``(n_samples, *mu.shape)``.
    """
    _check_gaussian_params(mu, log_sigma, generator)
    n = check_positive_int(n_samples, "n_samples")
    dtype = torch.promote_types(mu.dtype, log_sigma.dtype)
    eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=dtype)
    sigma = torch.exp(log_sigma.detach().to(dtype))
    underflow = sigma == 0
    if bool(underflow.any()):
        raise NonFiniteError(
            f"log_sigma is too negative for {dtype}: sigma = exp(log_sigma) underflows to 0 "
            f"(first: log_sigma = {log_sigma[underflow].flatten()[0].item()}), so the score "
            "eps / sigma is not finite"
        )
    z = mu.detach().to(dtype) + sigma * eps
    w = _score_weights(f, z, n, baseline, mu.dim())
    return w * eps / sigma, w * (eps.square() - 1)


def score_function_gradient_bernoulli(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    baseline: float | torch.Tensor | str | None = None,
) -> torch.Tensor:
    """Per-sample score-function gradients of ``E_{z ~ Bernoulli(sigmoid(logits))}[f(z)]``.

    Introduced in notebook 04, where it shows that discrete latent variables
    need the score function (there is no path from ``logits`` to a 0/1
    sample). The entries of ``z`` are independent Bernoulli variables with
    probabilities ``p = sigmoid(logits)`` (any shape); ``f`` receives float
    samples of shape ``(n_samples, *logits.shape)`` holding 0 and 1 and returns
    ``n_samples`` values. Returns the per-sample gradients with respect to the
    logits, of shape ``(n_samples, *logits.shape)``:

        grad_i = (f(z_i) - b) * (z_i - p)

    since ``d log q(z) / d logit = z - p``. ``baseline`` is as in
    :func:`score_function_gradient`.
    """
    check_floating(logits, "logits")
    check_finite(logits, "logits")
    check_generator_device(generator, logits.device)
    n = check_positive_int(n_samples, "n_samples")
    probs = torch.sigmoid(logits.detach())
    u = torch.rand((n, *logits.shape), generator=generator, device=logits.device, dtype=logits.dtype)
    z = (u < probs).to(logits.dtype)
    w = _score_weights(f, z, n, baseline, logits.dim())
    return w * (z - probs)


def score_function_gradient_categorical(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    baseline: float | torch.Tensor | str | None = None,
) -> torch.Tensor:
    """Per-sample score-function gradients of ``E_{z ~ Categorical(softmax(logits))}[f(z)]``.

    Introduced in notebook 04. ``logits`` has shape ``(..., K)``: each batch
    entry is an independent categorical variable over ``K`` classes with
    probabilities ``p = softmax(logits)``. ``f`` receives one-hot float samples
    of shape ``(n_samples, *logits.shape)`` and returns ``n_samples`` values.
    Returns the per-sample gradients with respect to the logits, of shape
    ``(n_samples, *logits.shape)``:

        grad_i = (f(z_i) - b) * (onehot(z_i) - p)

    ``baseline`` is as in :func:`score_function_gradient`.
    """
    check_floating(logits, "logits")
    check_min_ndim(logits, 1, "logits")
    k = int(logits.shape[-1])
    if k == 0:
        raise ShapeError(f"logits has an empty class axis (shape {tuple(logits.shape)})")
    check_finite(logits, "logits")
    check_generator_device(generator, logits.device)
    n = check_positive_int(n_samples, "n_samples")
    probs = torch.softmax(logits.detach(), dim=-1)
    batch = logits.shape[:-1]
    flat = probs.reshape(-1, k)
    idx = torch.multinomial(flat, n, replacement=True, generator=generator)  # (B, n)
    idx = idx.transpose(0, 1).reshape(n, *batch)
    z = torch.nn.functional.one_hot(idx, k).to(logits.dtype)
    w = _score_weights(f, z, n, baseline, logits.dim())
    return w * (z - probs)
