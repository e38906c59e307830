"""Checkers for the exercises a learner codes in the notebooks (each checker's docstring gives the signature).

* notebook 01 (KL divergence): ``check_entropy``, ``check_cross_entropy``, ``check_kl_discrete``,
  ``check_kl_identity``, ``check_kl_bits``;
* notebook 02 (Gaussian KL): ``check_kl_gaussian_1d``, ``check_kl_gaussian``, ``check_kl_standard_normal``;
* notebook 03 (the ELBO): ``check_mixture_elbo``, ``check_linear_gaussian_posterior``, ``check_elbo_estimate``;
* notebook 04 (reparameterization): ``check_reparameterize``, ``check_sample_full``,
  ``check_pathwise_gradient_x2``;
* notebook 05 (importance sampling, amortized inference and the importance-weighted bound):
  ``check_effective_sample_size``, ``check_iwae_bound``;
* notebook 06 (training a VAE): ``check_training_step``.

A stub cell (a function raising ``NotImplementedError``) is filled in by the learner, then a check cell calls e.g.
``check_kl_discrete(kl_discrete)``. The checker runs it and a reference written here on random and edge cases
(float64, but for a float32 case where the dtype is the point; fixed seeds) and prints a verdict like makemore's
``cmp()``: ``exact``, ``close`` or ``WRONG`` with the largest errors; for a wrong answer, the first failing case, and
which usual mistake the answer matches on every case.
An untouched stub prints the reference instead, so that the notebook runs clean before and after the learner's work.
The references are not vaelib's functions; ``tests/test_exercises.py`` checks them against torch.distributions,
scipy and vaelib.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.distributions import Normal
import torch.nn.functional as F
from torch.special import xlogy  # x·log y, and 0 where x = 0: the convention 0·log 0 = 0

__all__ = ["Result", "check_entropy", "check_cross_entropy", "check_kl_discrete", "check_kl_identity",
           "check_kl_bits", "check_kl_gaussian_1d", "check_kl_gaussian", "check_kl_standard_normal",
           "check_mixture_elbo", "check_linear_gaussian_posterior", "check_elbo_estimate", "check_reparameterize",
           "check_sample_full", "check_pathwise_gradient_x2", "check_effective_sample_size", "check_iwae_bound",
           "check_training_step"]


@dataclass(repr=False)
class Result:
    """What a checker found. ``status`` is "done", "not attempted" or "wrong"; ``exact`` means equal to the bit."""

    exercise: str
    status: str
    max_abs_error: float = math.nan
    max_rel_error: float = math.nan
    exact: bool = False
    failed_case: str | None = None
    message: str | None = None  # what is wrong on the failed case
    hint: str | None = None     # which usual mistake the answer looks like

    @property
    def passed(self) -> bool:
        return self.status == "done"

    def __repr__(self) -> str:
        return f"<{self.exercise}: {self.status}, max abs error {self.max_abs_error:.2g}>"


# --------------------------------------------------------------------------- references: notebook 01
def reference_entropy(p):
    return -xlogy(p, p).sum(-1)  # H(p) = −Σₖ pₖ log pₖ


def reference_cross_entropy(p, q):
    return -xlogy(p, q).sum(-1)  # H(p, q) = −Σₖ pₖ log qₖ


def reference_kl_discrete(p, q):
    return (xlogy(p, p) - xlogy(p, q)).sum(-1)  # KL(p ‖ q) = Σₖ pₖ (log pₖ − log qₖ)


def reference_kl_bits(p, q):
    return reference_kl_discrete(p, q) / math.log(2)  # log₂ x = ln x / ln 2


# --------------------------------------------------------------------------- references: notebook 02
def reference_kl_gaussian_1d(mu_p, sigma_p, mu_q, sigma_q):
    # KL(N(μp, σp²) ‖ N(μq, σq²)) = log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − ½
    return torch.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5


def reference_kl_gaussian(mu_p, cov_p, mu_q, cov_q):
    d = mu_p.shape[-1]
    diff = (mu_p - mu_q).unsqueeze(-1)                                   # (..., d, 1)
    trace = torch.linalg.solve(cov_q, cov_p).diagonal(dim1=-2, dim2=-1).sum(-1)  # tr(Σq⁻¹ Σp)
    mahalanobis = (diff.mT @ torch.linalg.solve(cov_q, diff))[..., 0, 0]         # (μp − μq)ᵀ Σq⁻¹ (μp − μq)
    log_det_ratio = torch.logdet(cov_q) - torch.logdet(cov_p)                   # log(det Σq / det Σp)
    return 0.5 * (log_det_ratio - d + trace + mahalanobis)


def reference_kl_standard_normal(mu, logvar):
    # KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σⱼ (σⱼ² − log σⱼ² − 1 + μⱼ²), with logvar = log σ²
    return 0.5 * (logvar.exp() - logvar - 1 + mu**2).sum(-1)


# --------------------------------------------------------------------------- references: notebook 03
def reference_mixture_elbo(q, log_joint):
    # ELBO(q) = Σₖ qₖ (log p(x, z=k) − log qₖ); xlogy counts 0·log 0 as 0, so a z that q never picks adds nothing
    return (q * log_joint - xlogy(q, q)).sum(-1)


def reference_linear_gaussian_posterior(W, b, s, x):
    eye = torch.eye(W.shape[1], dtype=W.dtype)
    S = torch.linalg.inv(eye + W.T @ W / s**2)  # S⁻¹ = I + Wᵀ W / s²: the prior's precision plus the likelihood's
    m = (x - b) @ W @ S / s**2                  # m = S Wᵀ (x − b) / s², written for rows x (S is symmetric)
    return m, S


def reference_elbo_estimate(log_p_xz, mu, logvar, eps):
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * eps                           # S samples of q(z|x) = N(μ, diag σ²), one per row of eps
    log_q = Normal(mu, sigma).log_prob(z).sum(-1)  # log q(z|x), summed over the latent coordinates
    return (log_p_xz(z) - log_q).mean(0)           # ELBO ≈ mean over the samples of log p(x, z) − log q(z|x)


# --------------------------------------------------------------------------- references: notebook 04
def reference_reparameterize(mu, logvar, eps):
    return mu + torch.exp(0.5 * logvar) * eps  # z = μ + σ ε with σ = exp(½ log σ²)


def reference_sample_full(mu, cov, eps):
    L = torch.linalg.cholesky(cov)                   # Σ = L Lᵀ, L lower triangular
    return mu + (L @ eps.unsqueeze(-1)).squeeze(-1)  # z = μ + L ε, so that Cov z = L I Lᵀ = Σ


def reference_pathwise_gradient_x2(mu, sigma, eps):
    x = mu + sigma * eps       # the sample is a differentiable function of μ and σ
    return 2 * x, 2 * x * eps  # d(x²)/dμ = 2x · dx/dμ = 2x,  d(x²)/dσ = 2x · dx/dσ = 2x ε


# --------------------------------------------------------------------------- references: notebook 05
def reference_effective_sample_size(log_weights):
    # ESS = (Σₙ wₙ)² / Σₙ wₙ², so log ESS = 2 log Σₙ wₙ − log Σₙ wₙ²; logsumexp shifts by the largest term, so
    # that log weights near ±1000 neither overflow nor underflow
    return torch.exp(2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0))


def reference_iwae_bound(log_weights):
    m = log_weights.amax(0)  # shift by the largest log weight, so that exp neither overflows nor underflows
    return m + torch.log(torch.exp(log_weights - m).mean(0))  # log (1/K) Σₖ wₖ


# --------------------------------------------------------------------------- the cases: [(label, args)]
def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _normal(seed: int):
    """A function drawing standard normal float64 tensors of a given shape, from its own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)


