"""Entropy, cross-entropy and Kullback-Leibler divergences.

Notebook 01 introduces the discrete quantities (:func:`entropy`,
:func:`cross_entropy`, :func:`kl_discrete`), notebook 02 the Gaussian ones
(:func:`kl_gaussian`, :func:`kl_gaussian_tril`, :func:`kl_diag_gaussians`,
:func:`kl_standard_normal`) and the Monte Carlo check
(:func:`kl_monte_carlo`, :func:`kl_monte_carlo_from_samples`).

Conventions shared by every function here:

- results are in nats (natural logarithm); :func:`nats_to_bits` converts;
- the event lives in the trailing dimension(s) and is summed over; every
  leading dimension is a batch dimension, kept in the result and broadcast
  between the arguments where the shapes allow it;
- float32 and float64 inputs are accepted; the result has the promoted dtype;
- invalid input raises an exception from :mod:`vaelib._validate` (all
  subclasses of ``ValueError``) instead of returning ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._helpers import (
    NonFiniteError,
    ShapeError,
    broadcast_batch_shape,
    check_finite,
    check_floating,
    check_last_dims,
    check_lower_triangular,
    check_min_ndim,
    check_positive_int,
    check_probabilities,
    check_tensor,
    cholesky_or_raise,
)

__all__ = [
    "nats_to_bits",
    "entropy",
    "cross_entropy",
    "kl_discrete",
    "kl_gaussian",
    "kl_gaussian_tril",
    "kl_diag_gaussians",
    "kl_standard_normal",
    "kl_monte_carlo",
    "kl_monte_carlo_from_samples",
]

_LN2 = math.log(2.0)


def _clamp_value_keep_gradient(kl: torch.Tensor) -> torch.Tensor:
    """Replace negative values by 0 while keeping the gradient of the unclamped expression.

    A divergence is never negative, but rounding can make a computed one slightly negative
    when the two distributions are within rounding of each other. ``clamp_min(0)`` would fix
    the value and zero the gradient there as well, so an optimizer that reaches that region
    sees a gradient of exactly 0 and stops. Here the value is 0 (``kl - kl.detach()``) and
    the gradient is that of ``kl``.
    """
    return torch.where(kl < 0, kl - kl.detach(), kl)


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    """Convert an information quantity from nats to bits (divide by ``ln 2``).

    Introduced in notebook 01.
    """
    return x / _LN2


# --------------------------------------------------------------------------- #
# Discrete distributions (notebook 01)
# --------------------------------------------------------------------------- #
def _check_pair_of_probabilities(p: torch.Tensor, q: torch.Tensor) -> None:
    check_probabilities(p, "p")
    check_probabilities(q, "q")
    if p.shape[-1] != q.shape[-1]:
        raise ShapeError(
            "p and q must have the same number of outcomes on the last axis, "
            f"got p.shape={tuple(p.shape)} and q.shape={tuple(q.shape)}"
        )
    broadcast_batch_shape([p.shape[:-1], q.shape[:-1]], ["p", "q"])


def _p_log_q(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p * log q`` with ``0 * log(anything) = 0``.

    Where ``p > 0`` and ``q = 0`` the value is ``-inf``. The double ``where``
    keeps the gradient finite (zero) at entries with ``p = 0``.
    """
    support = p > 0
    safe_q = torch.where(support, q, torch.ones_like(q))
    return torch.where(support, p * torch.log(safe_q), torch.zeros_like(p * safe_q))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H(p) = -sum_k p_k log p_k`` in nats, over the last axis.

    Introduced in notebook 01. ``p`` has shape ``(..., K)`` and holds
    probability vectors along the last axis (non-negative, summing to one up to
    a dtype-dependent tolerance); the result has shape ``(...)``. Outcomes with
    ``p_k = 0`` contribute nothing (``0 log 0 = 0``), and their gradient is
    taken as zero rather than ``nan``.

    Raises :class:`~vaelib.errors.ProbabilityError`,
    :class:`~vaelib.errors.NonFiniteError` or
    :class:`~vaelib.errors.ShapeError` for invalid ``p``.
    """
    check_probabilities(p, "p")
    return -_p_log_q(p, p).sum(dim=-1) + 0.0  # "+ 0.0" turns the −0.0 of a point mass into 0.0


def cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``H(p, q) = -sum_k p_k log q_k`` in nats, over the last axis.

    Introduced in notebook 01. ``p`` and ``q`` have shapes ``(..., K)`` whose
    batch parts broadcast together. Outcomes with ``p_k = 0`` contribute
    nothing; if some ``q_k = 0`` while ``p_k > 0`` the result is ``+inf``.
    Note ``H(p, q) = H(p) + KL(p || q)``.
    """
    _check_pair_of_probabilities(p, q)
    return -_p_log_q(p, q).sum(dim=-1)


