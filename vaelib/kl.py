"""Entropy, cross-entropy and Kullback-Leibler divergences (notebooks 01 and 02).

Conventions: results are in nats (:func:`nats_to_bits` converts); the event lives in the last
axis (the last two for matrices) and is summed over; leading axes are batch axes that broadcast.
Each public function checks its input once (``@checked``) and raises an error from
:mod:`vaelib.errors` on bad input; ``f.unchecked`` is the same formula without the checks.
"""

from __future__ import annotations

import math

import torch

from ._helpers import (
    broadcast_batch_shape,
    check_finite,
    check_floating,
    check_last_dims,
    check_lower_triangular,
    check_min_ndim,
    check_positive_int,
    check_probabilities,
    check_same_event,
    checked,
    cholesky_or_raise,
    mc_log_ratios,
)
from .errors import ShapeError


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    """Convert nats to bits: divide by ln 2 (notebook 01)."""
    return x / math.log(2.0)


def _keep_non_negative(kl: torch.Tensor) -> torch.Tensor:
    """Rounding can make a divergence of two near-equal distributions slightly negative. Show 0
    there, but keep the gradient of the unclamped value (``clamp_min(0)`` would give a gradient
    of 0, and an optimizer near p = q would stop)."""
    return torch.where(kl < 0, kl - kl.detach(), kl)