def _probabilities(pairs: bool, infinite: bool = True):
    """Probability vectors on the last axis: random, with zeros, one-hot, uniform, K = 1 and K = 20."""
    r = _normal(1)
    simplex = lambda *shape: torch.softmax(2 * r(*shape), -1)  # noqa: E731

    def zeros_at(p, k=0):  # p with the outcomes k, k + 3, ... made impossible
        p = p * ((torch.arange(p.shape[-1]) - k) % 3 != 0)
        return p / p.sum(-1, keepdim=True)
    single = [("random, K = 6", simplex(6)), ("batch (4, 3), K = 5", simplex(4, 3, 5)), ("K = 20", simplex(3, 20)),
              ("p with zero entries", zeros_at(simplex(4, 6))), ("one-hot p", _f64([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])),
              ("uniform p", torch.full((2, 8), 1 / 8, dtype=torch.float64)), ("K = 1", _f64([1.0]))]
    if not pairs:
        return [(label, (p,)) for label, p in single]
    same = simplex(4, 3, 5)
    cases = [(f"{label}, random q", (p, simplex(*p.shape))) for label, p in single]
    cases += [("q = p", (same, same)),
              ("p and q with zeros at the same outcomes", (zeros_at(simplex(3, 7)), zeros_at(simplex(3, 7))))]
    infinite_case = ("q = 0 where p > 0 (the answer is +inf)", (simplex(2, 6), zeros_at(simplex(2, 6), 1)))
    return cases + [infinite_case] if infinite else cases


def _gaussians_1d():
    r = _normal(2)
    s = lambda *shape: torch.exp(0.5 * r(*shape))  # noqa: E731  (a standard deviation)
    tiny, huge = math.exp(-5), math.exp(5)  # σ² = e^−10 and e^10
    return [("shape (5,)", (r(5), s(5), r(5), s(5))), ("scalars (0-d tensors)", (r(), s(), r(), s())),
            ("batch (3, 4)", (r(3, 4), s(3, 4), r(3, 4), s(3, 4))),
            ("p = q = N(0, 1)", (_f64(0.0), _f64(1.0), _f64(0.0), _f64(1.0))),
            ("σ² = e^±10", (_f64([1.0, -2.0]), _f64([tiny, huge]), _f64([0.5, 0.0]), _f64([huge, tiny])))]


def _covariance(r, *batch, d, condition=None):
    """Q diag(λ) Qᵀ for a random rotation Q; λ random, or spread evenly (in log) over a ``condition`` number."""
    q, _ = torch.linalg.qr(r(*batch, d, d))
    spread = torch.logspace(0, math.log10(condition), d, dtype=torch.float64) if condition else r(*batch, d).exp()
    eigenvalues = spread * r(*batch, 1).exp()  # times a random scale, so that the determinants differ
    cov = (q * eigenvalues.unsqueeze(-2)) @ q.mT
    return (cov + cov.mT) / 2  # symmetric to the last bit


def _gaussians():
    r = _normal(3)

    def pair(*batch, d, condition=None):
        return (r(*batch, d), _covariance(r, *batch, d=d, condition=condition),
                r(*batch, d), _covariance(r, *batch, d=d, condition=condition))
    same = pair(4, d=3)
    return [("d = 3", pair(d=3)), ("d = 1", pair(d=1)), ("d = 20", pair(d=20)), ("batch of 4, d = 3", pair(4, d=3)),
            ("p = q", same[:2] + same[:2]),
            ("ill-conditioned (condition number 1e6), d = 6", pair(2, d=6, condition=1e6))]


def _diagonal_gaussians():
    r = _normal(4)
    return [("d = 5", (r(5), r(5))), ("batch of 4, d = 3", (r(4, 3), r(4, 3))), ("d = 1", (r(6, 1), r(6, 1))),
            ("batch (2, 3), d = 20", (r(2, 3, 20), r(2, 3, 20))),
            ("μ = 0, log σ² = 0: q is the prior", (torch.zeros(2, 4, dtype=torch.float64),) * 2),
            ("log σ² = ±10", (r(2, 3), _f64([[-10.0, 10.0, -10.0], [10.0, 0.0, -10.0]])))]


def _mixture_cases():
    r = _normal(10)
    log_joint = lambda *shape: -40 * torch.sigmoid(r(*shape))  # noqa: E731  log p(x, z=k), between −40 and 0
    scales = torch.logspace(-1, 1.3, 200, dtype=torch.float64)[:, None, None]  # q's from near-uniform to near-one-hot
    impossible = torch.arange(6) % 3 == 0  # z = 0 and z = 3, which the q's below never pick
    with_zeros = torch.softmax(r(4, 6), -1) * ~impossible
    exact = log_joint(4, 3)  # for q = the posterior p(z=k | x) = softmax of log p(x, z=k) over k
    return [("K = 3, batch (200, 8): q's from nearly uniform to nearly one-hot",
             (torch.softmax(scales * r(200, 8, 3), -1), log_joint(200, 8, 3))),
            ("K = 3, batch (8,)", (torch.softmax(r(8, 3), -1), log_joint(8, 3))),
            ("K = 5, batch (2, 4)", (torch.softmax(2 * r(2, 4, 5), -1), log_joint(2, 4, 5))),
            ("K = 20", (torch.softmax(3 * r(3, 20), -1), log_joint(3, 20))),
            ("q with zero entries", (with_zeros / with_zeros.sum(-1, keepdim=True), log_joint(4, 6))),
            ("one-hot q: the ELBO is log p(x, z=k)", (_f64([[1, 0, 0], [0, 0, 1], [0, 1, 0]]), log_joint(3, 3))),
            ("q = the posterior: the ELBO is log p(x)", (torch.softmax(exact, -1), exact)),
            ("K = 1", (_f64([1.0]), log_joint(1)))]