def kl_discrete(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum_k p_k log(p_k / q_k)`` in nats.

    Introduced in notebook 01. ``p`` and ``q`` have shapes ``(..., K)`` with
    probability vectors on the last axis; batch dimensions broadcast, the last
    axis is summed. Conventions: outcomes with ``p_k = 0`` contribute nothing,
    and the divergence is ``+inf`` as soon as some ``q_k = 0 < p_k``.

    The divergence is non-negative (Gibbs' inequality); tiny negative values
    produced by rounding when ``p`` is close to ``q`` are returned as zero. Only
    the value is clamped: the gradient there is that of the unclamped sum
    (``log(p_k / q_k) + 1`` for ``p_k`` and ``-p_k / q_k`` for ``q_k``), so an
    optimizer near ``q = p`` still sees the true gradient instead of 0.
    """
    _check_pair_of_probabilities(p, q)
    support = p > 0
    safe_p = torch.where(support, p, torch.ones_like(p))
    safe_q = torch.where(support, q, torch.ones_like(q))
    terms = torch.where(
        support,
        p * (torch.log(safe_p) - torch.log(safe_q)),
        torch.zeros_like(safe_p * safe_q),
    )
    return _clamp_value_keep_gradient(terms.sum(dim=-1))


# --------------------------------------------------------------------------- #
# Gaussian distributions (notebook 02)
# --------------------------------------------------------------------------- #
def _check_gaussian_args(mu_p, mat_p, mu_q, mat_q, mat_kind: str) -> int:
    """Check the shapes of two Gaussians given by means and ``(d, d)`` matrices; return ``d``."""
    names = ("mu_p", f"{mat_kind}_p", "mu_q", f"{mat_kind}_q")
    for x, name in zip((mu_p, mat_p, mu_q, mat_q), names):
        check_floating(x, name)
    check_min_ndim(mu_p, 1, "mu_p")
    d = int(mu_p.shape[-1])
    if d == 0:
        raise ShapeError(f"mu_p has an empty event dimension (shape {tuple(mu_p.shape)})")
    check_last_dims(mu_q, (d,), "mu_q (same event size as mu_p)")
    check_last_dims(mat_p, (d, d), f"{names[1]} (matching mu_p of shape {tuple(mu_p.shape)})")
    check_last_dims(mat_q, (d, d), f"{names[3]} (matching mu_q of shape {tuple(mu_q.shape)})")
    broadcast_batch_shape(
        [mu_p.shape[:-1], mat_p.shape[:-2], mu_q.shape[:-1], mat_q.shape[:-2]], names
    )
    check_finite(mu_p, "mu_p")
    check_finite(mu_q, "mu_q")
    return d


def _kl_gaussian_tril_unchecked(mu_p, L_p, mu_q, L_q) -> torch.Tensor:
    d = mu_p.shape[-1]
    batch = torch.broadcast_shapes(mu_p.shape[:-1], L_p.shape[:-2], mu_q.shape[:-1], L_q.shape[:-2])
    dtype = torch.promote_types(torch.promote_types(mu_p.dtype, L_p.dtype),
                                torch.promote_types(mu_q.dtype, L_q.dtype))
    L_p = L_p.to(dtype).expand(*batch, d, d)
    L_q = L_q.to(dtype).expand(*batch, d, d)
    diff = (mu_p.to(dtype) - mu_q.to(dtype)).expand(*batch, d)

    # log det(Sigma_q) - log det(Sigma_p) = 2 sum log diag L_q - 2 sum log diag L_p
    half_log_det_ratio = (
        torch.log(L_q.diagonal(dim1=-2, dim2=-1)).sum(-1)
        - torch.log(L_p.diagonal(dim1=-2, dim2=-1)).sum(-1)
    )
    # tr(Sigma_q^{-1} Sigma_p) = || L_q^{-1} L_p ||_F^2
    m = torch.linalg.solve_triangular(L_q, L_p, upper=False)
    trace_term = m.square().sum(dim=(-2, -1))
    # (mu_p - mu_q)^T Sigma_q^{-1} (mu_p - mu_q) = || L_q^{-1} (mu_p - mu_q) ||^2
    y = torch.linalg.solve_triangular(L_q, diff.unsqueeze(-1), upper=False).squeeze(-1)
    mahalanobis = y.square().sum(-1)
    kl = half_log_det_ratio + 0.5 * (trace_term + mahalanobis - d)
    # The inputs are finite, so a nan here can only come from an overflow inside the solves
    # (inf - inf, 0 * inf): the divergence is then beyond the range of the dtype.
    kl = torch.where(torch.isnan(kl), torch.full_like(kl, math.inf), kl)
    return _clamp_value_keep_gradient(kl)


def kl_gaussian_tril(
    mu_p: torch.Tensor, L_p: torch.Tensor, mu_q: torch.Tensor, L_q: torch.Tensor
) -> torch.Tensor:
    """KL divergence between ``N(mu_p, L_p L_p^T)`` and ``N(mu_q, L_q L_q^T)`` from scale factors.

    Introduced in notebook 02. Means have shape ``(..., d)``, the scale
    factors shape ``(..., d, d)``; they must be lower triangular with a
    positive diagonal (Cholesky factors). Batch dimensions broadcast; the
    result has the broadcast batch shape. The closed form

        KL = log det L_q - log det L_p
             + 1/2 ( ||L_q^{-1} L_p||_F^2 + ||L_q^{-1}(mu_p - mu_q)||^2 - d )

    uses triangular solves only (no inverse). Rounding negatives are returned
    as zero, since the divergence is non-negative; only the value is clamped,
    the gradient is that of the unclamped expression (not 0), so gradients near
    ``p = q`` stay correct.

    Raises :class:`~vaelib.errors.ShapeError`,
    :class:`~vaelib.errors.NotLowerTriangularError` or
    :class:`~vaelib.errors.NonFiniteError` for invalid input.
    """
    _check_gaussian_args(mu_p, L_p, mu_q, L_q, "L")
    check_lower_triangular(L_p, "L_p")
    check_lower_triangular(L_q, "L_q")
    return _kl_gaussian_tril_unchecked(mu_p, L_p, mu_q, L_q)


def kl_gaussian(
    mu_p: torch.Tensor, cov_p: torch.Tensor, mu_q: torch.Tensor, cov_q: torch.Tensor
) -> torch.Tensor:
    """KL divergence ``KL(N(mu_p, cov_p) || N(mu_q, cov_q))`` in nats, full covariances.

    Introduced in notebook 02. Means have shape ``(..., d)`` and covariances
    ``(..., d, d)``; batch dimensions broadcast. The closed form

        1/2 { log(det cov_q / det cov_p) - d + tr(cov_q^{-1} cov_p)
              + (mu_p - mu_q)^T cov_q^{-1} (mu_p - mu_q) }

    is evaluated from the Cholesky factors of both covariances with triangular
    solves (see :func:`kl_gaussian_tril`); log-determinants come from the
    diagonals of the factors. Tiny negative results from rounding (for
    ``p`` within rounding of ``q``) are returned as zero, as the divergence is
    non-negative; the gradient is still that of the unclamped expression (for
    example ``cov_q^{-1} (mu_p - mu_q)`` for ``mu_p``), not 0.

    Raises :class:`~vaelib.errors.NotPositiveDefiniteError` if a covariance
    is not symmetric positive definite, :class:`~vaelib.errors.ShapeError`
    for inconsistent shapes and :class:`~vaelib.errors.NonFiniteError` for
    ``nan``/``inf`` entries.
    """
    _check_gaussian_args(mu_p, cov_p, mu_q, cov_q, "cov")
    L_p = cholesky_or_raise(cov_p, "cov_p")
    L_q = cholesky_or_raise(cov_q, "cov_q")
    return _kl_gaussian_tril_unchecked(mu_p, L_p, mu_q, L_q)


# Coefficients 1/k! for k = 2..17, used by _exp_minus_one_minus for small arguments.
_SERIES = [1.0 / math.factorial(k) for k in range(2, 18)]


def _exp_minus_one_minus(x: torch.Tensor) -> torch.Tensor:
    """``exp(x) - 1 - x`` without cancellation for small ``|x|`` (a Taylor series there)."""
    small = x.abs() < 0.5
    xs = torch.where(small, x, torch.zeros_like(x))
    acc = torch.full_like(xs, _SERIES[-1])
    for c in reversed(_SERIES[:-1]):
        acc = acc * xs + c
    series = acc * xs * xs
    xl = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, series, torch.expm1(xl) - xl)


def _check_diag_pair(mu, logvar, mu_name, lv_name) -> None:
    check_floating(mu, mu_name)
    check_floating(logvar, lv_name)
    check_min_ndim(mu, 1, mu_name)
    check_min_ndim(logvar, 1, lv_name)
    if mu.shape[-1] != logvar.shape[-1]:
        raise ShapeError(
            f"{mu_name} and {lv_name} must have the same last (event) dimension, "
            f"got {mu_name}.shape={tuple(mu.shape)} and {lv_name}.shape={tuple(logvar.shape)}"
        )


def kl_diag_gaussians(
    mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor
) -> torch.Tensor:
    """KL divergence between two diagonal Gaussians given by means and log-variances.

    Introduced in notebook 02. ``p = N(mu_p, diag exp(logvar_p))`` and
    ``q = N(mu_q, diag exp(logvar_q))``; all four tensors have shapes
    ``(..., d)`` with the same ``d`` and broadcastable batch dimensions. With
    ``delta = logvar_p - logvar_q`` the result is

        1/2 sum_i [ exp(delta_i) - 1 - delta_i + (mu_p,i - mu_q,i)^2 exp(-logvar_q,i) ]

    summed over the last axis; ``exp(delta) - 1 - delta`` is evaluated without
    cancellation for small ``delta``.
    """
    _check_diag_pair(mu_p, logvar_p, "mu_p", "logvar_p")
    _check_diag_pair(mu_q, logvar_q, "mu_q", "logvar_q")
    if mu_p.shape[-1] != mu_q.shape[-1]:
        raise ShapeError(
            "p and q must have the same event dimension, "
            f"got mu_p.shape={tuple(mu_p.shape)} and mu_q.shape={tuple(mu_q.shape)}"
        )
    names = ["mu_p", "logvar_p", "mu_q", "logvar_q"]
    tensors = [mu_p, logvar_p, mu_q, logvar_q]
    broadcast_batch_shape([t.shape[:-1] for t in tensors], names)
    for t, n in zip(tensors, names):
        check_finite(t, n)
    delta = logvar_p - logvar_q
    diff = mu_p - mu_q
    nonzero = diff != 0
    safe_diff = torch.where(nonzero, diff, torch.ones_like(diff))
    safe_lvq = torch.where(nonzero, logvar_q, torch.zeros_like(logvar_q))
    mean_term = torch.where(
        nonzero, safe_diff.square() * torch.exp(-safe_lvq), torch.zeros_like(safe_diff)
    )
    return 0.5 * (_exp_minus_one_minus(delta) + mean_term).sum(dim=-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence ``KL(N(mu, diag exp(logvar)) || N(0, I))``, the VAE regulariser.

    Introduced in notebook 02. ``mu`` and ``logvar`` have shapes ``(..., d)``
    with the same ``d`` and broadcastable batch dimensions; the result,

        1/2 sum_i [ exp(logvar_i) - logvar_i - 1 + mu_i^2 ],

    sums over the last axis only and has the broadcast batch shape. The part
    ``exp(logvar) - 1 - logvar`` is computed without cancellation for small
    ``logvar``. Gradients: ``d/dmu = mu`` and ``d/dlogvar = (exp(logvar) - 1) / 2``.
    """
    _check_diag_pair(mu, logvar, "mu", "logvar")
    broadcast_batch_shape([mu.shape[:-1], logvar.shape[:-1]], ["mu", "logvar"])
    check_finite(mu, "mu")
    check_finite(logvar, "logvar")
    return 0.5 * (_exp_minus_one_minus(logvar) + mu.square()).sum(dim=-1)


# --------------------------------------------------------------------------- #
# Monte Carlo estimates (notebook 02)
# --------------------------------------------------------------------------- #
def _log_density(obj, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(obj, "log_prob"):
        return obj.log_prob
    if callable(obj):
        return obj
    raise TypeError(
        f"{name} must be a torch.distributions.Distribution (or have .log_prob), "
        f"or a callable returning log-densities; got {type(obj).__name__}"
    )


def kl_monte_carlo_from_samples(
    samples: torch.Tensor,
    log_p: Callable[[torch.Tensor], torch.Tensor],
    log_q: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo estimate of ``KL(p || q) = E_p[log p(x) - log q(x)]`` from given samples.

    Introduced in notebook 02. ``samples`` holds ``n >= 2`` draws from ``p``
    along its first dimension. ``log_p`` and ``log_q`` map the samples to
    log-densities of shape ``(n, *batch)`` (``Distribution.log_prob`` does).
    Returns ``(estimate, standard_error)``, both of shape ``batch``: the
    sample mean of ``log p - log q`` and its sample standard deviation divided
    by ``sqrt(n)``. If ``q`` gives some sample zero density the estimate and its
    standard error are ``+inf``; a ``nan`` or ``-inf`` log-density ratio raises
    :class:`~vaelib.errors.NonFiniteError`, and log-densities without the
    samples on their first axis raise :class:`~vaelib.errors.ShapeError`.
    """
    check_tensor(samples, "samples")
    check_min_ndim(samples, 1, "samples")
    n = int(samples.shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    lp = log_p(samples)
    lq = log_q(samples)
    check_tensor(lp, "log_p(samples)")
    check_tensor(lq, "log_q(samples)")
    for t, name in ((lp, "log_p"), (lq, "log_q")):
        if t.dim() == 0 or t.shape[0] != n:
            raise ShapeError(
                f"{name} must return one log-density per sample, with the samples on the first axis "
                f"(length {n}); got shape {tuple(t.shape)}"
            )
    if lp.dim() != lq.dim():  # broadcasting aligns trailing axes: one's sample axis would meet the other's batch axis
        raise ShapeError(
            f"log_p and log_q must have the samples on their first axis and the same number of batch axes, "
            f"got shapes {tuple(lp.shape)} and {tuple(lq.shape)}"
        )
    try:
        ratio = lp - lq
    except RuntimeError:
        raise ShapeError(
            f"log_p and log_q returned shapes {tuple(lp.shape)} and {tuple(lq.shape)} "
            "that do not broadcast"
        ) from None
    if bool(torch.isnan(ratio).any()):
        raise NonFiniteError(
            "log p - log q is nan at some samples (e.g. -inf - (-inf): a sample outside "
            "the support of p, or a nan log-density)"
        )
    if bool((ratio == -math.inf).any()):
        raise NonFiniteError(
            "log p - log q is -inf at some samples: p gives zero density to its own samples "
            "(samples not drawn from p), or q an infinite one"
        )
    estimate = ratio.mean(dim=0)
    finite = torch.isfinite(ratio).all(dim=0)
    safe_ratio = torch.where(finite, ratio, torch.zeros_like(ratio))
    se = safe_ratio.std(dim=0, correction=1) / math.sqrt(n)
    se = torch.where(finite, se, torch.full_like(se, math.inf))
    return estimate, se


def kl_monte_carlo(
    p, q, n_samples: int = 100_000, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo estimate of ``KL(p || q)`` with its standard error.

    Introduced in notebook 02. ``p`` is a ``torch.distributions.Distribution``
    (anything with ``.sample(shape)`` and ``.log_prob``); ``q`` is a
    distribution or a callable giving log-densities. Draws ``n_samples``
    samples from ``p`` and returns ``(estimate, standard_error)`` as in
    :func:`kl_monte_carlo_from_samples`, with shape ``p.batch_shape``
    (broadcast with ``q``'s).

    With a ``generator`` the result is reproducible: a seed is drawn from it
    and ``p`` is sampled under that seed inside :func:`torch.random.fork_rng`,
    so the global random state is left as it was. Without one, the global
    random state is used.
    """
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    if not (hasattr(p, "sample") and hasattr(p, "log_prob")):
        raise TypeError(
            f"p must be a torch.distributions.Distribution with .sample and .log_prob, "
            f"got {type(p).__name__}"
        )
    log_q = _log_density(q, "q")
    with torch.no_grad():
        if generator is None:
            samples = p.sample((n_samples,))
        else:
            if not isinstance(generator, torch.Generator):
                raise TypeError(
                    f"generator must be a torch.Generator or None, got {type(generator).__name__}"
                )
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                samples = p.sample((n_samples,))
    return kl_monte_carlo_from_samples(samples, p.log_prob, log_q)