# --------------------------------------------------------------------------- discrete (notebook 01)
def _p_log_q(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """p·log q with the convention 0·log(anything) = 0 (and a zero gradient there, not nan)."""
    support = p > 0
    return torch.where(support, p * torch.log(torch.where(support, q, 1.0)), 0.0)


def _check_p(p):
    check_probabilities(p, "p")


def _check_p_q(p, q):
    check_probabilities(p, "p")
    check_probabilities(q, "q")
    if p.shape[-1] != q.shape[-1]:
        raise ShapeError("p and q must have the same number of outcomes on the last axis, "
                         f"got p.shape={tuple(p.shape)} and q.shape={tuple(q.shape)}")
    broadcast_batch_shape([p.shape[:-1], q.shape[:-1]], ["p", "q"])


@checked(_check_p)
def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σₖ pₖ log pₖ over the last axis (notebook 01). Outcomes with pₖ = 0 add nothing."""
    return -_p_log_q(p, p).sum(-1) + 0.0  # + 0.0 turns the −0.0 of a point mass into 0.0


@checked(_check_p_q)
def cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """H(p, q) = −Σₖ pₖ log qₖ over the last axis (notebook 01); +inf if some qₖ = 0 < pₖ."""
    return -_p_log_q(p, q).sum(-1)


@checked(_check_p_q)
def kl_discrete(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σₖ pₖ (log pₖ − log qₖ) over the last axis (notebook 01).

    Outcomes with pₖ = 0 add nothing; +inf as soon as some qₖ = 0 < pₖ. Never negative: rounding
    below 0 is shown as 0, with the gradient of the unclamped sum.
    """
    return _keep_non_negative((_p_log_q(p, p) - _p_log_q(p, q)).sum(-1))


# --------------------------------------------------------------------------- Gaussians (notebook 02)
def _check_gaussians(mu_p, mat_p, mu_q, mat_q, kind: str = "cov") -> None:
    """Means (..., d) and matrices (..., d, d) of two Gaussians whose batch shapes broadcast."""
    names = ("mu_p", f"{kind}_p", "mu_q", f"{kind}_q")
    for x, name in zip((mu_p, mat_p, mu_q, mat_q), names):
        check_floating(x, name)
    check_min_ndim(mu_p, 1, "mu_p")
    d = mu_p.shape[-1]
    if d == 0:
        raise ShapeError(f"mu_p has an empty event dimension (shape {tuple(mu_p.shape)})")
    check_last_dims(mu_q, (d,), "mu_q (same event size as mu_p)")
    check_last_dims(mat_p, (d, d), f"{names[1]} (matching mu_p of shape {tuple(mu_p.shape)})")
    check_last_dims(mat_q, (d, d), f"{names[3]} (matching mu_q of shape {tuple(mu_q.shape)})")
    broadcast_batch_shape([mu_p.shape[:-1], mat_p.shape[:-2], mu_q.shape[:-1], mat_q.shape[:-2]], names)
    check_finite(mu_p, "mu_p")
    check_finite(mu_q, "mu_q")
    if kind == "L":
        check_lower_triangular(mat_p, "L_p")
        check_lower_triangular(mat_q, "L_q")


def kl_gaussian(mu_p, cov_p, mu_q, cov_q) -> torch.Tensor:
    """KL(N(μp, Σp) ‖ N(μq, Σq)) in nats, full covariances (notebook 02):

        ½ { log(det Σq / det Σp) − d + tr(Σq⁻¹ Σp) + (μp − μq)ᵀ Σq⁻¹ (μp − μq) }

    computed from the Cholesky factors Σ = L Lᵀ by :func:`kl_gaussian_tril`. Raises
    ``NotPositiveDefiniteError`` when a covariance is not symmetric positive definite.
    """
    _check_gaussians(mu_p, cov_p, mu_q, cov_q)
    return kl_gaussian_tril.unchecked(mu_p, cholesky_or_raise(cov_p, "cov_p"), mu_q, cholesky_or_raise(cov_q, "cov_q"))


@checked(lambda mu_p, L_p, mu_q, L_q: _check_gaussians(mu_p, L_p, mu_q, L_q, "L"))
def kl_gaussian_tril(mu_p, L_p, mu_q, L_q) -> torch.Tensor:
    """KL(N(μp, Lp Lpᵀ) ‖ N(μq, Lq Lqᵀ)) from lower-triangular factors with positive diagonals.

    The formula of :func:`kl_gaussian`, with triangular solves instead of inverses (notebook 02,
    section 3): with Σ = L Lᵀ, log det Σ = 2 Σᵢ log Lᵢᵢ, tr(Σq⁻¹ Σp) = ‖Lq⁻¹ Lp‖²_F and
    (μp − μq)ᵀ Σq⁻¹ (μp − μq) = ‖Lq⁻¹ (μp − μq)‖².
    """
    mu_p, L_p, mu_q, L_q = _common_dtype(mu_p, L_p, mu_q, L_q)
    batch = torch.broadcast_shapes(mu_p.shape[:-1], L_p.shape[:-2], mu_q.shape[:-1], L_q.shape[:-2])
    d = mu_p.shape[-1]
    L_p, L_q = L_p.expand(*batch, d, d), L_q.expand(*batch, d, d)
    half_log_det_p = torch.log(L_p.diagonal(dim1=-2, dim2=-1)).sum(-1)  # ½ log det Σp
    half_log_det_q = torch.log(L_q.diagonal(dim1=-2, dim2=-1)).sum(-1)
    trace = torch.linalg.solve_triangular(L_q, L_p, upper=False).square().sum((-2, -1))
    diff = (mu_p - mu_q).expand(*batch, d).unsqueeze(-1)
    mahalanobis = torch.linalg.solve_triangular(L_q, diff, upper=False).square().sum((-2, -1))
    kl = (half_log_det_q - half_log_det_p) + 0.5 * (trace + mahalanobis - d)
    # The inputs are finite, so nan can only come from an overflow inside a solve (inf − inf):
    # the divergence is then beyond the range of the dtype.
    return _keep_non_negative(torch.nan_to_num(kl, nan=math.inf))


def _common_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


# Taylor coefficients 1/k! for k = 2..17 of e^s − 1 − s (see _exp_minus_one_minus).
_SERIES = [1.0 / math.factorial(k) for k in range(2, 18)]


def _exp_minus_one_minus(s: torch.Tensor) -> torch.Tensor:
    """e^s − 1 − s. Written as it reads, it loses most digits for small |s| (e^s − 1 − s ≈ s²/2
    is a tiny difference of numbers near 1 and s), so there it uses the series Σ_{k≥2} s^k/k!
    (notebook 02, section 3, shows the two side by side)."""
    small = s.abs() < 0.5
    s_small = torch.where(small, s, 0.0)
    series = torch.full_like(s_small, _SERIES[-1])
    for c in reversed(_SERIES[:-1]):  # Horner's rule
        series = series * s_small + c
    s_large = torch.where(small, 1.0, s)
    return torch.where(small, series * s_small * s_small, torch.expm1(s_large) - s_large)


def _check_mu_logvar(mu, logvar, names=("mu", "logvar")) -> None:
    for t, name in zip((mu, logvar), names):
        check_floating(t, name)
        check_min_ndim(t, 1, name)
    check_same_event(mu, logvar, names)
    broadcast_batch_shape([mu.shape[:-1], logvar.shape[:-1]], list(names))
    for t, name in zip((mu, logvar), names):
        check_finite(t, name)


def _check_diag_pair(mu_p, logvar_p, mu_q, logvar_q) -> None:
    _check_mu_logvar(mu_p, logvar_p, ("mu_p", "logvar_p"))
    _check_mu_logvar(mu_q, logvar_q, ("mu_q", "logvar_q"))
    if mu_p.shape[-1] != mu_q.shape[-1]:
        raise ShapeError("p and q must have the same event dimension, "
                         f"got mu_p.shape={tuple(mu_p.shape)} and mu_q.shape={tuple(mu_q.shape)}")
    broadcast_batch_shape([t.shape[:-1] for t in (mu_p, logvar_p, mu_q, logvar_q)],
                          ["mu_p", "logvar_p", "mu_q", "logvar_q"])


@checked(_check_diag_pair)
def kl_diag_gaussians(mu_p, logvar_p, mu_q, logvar_q) -> torch.Tensor:
    """KL(N(μp, diag σp²) ‖ N(μq, diag σq²)) from means and log-variances (notebook 02):

        ½ Σᵢ [ σp²/σq² − 1 − log(σp²/σq²) + (μp − μq)² / σq² ]

    with σp²/σq² = e^δ for δ = logvar_p − logvar_q; e^δ − 1 − δ is computed without cancellation.
    """
    delta = logvar_p - logvar_q
    diff = mu_p - mu_q
    # (μp − μq)²/σq², set to 0 where the means agree: there 1/σq² may overflow, and 0·inf is nan.
    same = diff == 0
    diff_safe, logvar_q_safe = torch.where(same, 1.0, diff), torch.where(same, 0.0, logvar_q)
    mean_term = torch.where(same, 0.0, diff_safe.square() * torch.exp(-logvar_q_safe))
    return 0.5 * (_exp_minus_one_minus(delta) + mean_term).sum(-1)


@checked(_check_mu_logvar)
def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σⱼ (σⱼ² − log σⱼ² − 1 + μⱼ²), the VAE's KL term (notebook 02).

    ``logvar`` holds log σ². Sums over the last axis. Gradients: μ for μ, (σ² − 1)/2 for log σ².
    """
    # σ² − log σ² − 1 = e^s − 1 − s for s = log σ²: written without cancellation for small s.
    return 0.5 * (_exp_minus_one_minus(logvar) + mu.square()).sum(-1)


# --------------------------------------------------------------------------- Monte Carlo (notebook 02)
def kl_monte_carlo_from_samples(samples: torch.Tensor, log_p, log_q) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo estimate of KL(p ‖ q) = E_p[log p(x) − log q(x)] from n ≥ 2 draws of p.

    ``samples`` holds the draws on its first axis; ``log_p`` and ``log_q`` map them to
    log-densities (n, *batch). Returns (mean of log p − log q, its standard error s/√n). If q gives
    some sample zero density both are +inf; a nan or −inf ratio raises ``NonFiniteError``.
    """
    ratio = mc_log_ratios(samples, log_p, log_q)  # checked: one log p − log q per sample
    finite = torch.isfinite(ratio).all(0)
    se = torch.where(finite, ratio, 0.0).std(0, correction=1) / math.sqrt(ratio.shape[0])
    return ratio.mean(0), torch.where(finite, se, math.inf)


def kl_monte_carlo(p, q, n_samples: int = 100_000, *, generator: torch.Generator | None = None):
    """Monte Carlo estimate of KL(p ‖ q) with its standard error, from ``n_samples`` draws of p.

    ``p`` is a ``torch.distributions.Distribution``; ``q`` a distribution or a callable giving
    log-densities. With a ``generator`` the draws are reproducible and the global random state is
    left alone. Returns (estimate, standard error) as :func:`kl_monte_carlo_from_samples`.
    """
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    if not (hasattr(p, "sample") and hasattr(p, "log_prob")):
        raise TypeError(f"p must be a torch.distributions.Distribution with .sample and .log_prob, got {type(p).__name__}")
    log_q = q.log_prob if hasattr(q, "log_prob") else q
    if not callable(log_q):
        raise TypeError("q must be a torch.distributions.Distribution (or have .log_prob), "
                        f"or a callable returning log-densities; got {type(q).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    with torch.no_grad(), torch.random.fork_rng(enabled=generator is not None):
        if generator is not None:  # distributions draw from the global generator: seed it from ours
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator, device=generator.device)))
        samples = p.sample((n_samples,))
    return kl_monte_carlo_from_samples(samples, p.log_prob, log_q)