def _linear_gaussian_cases():
    r = _normal(11)

    def case(p, d, s, *batch, W=None):  # (W, b, s, x) with x of shape (*batch, p)
        return (r(p, d) if W is None else W), r(p), s, r(*batch, p)
    w = r(5, 1)
    b = r(5)
    return [("d = 2, p = 5, one x", case(5, 2, 0.7)), ("d = 5, p = 20, a batch of 10 x's", case(20, 5, 1.3, 10)),
            ("d = 1, p = 3, batch (4, 2)", case(3, 1, 0.4, 4, 2)), ("d = p = 5, s = 2.5", case(5, 5, 2.5, 3)),
            ("nearly parallel columns of W: S far from diagonal",
             case(5, 2, 0.3, 6, W=torch.cat([w, w + 0.05 * r(5, 1)], 1))),
            ("s = 30: the posterior is nearly the prior", case(3, 2, 30.0, 4)),
            ("s = 0.05: a narrow posterior", case(20, 2, 0.05, 4)),
            ("x = b: the posterior mean is 0", (r(5, 2), b, 0.8, b.repeat(3, 1)))]


def _elbo_cases():
    r = _normal(5)

    def linear_gaussian(x, w):  # log p(x, z) = log N(z; 0, I) + log N(x; W z, 0.5² I), per sample and data point
        return lambda z: Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(z @ w.mT, 0.5).log_prob(x).sum(-1)
    return [("7 samples, 3 data points, d = 2", (linear_gaussian(r(3, 5), r(5, 2)), r(3, 2), r(3, 2), r(7, 3, 2))),
            ("1 sample", (linear_gaussian(r(3, 5), r(5, 2)), r(3, 2), r(3, 2), r(1, 3, 2))),
            ("batch (2, 3), d = 1", (linear_gaussian(r(2, 3, 5), r(5, 1)), r(2, 3, 1), r(2, 3, 1), r(5, 2, 3, 1))),
            ("d = 20", (linear_gaussian(r(2, 5), r(5, 20)), r(2, 20), r(2, 20), r(4, 2, 20))),
            ("log σ² = ±10", (linear_gaussian(r(2, 5), r(5, 3)), r(2, 3), _f64([[-10, 10, 0], [10, -10, 3]]),
                              r(6, 2, 3)))]


def _log_weight_cases():
    r = _normal(6)
    return [(label, (w,)) for label, w in [
        ("K = 5, batch 3", r(5, 3)), ("K = 1", r(1, 4)), ("K = 1000", r(1000, 2)), ("batch (2, 4)", r(10, 2, 4)),
        ("one weight dominates", 20 * r(8, 3)), ("log weights near −1000: exp underflows", r(6, 3) - 1000),
        ("log weights near +1000: exp overflows", r(6, 3) + 1000)]]


def _ess_cases():
    r = _normal(12)
    one_dominates = torch.full((20, 3), -50.0, dtype=torch.float64)
    one_dominates[7] = 0.0  # the other weights are e^−50 times smaller
    return [(label, (w,)) for label, w in [
        ("N = 10, batch 3", r(10, 3)), ("N = 1: ESS = 1", r(1, 4)), ("N = 300, batch (2, 3)", r(300, 2, 3)),
        ("widely spread log weights (sd 20)", 20 * r(40, 3)), ("equal weights: ESS = N", torch.zeros(50, 2).double()),
        ("one weight dominates: ESS = 1", one_dominates),
        ("log weights near −1000: exp underflows", r(30, 3) - 1000),
        ("log weights near +1000: exp overflows", 3 * r(30, 3) + 1000),
        ("float32 log weights: the answer is float32 too", r(20, 3).float())]]


def _reparameterize_cases():
    r = _normal(7)
    return [("d = 3", (r(3), r(3), r(3))), ("batch of 4, d = 20", (r(4, 20), r(4, 20), r(4, 20))),
            ("d = 1", (r(1), r(1), r(1))), ("5 samples per data point, eps (5, 2, 3)", (r(2, 3), r(2, 3), r(5, 2, 3))),
            ("log σ² = ±10", (r(2), _f64([-10.0, 10.0]), r(2)))]


def _full_cases():
    r = _normal(8)

    def case(*batch, d, samples=(), condition=None):
        return r(*batch, d), _covariance(r, *batch, d=d, condition=condition), r(*samples, *batch, d)
    return [("d = 3", case(d=3)), ("d = 1", case(d=1)), ("d = 20", case(d=20)), ("batch of 4, d = 2", case(4, d=2)),
            ("6 samples, eps (6, 3)", case(d=3, samples=(6,))),
            ("diagonal covariance", (r(2), torch.diag(_f64([4.0, 0.25])), r(2))),
            ("ill-conditioned (condition number 1e8), d = 5", case(d=5, condition=1e8))]


def _pathwise_cases():
    r = _normal(9)
    return [("scalar μ and σ, 10 samples", (r(), r().exp(), r(10))),
            ("μ, σ (3,), eps (8, 3)", (r(3), r(3).exp(), r(8, 3))),
            ("tiny and huge σ", (r(2), _f64([math.exp(-5), math.exp(5)]), r(4, 2)))]


# --------------------------------------------------------------------------- the usual mistakes
def _swapped(ref):  # (p, q) → (q, p); (μp, Σp, μq, Σq) → (μq, Σq, μp, Σp)
    return lambda *args: ref(*args[len(args) // 2:], *args[:len(args) // 2])


def _scaled(ref, factor):
    return lambda *args: factor * ref(*args)


def _mean_not_sum(ref):
    return lambda first, *rest: ref(first, *rest) / first.shape[-1]


def _elbo_without_log_q(log_p_xz, mu, logvar, eps):
    return log_p_xz(mu + torch.exp(0.5 * logvar) * eps).mean(0)


def _posterior_with(W, b, x, noise_var, prior_precision=1.0, invert=True):
    """The linear-Gaussian posterior (m, S) with the noise variance and the prior's precision as given, and the
    precision inverted or not: the usual mistakes change one of these."""
    precision = prior_precision * torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / noise_var
    S = torch.linalg.inv(precision) if invert else precision
    return (x - b) @ W @ S / noise_var, S


def _symmetric_sqrt(cov):
    values, vectors = torch.linalg.eigh(cov)
    return (vectors * values.sqrt().unsqueeze(-2)) @ vectors.mT


def _common_mistakes(ref, formula: str, naive):
    """The mistakes every sum of p·log(...) invites: a lost minus, log base 2, a mean, and 0·log 0 (``naive``)."""
    return [(f"the sign is wrong: {formula}", _scaled(ref, -1)),
            ("looks like log base 2 (bits): the course works in nats, use torch.log", _scaled(ref, 1 / math.log(2))),
            ("looks like a mean over the outcomes where the sum belongs", _mean_not_sum(ref)),
            ("gives nan where a probability is 0, since 0·log 0 = 0·(−inf) = nan in floating point: use the "
             "convention 0·log 0 = 0 (torch.special.xlogy, or torch.where)", naive)]


_SWAPPED = "looks like the arguments are swapped: this computes KL(q ‖ p), not KL(p ‖ q)"
_LOGVAR = "looks like logvar was read as log σ: it holds log σ², so σ = exp(½ logvar) and σ² = exp(logvar)"


@dataclass(frozen=True)
class _Exercise:
    doc: str                   # where it sits in the course and the learner's signature
    reference: Callable
    cases: Callable[[], list]  # () → [(label, args)]
    mistakes: list             # [(hint, the reference with that mistake)]
    rtol: float = 1e-7
    atol: float = 1e-9


_EXERCISES = {
    "entropy": _Exercise(
        "Notebook 01, section 1. ``entropy(p)``: p (..., K), probabilities on the last axis → H(p) in nats, (...).",
        reference_entropy, lambda: _probabilities(pairs=False),
        _common_mistakes(reference_entropy, "H(p) = −Σ p log p", lambda p: -(p * p.log()).sum(-1))),
    "cross_entropy": _Exercise(
        "Notebook 01, section 1. ``cross_entropy(p, q)``: p, q (..., K) → H(p, q) in nats, (...); +inf if q = 0 < p.",
        reference_cross_entropy, lambda: _probabilities(pairs=True),
        [("looks like the arguments are swapped: this is H(q, p) = −Σ q log p", _swapped(reference_cross_entropy))]
        + _common_mistakes(reference_cross_entropy, "H(p, q) = −Σ p log q", lambda p, q: -(p * q.log()).sum(-1))),
    "kl_discrete": _Exercise(
        "Notebook 01, section 1. ``kl_discrete(p, q)``: p, q (..., K) → KL(p ‖ q) in nats, (...), with 0·log 0 = 0.",
        reference_kl_discrete, lambda: _probabilities(pairs=True),
        [(_SWAPPED, _swapped(reference_kl_discrete))]
        + _common_mistakes(reference_kl_discrete, "KL(p ‖ q) = Σ p (log p − log q)",
                           lambda p, q: (p * p.log() - p * q.log()).sum(-1))
        + [("log p − log q is not weighted by p: KL = Σ p (log p − log q)", lambda p, q: (p.log() - q.log()).sum(-1))]),
    "kl_bits": _Exercise(
        "Notebook 01, section 4. ``kl_bits(p, q)``: like ``kl_discrete``, in bits (log base 2).",
        reference_kl_bits, lambda: _probabilities(pairs=True),
        [("looks like nats: divide by ln 2 to get bits", reference_kl_discrete),
         ("looks like nats multiplied by ln 2: divide by ln 2 instead", _scaled(reference_kl_discrete, math.log(2))),
         (_SWAPPED, _swapped(reference_kl_bits))]),
    "kl_gaussian_1d": _Exercise(
        "Notebook 02, section 1, with d = 1 (notebook 01, section 5 integrates it). ``kl_gaussian_1d(mu_p, sigma_p, "
        "mu_q, sigma_q)``: means and standard deviations (not variances), tensors of one shape, 0-d allowed → "
        "KL(N(μp, σp²) ‖ N(μq, σq²)) elementwise, of that shape.",
        reference_kl_gaussian_1d, _gaussians_1d,
        [(_SWAPPED, _swapped(reference_kl_gaussian_1d)),
         ("the −½ at the end is missing", lambda *a: reference_kl_gaussian_1d(*a) + 0.5),
         ("looks like σ where σ² belongs in (σp² + (μp − μq)²) / (2σq²)",
          lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp + (mp - mq) ** 2) / (2 * sq) - 0.5),
         ("the ½ of log(σq/σp) = ½ log(σq²/σp²) is missing",
          lambda mp, sp, mq, sq: reference_kl_gaussian_1d(mp, sp, mq, sq) + torch.log(sq / sp)),
         ("the 2 of the denominator 2σq² is missing",
          lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / sq**2 - 0.5)]),
    "kl_gaussian": _Exercise(
        "Notebook 02, section 1. ``kl_gaussian(mu_p, cov_p, mu_q, cov_q)``: means (..., d), covariances (..., d, d) → "
        "KL(N(μp, Σp) ‖ N(μq, Σq)) in nats, (...). Cases: d = 1 to 20, and ill-conditioned covariances.",
        reference_kl_gaussian, _gaussians,
        [("looks like the ½ in front of the braces is missing", _scaled(reference_kl_gaussian, 2)),
         ("the −d is missing (with it, KL(p ‖ p) = 0)",
          lambda mp, *a: reference_kl_gaussian(mp, *a) + mp.shape[-1] / 2),
         (_SWAPPED, _swapped(reference_kl_gaussian)),
         ("the log-determinant ratio is upside down: it is log(det Σq / det Σp)",
          lambda mp, cp, mq, cq: reference_kl_gaussian(mp, cp, mq, cq) - torch.logdet(cq) + torch.logdet(cp)),
         ("the trace is tr(Σq⁻¹ Σp), with the inverse of Σq, not tr(Σq Σp)", lambda mp, cp, mq, cq:
          reference_kl_gaussian(mp, cp, mq, cq) + torch.einsum("...ii", cq @ cp - torch.linalg.solve(cq, cp)) / 2)],
        rtol=1e-6),
    "kl_standard_normal": _Exercise(
        "Notebook 02, section 2: the VAE's KL term. ``kl_standard_normal(mu, logvar)``: μ and log σ², both (..., d) → "
        "KL(N(μ, diag σ²) ‖ N(0, I)) summed over the last axis, (...).",
        reference_kl_standard_normal, _diagonal_gaussians,
        [("looks like the ½ in front of the sum is missing", _scaled(reference_kl_standard_normal, 2)),
         (_LOGVAR, lambda mu, lv: reference_kl_standard_normal(mu, 2 * lv)),
         ("the −1 in the sum is missing (with it, the KL is 0 when q is the prior)",
          lambda mu, lv: reference_kl_standard_normal(mu, lv) + mu.shape[-1] / 2),
         ("the sign of log σ² is wrong: ½ Σ (σ² − log σ² − 1 + μ²)",
          lambda mu, lv: reference_kl_standard_normal(mu, lv) + lv.sum(-1)),
         ("the sign is wrong: ½ Σ (σ² − log σ² − 1 + μ²) is never negative", _scaled(reference_kl_standard_normal, -1)),
         ("looks like a mean over the coordinates where the sum belongs", _mean_not_sum(reference_kl_standard_normal)),
         ("the sum runs over the batch too: sum over the last axis only, one KL per data point",
          lambda mu, lv: reference_kl_standard_normal(mu, lv).sum())]),
    "mixture_elbo": _Exercise(
        "Notebook 03, section 2 (exercise 2c): the ELBO of a discrete latent. ``mixture_elbo(q, log_joint)``: q "
        "(..., K) probabilities of the K values of z (zeros allowed), log_joint (..., K) holding log p(x, z=k) → "
        "ELBO(q) = Σₖ qₖ (log p(x, z=k) − log qₖ), (...), with 0·log 0 = 0.",
        reference_mixture_elbo, _mixture_cases,
        [("the −log qₖ term is missing: the ELBO is Σₖ qₖ (log p(x, z=k) − log qₖ), which adds the entropy of q, "
          "−Σₖ qₖ log qₖ, to Σₖ qₖ log p(x, z=k)", lambda q, lj: (q * lj).sum(-1)),
         ("the sign of log qₖ is wrong: the ELBO is Σₖ qₖ (log p(x, z=k) − log qₖ)",
          lambda q, lj: (q * lj + xlogy(q, q)).sum(-1)),
         ("gives nan where some qₖ = 0, since 0·log 0 = 0·(−inf) = nan in floating point: count 0·log 0 as 0 "
          "(torch.special.xlogy(q, q), or torch.where)", lambda q, lj: (q * (lj - q.log())).sum(-1)),
         ("looks like a mean over the K values of z where the sum belongs", _mean_not_sum(reference_mixture_elbo)),
         ("one number per value of z: sum qₖ (log p(x, z=k) − log qₖ) over the last axis, one ELBO per q",
          lambda q, lj: q * lj - xlogy(q, q)),
         ("the sum runs over the batch too: sum over the last axis only, one ELBO per q",
          lambda q, lj: reference_mixture_elbo(q, lj).sum())]),
    "linear_gaussian_posterior": _Exercise(
        "Notebook 03: the exact posterior of the linear-Gaussian model z ~ N(0, I_d), x | z ~ N(W z + b, s² I_p). "
        "``linear_gaussian_posterior(W, b, s, x)``: W (p, d), b (p,), s a positive float, x (..., p) → (m, S), the "
        "posterior mean (..., d) and covariance (d, d), with S⁻¹ = I + WᵀW / s² and m = S Wᵀ (x − b) / s².",
        reference_linear_gaussian_posterior, _linear_gaussian_cases,
        [("the prior's I is missing from the precision: S⁻¹ = I + WᵀW / s², the prior N(0, I) adding its precision I "
          "to the likelihood's WᵀW / s²", lambda W, b, s, x: _posterior_with(W, b, x, s**2, prior_precision=0.0)),
         ("looks like s where s² belongs: s is the noise's standard deviation, and S⁻¹ = I + WᵀW / s², "
          "m = S Wᵀ (x − b) / s² divide by its variance s²", lambda W, b, s, x: _posterior_with(W, b, x, s)),
         ("b is not subtracted from x: m = S Wᵀ (x − b) / s²", lambda W, b, s, x: _posterior_with(W, 0 * b, x, s**2)),
         ("the second output is the precision S⁻¹ = I + WᵀW / s²: return its inverse, the covariance S",
          lambda W, b, s, x: (_posterior_with(W, b, x, s**2)[0], _posterior_with(W, b, x, s**2, invert=False)[1])),
         ("the precision I + WᵀW / s² is used where its inverse S belongs, in m and as the covariance: "
          "S = (I + WᵀW / s²)⁻¹", lambda W, b, s, x: _posterior_with(W, b, x, s**2, invert=False)),
         ("the mean lacks its factor S: m = S Wᵀ (x − b) / s², not Wᵀ (x − b) / s²",
          lambda W, b, s, x: ((x - b) @ W / s**2, reference_linear_gaussian_posterior(W, b, s, x)[1]))]),
    "elbo_estimate": _Exercise(
        "Notebook 03, section 2 (and 04, section 5): the Monte Carlo ELBO. ``elbo_estimate(log_p_xz, mu, logvar, "
        "eps)``: μ and log σ² (..., d) of q(z|x) = N(μ, diag σ²) for each data point, eps (S, ..., d) standard normal "
        "draws, log_p_xz mapping z (S, ..., d) to log p(x, z), (S, ...) → the mean over the S samples z = μ + σ ε of "
        "log p(x, z) − log q(z|x): one ELBO per data point, (...).",
        reference_elbo_estimate, _elbo_cases,
        [("the −log q(z|x) term is missing: the ELBO is the mean of log p(x, z) − log q(z|x)", _elbo_without_log_q),
         ("the sign of log q(z|x) is wrong: the ELBO is the mean of log p(x, z) − log q(z|x)",
          lambda *a: 2 * _elbo_without_log_q(*a) - reference_elbo_estimate(*a)),  # E log p + E log q
         (_LOGVAR, lambda f, mu, lv, eps: reference_elbo_estimate(f, mu, 2 * lv, eps)),
         ("looks like a sum over the samples where the mean belongs",
          lambda f, mu, lv, eps: len(eps) * reference_elbo_estimate(f, mu, lv, eps)),
         ("log q(z|x) lacks its constant −½ log 2π per latent coordinate",
          lambda f, mu, *a: reference_elbo_estimate(f, mu, *a) - mu.shape[-1] * math.log(2 * math.pi) / 2),
         ("the mean runs over the data points too: average over the samples (axis 0) only, one ELBO per data point",
          lambda *a: reference_elbo_estimate(*a).mean())]),
    "reparameterize": _Exercise(
        "Notebook 04, sections 1 and 5. ``reparameterize(mu, logvar, eps)``: μ and log σ² (..., d), standard normal "
        "eps of that shape or with leading sample axes → z = μ + σ ε, of eps's shape.",
        reference_reparameterize, _reparameterize_cases,
        [("ε is scaled by exp(logvar) = σ²: the scale is σ = exp(½ logvar), the square root of the variance",
          lambda mu, lv, eps: mu + lv.exp() * eps),
         ("ε is scaled by logvar itself: σ = exp(½ logvar)", lambda mu, lv, eps: mu + lv * eps),
         ("ε is added without its scale: z = μ + σ ε", lambda mu, lv, eps: mu + eps),
         ("ε is divided by σ: z = μ + σ ε, with σ = exp(+½ logvar)",
          lambda mu, lv, eps: mu + torch.exp(-lv / 2) * eps)]),
    "sample_full": _Exercise(
        "Notebook 04, section 3. ``sample_full(mu, cov, eps)``: μ (..., d), a covariance Σ (..., d, d), standard "
        "normal eps (..., d), perhaps with leading sample axes → z = μ + L ε, of eps's shape, with L the lower "
        "Cholesky factor of Σ.",
        reference_sample_full, _full_cases,
        [("ε is multiplied by Σ itself: use its Cholesky factor, L = torch.linalg.cholesky(cov), z = μ + L ε",
          lambda mu, cov, eps: mu + (cov @ eps.unsqueeze(-1)).squeeze(-1)),
         ("looks like Lᵀ ε instead of L ε (for one vector, eps @ L is Lᵀ ε): use L @ eps, or eps @ L.mT",
          lambda mu, cov, eps: mu + (torch.linalg.cholesky(cov).mT @ eps.unsqueeze(-1)).squeeze(-1)),
         ("cov.sqrt() takes the square root of each entry, which is no matrix square root: use torch.linalg.cholesky",
          lambda mu, cov, eps: mu + (cov.sqrt() @ eps.unsqueeze(-1)).squeeze(-1)),
         ("for a batch of covariances, eps @ L.mT pairs each eps with every L: use (L @ eps.unsqueeze(-1)).squeeze(-1)",
          lambda mu, cov, eps: mu + eps @ torch.linalg.cholesky(cov).mT),
         ("looks like eps @ L: for one vector that is Lᵀ ε, and for a batch of covariances it pairs each eps with "
          "every L; use (L @ eps.unsqueeze(-1)).squeeze(-1)",
          lambda mu, cov, eps: mu + eps @ torch.linalg.cholesky(cov)),
         ("only the diagonal of Σ is used, so the correlations are lost: use the Cholesky factor of the whole matrix",
          lambda mu, cov, eps: mu + cov.diagonal(dim1=-2, dim2=-1).sqrt() * eps),
         ("this is the symmetric square root of Σ: its samples have the right distribution, but the exercise asks for "
          "the Cholesky factor, z = μ + L ε",
          lambda mu, cov, eps: mu + (_symmetric_sqrt(cov) @ eps.unsqueeze(-1)).squeeze(-1))],
        rtol=1e-6),
    "pathwise_gradient_x2": _Exercise(
        "Notebook 04, section 1. ``pathwise_gradient_x2(mu, sigma, eps)``: for the samples x = μ + σ ε of N(μ, σ²), "
        "the gradients of x² with respect to μ and σ, one per sample → (grad_mu, grad_sigma), each of the broadcast "
        "shape of mu, sigma and eps. Their means estimate ∇ E[x²] = (2μ, 2σ).",
        reference_pathwise_gradient_x2, _pathwise_cases,
        [("the factor 2 of d(x²)/dx = 2x is missing",
          lambda *a: tuple(g / 2 for g in reference_pathwise_gradient_x2(*a))),
         ("looks like the score-function (REINFORCE) form x² ∇ log q; the pathwise gradient differentiates x² through "
          "x = μ + σ ε", lambda mu, s, eps: ((mu + s * eps) ** 2 * eps / s, (mu + s * eps) ** 2 * (eps**2 - 1) / s)),
         ("the gradient with respect to σ lacks its factor ε: dx/dσ = ε", lambda mu, s, eps: (2 * (mu + s * eps),) * 2),
         ("the derivative is taken at μ, not at the sample x = μ + σ ε",
          lambda mu, s, eps: (2 * mu + 0 * eps, 2 * mu * eps)),
         ("the two gradients are swapped: return (grad_mu, grad_sigma)",
          lambda *a: reference_pathwise_gradient_x2(*a)[::-1])]),
    "effective_sample_size": _Exercise(
        "Notebook 05: how many equally weighted draws an importance sample is worth. ``effective_sample_size("
        "log_weights)``: log wₙ, the N weights on axis 0, (N, ...) → ESS = (Σₙ wₙ)² / Σₙ wₙ², (...), between 1 and N, "
        "of the dtype of log_weights. Cases include log weights near ±1000.",
        reference_effective_sample_size, _ess_cases,
        [("exp(log_w) overflows near +1000 (inf) and underflows near −1000 (0), giving inf/inf or 0/0 = nan: work in "
          "log space, ESS = exp(2·logsumexp(log_w, 0) − logsumexp(2·log_w, 0)), or subtract the largest log weight "
          "before exp", lambda lw: lw.exp().sum(0) ** 2 / (lw.exp() ** 2).sum(0)),
         ("the square of the numerator is missing: ESS = (Σ w)² / Σ w², not Σ w / Σ w² (which changes when every "
          "weight is multiplied by one constant)",
          lambda lw: torch.exp(torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))),
         ("the sums run over the last axis: the N weights are on axis 0",
          lambda lw: reference_effective_sample_size(lw.movedim(-1, 0))),
         ("this is 1/ESS = Σ w² / (Σ w)²: the ESS is its inverse, between 1 and N",
          lambda lw: 1 / reference_effective_sample_size(lw)),
         ("this is ESS/N, the fraction of the N draws the sample is worth: the exercise asks for the ESS itself, "
          "between 1 and N", lambda lw: reference_effective_sample_size(lw) / lw.shape[0])],
        rtol=1e-5),  # for the float32 case: two right float32 routes to the ESS differ by a few 1e-7
    "iwae_bound": _Exercise(
        "Notebook 05: the importance-weighted bound. ``iwae_bound(log_weights)``: log wₖ = log p(x, zₖ) − log q(zₖ|x), "
        "the K samples on axis 0, (K, ...) → log (1/K) Σₖ wₖ, (...). Cases include log weights near ±1000.",
        reference_iwae_bound, _log_weight_cases,
        [("the −log K is missing: the bound is the log of the MEAN of the weights", lambda lw: torch.logsumexp(lw, 0)),
         ("log(mean(exp(log_w))) as written overflows or underflows (exp(−1000) = 0): subtract the largest log weight "
          "first, or use torch.logsumexp(log_w, 0) − log K", lambda lw: torch.log(torch.exp(lw).mean(0))),
         ("this is the mean of the log weights, the ELBO: the bound is the log of the mean of the weights",
          lambda lw: lw.mean(0)),
         ("the log is missing: mean(exp(log_w)) is the mean weight; the bound is its log", lambda lw: lw.exp().mean(0)),
         ("the mean runs over the last axis: the K samples are on axis 0",
          lambda lw: reference_iwae_bound(lw.movedim(-1, 0)))]),
}


# --------------------------------------------------------------------------- the engine
def _outputs(fn, args) -> list:
    out = fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])  # copies: in-place edits stay local
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _problem(got: list, want: list, rtol: float, atol: float) -> str | None:
    """What is wrong with ``got`` next to ``want``; None when they agree within the tolerances."""
    if len(got) != len(want):
        return f"your function returned {len(got)} value(s), expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        which = f"output {i + 1}" if len(want) > 1 else "the output"
        if not isinstance(g, torch.Tensor):
            return f"{which} is a {type(g).__name__}, not a torch.Tensor (keep to torch: no .item(), no math.*)"
        if g.shape != w.shape:
            return f"{which} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.dtype != w.dtype:
            return f"{which} has dtype {g.dtype}, expected {w.dtype} like the inputs (torch.tensor(...) without dtype?)"
        nan = g.isnan() & ~w.isnan()
        if bool(nan.any()):
            return f"{which} has nan at {int(nan.sum())} entries where the answer is a number"
        off = ~torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
        if bool(off.any()):
            k = tuple(int(j) for j in off.nonzero()[0])
            return f"{which} is {g[k].item():.6g} at index {k}, expected {w[k].item():.6g}"
    return None


def _errors(got: list, want: list, atol: float) -> tuple[float, float]:
    """Largest absolute and relative errors (the latter where |answer| > atol); inf for a wrong shape, or where only
    one side is finite."""
    if len(got) != len(want) or any(not isinstance(g, torch.Tensor) or g.shape != w.shape for g, w in zip(got, want)):
        return math.inf, math.inf
    g, w = (torch.cat([t.detach().double().flatten() for t in ts]) for ts in (got, want))
    diff = torch.where((g == w) | (g.isnan() & w.isnan()), 0.0, (g - w).abs())  # inf == inf: no error
    diff = diff.nan_to_num(nan=math.inf, posinf=math.inf)
    big = w.abs() > atol  # relative to a rounded zero, any error is large
    return max(diff.tolist(), default=0.0), max((diff[big] / w[big].abs()).tolist(), default=0.0)


def _agrees(got_all: list, fn, cases, ex: _Exercise) -> bool:
    """Does ``fn`` give the learner's outputs on every case?"""
    try:
        return all(_problem(got, _outputs(fn, args), ex.rtol, ex.atol) is None
                   for got, (_, args) in zip(got_all, cases))
    except Exception:  # a mistaken variant that fails on some case agrees with nothing
        return False


def _check(name: str, attempt, ex: _Exercise, shown=None) -> Result:
    cases, got_all = ex.cases(), []
    for label, args in cases:
        try:
            got_all.append(_outputs(attempt, args))
        except NotImplementedError:
            print(f"{name:<20} | not done yet: the function still raises NotImplementedError. A reference solution:\n")
            print("\n".join(inspect.getsource(f) for f in shown or [ex.reference]))
            return Result(name, "not attempted")
        except Exception as exc:  # the learner's bug: reported, not raised, so that the notebook goes on
            result = Result(name, "wrong", failed_case=label,
                            message=f"your function raised {type(exc).__name__}: {exc}")
            print(f"{name:<20} | WRONG | on the case '{label}', {result.message}")
            return result
    want_all = [_outputs(ex.reference, args) for _, args in cases]
    errors = [_errors(got, want, ex.atol) for got, want in zip(got_all, want_all)]
    result = Result(name, "done", max(e[0] for e in errors), max(e[1] for e in errors))
    failures = [(label, problem) for (label, _), got, want in zip(cases, got_all, want_all)
                if (problem := _problem(got, want, ex.rtol, ex.atol))]
    result.exact = not failures and result.max_abs_error == 0
    word = "exact" if result.exact else "close"
    if failures:
        result.status, word, (result.failed_case, result.message) = "wrong", "WRONG", failures[0]
        result.hint = next((hint for hint, fn in ex.mistakes if _agrees(got_all, fn, cases, ex)), None)
    print(f"{name:<20} | {word:<5} | max abs error {result.max_abs_error:.1e} | max rel error "
          f"{result.max_rel_error:.1e} | {len(cases) - len(failures)} of {len(cases)} cases right")
    if failures:
        print(f"  first failing case: {result.failed_case}: {result.message}")
    if result.hint:
        print(f"  hint: {result.hint}")
    return result


# --------------------------------------------------------------------------- the checkers
def _checker(name: str):
    def check(fn) -> Result:
        return _check(name, fn, _EXERCISES[name])
    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = f"Check the learner's ``{name}``, print a verdict, return a :class:`Result`. {_EXERCISES[name].doc}"
    return check


check_entropy, check_cross_entropy, check_kl_discrete, check_kl_bits = map(
    _checker, ["entropy", "cross_entropy", "kl_discrete", "kl_bits"])
check_kl_gaussian_1d, check_kl_gaussian, check_kl_standard_normal = map(
    _checker, ["kl_gaussian_1d", "kl_gaussian", "kl_standard_normal"])
check_mixture_elbo, check_linear_gaussian_posterior, check_elbo_estimate = map(
    _checker, ["mixture_elbo", "linear_gaussian_posterior", "elbo_estimate"])
check_reparameterize, check_sample_full, check_pathwise_gradient_x2 = map(
    _checker, ["reparameterize", "sample_full", "pathwise_gradient_x2"])
check_effective_sample_size, check_iwae_bound = map(_checker, ["effective_sample_size", "iwae_bound"])


def check_kl_identity(entropy, cross_entropy, kl_discrete) -> Result:
    """Notebook 01, section 2: do the learner's three functions (signatures as in ``check_entropy`` etc.) satisfy
    KL(p ‖ q) = H(p, q) − H(p)? Compares H(p, q) − H(p) − KL(p ‖ q) with 0 where all three are finite; if it is not
    0, the hint names the function that disagrees with its reference while the two others agree with theirs."""
    learner = {"entropy": entropy, "cross_entropy": cross_entropy, "kl_discrete": kl_discrete}
    reference = {"entropy": reference_entropy, "cross_entropy": reference_cross_entropy,
                 "kl_discrete": reference_kl_discrete}

    def gap(p, q, fns=learner):  # H(p, q) − H(p) − KL(p ‖ q): 0 when the identity holds
        return fns["cross_entropy"](p, q) - fns["entropy"](p) - fns["kl_discrete"](p, q)

    def only_wrong(name):  # the gap the learner would get if `name` were the only function off its reference
        hint = f"your {name} disagrees with the reference while the two others agree: run check_{name}({name})"
        return hint, lambda p, q: gap(p, q, {**reference, name: learner[name]})
    ex = _Exercise(check_kl_identity.__doc__, lambda p, q: torch.zeros_like(p[..., 0]),
                   lambda: _probabilities(pairs=True, infinite=False), [only_wrong(n) for n in learner], atol=1e-12)
    return _check("kl_identity", gap, ex, shown=list(reference.values()))


# --------------------------------------------------------------------------- notebook 06: the training step
def reference_training_step(model, optimizer, x, generator):
    mu, logvar = model.encode(x)                                     # q(z|x) = N(μ, diag σ²)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    z = mu + torch.exp(0.5 * logvar) * eps                           # z = μ + σ ε (notebook 04)
    log_px_z = -F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none").sum(-1)
    kl = 0.5 * (logvar.exp() - logvar - 1 + mu**2).sum(-1)           # KL(q(z|x) ‖ N(0, I)) (notebook 02)
    loss = (kl - log_px_z).mean()                                    # −ELBO, averaged over the batch
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _loss_variants(model, x, generator) -> dict[str, float]:
    """The first step's loss as the usual mistakes would compute it, on the same draw of ε."""
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        rec = lambda z: -F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none").sum(-1)  # noqa: E731
        kl = 0.5 * (logvar.exp() - logvar - 1 + mu**2).sum(-1)
        sampled = rec(mu + torch.exp(0.5 * logvar) * eps)
        return {"looks like the sign is flipped: the loss to minimize is −ELBO = KL − log p(x|z)":
                (sampled - kl).mean().item(),
                "looks like a sum over the batch where the mean belongs": (kl - sampled).sum().item(),
                "looks like the KL term is missing: −ELBO = KL − log p(x|z)": (-sampled).mean().item(),
                "looks like z = μ with no noise: draw z = μ + σ ε with ε from the generator": (kl - rec(mu)).mean().item(),
                "looks like σ = exp(logvar): logvar holds log σ², so σ = exp(½ logvar)":
                (kl - rec(mu + logvar.exp() * eps)).mean().item()}


def check_training_step(training_step) -> Result:
    """Notebook 06: the learner's ``training_step(model, optimizer, x, generator)`` takes one step of Adam on −ELBO for a
    batch ``x`` of binarized images (N, 784) and returns the loss (a 0-d tensor). ε comes from
    ``torch.randn(mu.shape, generator=generator)`` (as vaelib.reparam.reparameterize draws it). Two steps on a small
    float64 VAE are compared with :func:`reference_training_step`: the losses and the weights after each step."""
    from .models import VAE  # the exercise trains the course's model

    torch.manual_seed(0)
    start = VAE(3, hidden_sizes=(16,)).double()
    batches = [(torch.rand(8, 784, generator=torch.Generator().manual_seed(s), dtype=torch.float64) < 0.3).double()
               for s in (1, 2)]
    runs = {}
    for who, fn in (("learner", training_step), ("reference", reference_training_step)):
        model = VAE(3, hidden_sizes=(16,)).double()
        model.load_state_dict(start.state_dict())
        optimizer, generator = torch.optim.Adam(model.parameters(), lr=1e-2), torch.Generator().manual_seed(3)
        try:
            runs[who] = [(float(torch.as_tensor(fn(model, optimizer, x, generator)).detach()),
                          [p.detach().clone() for p in model.parameters()])
                         for x in batches]
        except NotImplementedError:
            print("training_step        | not done yet: the function still raises NotImplementedError. A reference "
                  "solution:\n\n" + inspect.getsource(reference_training_step))
            return Result("training_step", "not attempted")
        except Exception as exc:
            print(f"training_step        | WRONG | your function raised {type(exc).__name__}: {exc}")
            return Result("training_step", "wrong", message=f"raised {type(exc).__name__}: {exc}")
    errors = [max(abs(a[0] - b[0]), max((p - q).abs().max().item() for p, q in zip(a[1], b[1])))
              for a, b in zip(runs["learner"], runs["reference"])]
    result = Result("training_step", "done", max_abs_error=max(errors), exact=max(errors) == 0)
    if max(errors) > 1e-8:
        result.status, first = "wrong", runs["learner"][0][0]
        variants = _loss_variants(start, batches[0], torch.Generator().manual_seed(3))
        result.hint = next((h for h, v in variants.items() if abs(v - first) < 1e-8 * max(1.0, abs(v))), None)
        weights_moved = any((p - q).abs().max() > 0 for p, q in zip(runs["learner"][0][1], start.parameters()))
        if result.hint is None and errors[0] <= 1e-8:
            result.hint = "the first step is right, the second is not: call optimizer.zero_grad() before each backward"
        elif result.hint is None and abs(first - runs["reference"][0][0]) <= 1e-8:
            result.hint = ("the loss is right but the weights are not: call loss.backward() and optimizer.step()"
                           if not weights_moved else "the loss is right but the step is not: one backward, one step")
    verdict = "WRONG" if result.status == "wrong" else ("exact" if result.exact else "close")
    print(f"training_step        | {verdict:<5} | max abs error {result.max_abs_error:.1e} over the losses and weights "
          "of two steps" + (f"\n  hint: {result.hint}" if result.hint else ""))
    return result
