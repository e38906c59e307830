"""Tests of vaelib.reparam: reparameterized sampling and gradient estimators (notebook 04)."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelib.errors import (
    NonFiniteError,
    NotLowerTriangularError,
    ShapeError,
)
from vaelib.reparam import (
    pathwise_gradient,
    reparameterize,
    reparameterize_full,
    score_function_gradient,
    score_function_gradient_bernoulli,
    score_function_gradient_categorical,
)

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

F64 = torch.float64
Z = 4.5  # tolerance in standard errors for Monte Carlo comparisons (all runs are seeded)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mean_and_se(x):
    """Sample mean over the first axis and its standard error."""
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


# --------------------------------------------------------------------------- #
# reparameterize
# --------------------------------------------------------------------------- #
def test_reparameterize_shapes_dtypes_and_determinism():
    mu = torch.zeros(2, 3)
    logvar = torch.zeros(2, 3)
    assert reparameterize(mu, logvar).shape == (2, 3)
    z = reparameterize(mu, logvar, n_samples=5, generator=gen(0))
    assert z.shape == (5, 2, 3) and z.dtype == torch.float32
    assert torch.equal(z, reparameterize(mu, logvar, n_samples=5, generator=gen(0)))
    assert not torch.equal(z, reparameterize(mu, logvar, n_samples=5, generator=gen(1)))
    assert reparameterize(mu.double(), logvar.double(), 1).dtype == F64
    assert reparameterize(torch.tensor(1.0), torch.tensor(0.0), n_samples=4).shape == (4,)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_reparameterize_moments(seed, d):
    rng = np.random.default_rng(seed)
    mu = torch.tensor(rng.standard_normal(d) * 3, dtype=F64)
    logvar = torch.tensor(rng.uniform(-4, 4, d), dtype=F64)
    n = 20_000
    z = reparameterize(mu, logvar, n_samples=n, generator=gen(seed))
    var = logvar.exp()
    # mean: standard error sigma / sqrt(n); variance: standard error var * sqrt(2 / (n - 1))
    assert (torch.abs(z.mean(0) - mu) < Z * torch.sqrt(var / n)).all()
    assert (torch.abs(z.var(0) - var) < Z * var * math.sqrt(2 / (n - 1))).all()
    # standardised samples are uncorrelated across coordinates
    if d > 1:
        eps = (z - mu) / var.sqrt()
        corr = torch.corrcoef(eps.T)
        off = corr - torch.diag(torch.diag(corr))
        assert off.abs().max() < Z / math.sqrt(n)


def test_reparameterize_gradients_match_analytic():
    g = gen(3)
    mu = torch.randn(2, 3, dtype=F64, generator=g, requires_grad=True)
    logvar = torch.randn(2, 3, dtype=F64, generator=g, requires_grad=True)
    z = reparameterize(mu, logvar, n_samples=7, generator=g)
    w = torch.randn(7, 2, 3, dtype=F64, generator=g)
    (w * z).sum().backward()
    sigma = torch.exp(0.5 * logvar.detach())
    eps = (z.detach() - mu.detach()) / sigma
    torch.testing.assert_close(mu.grad, w.sum(0))  # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, (w * 0.5 * sigma * eps).sum(0))  # dz/dlogvar = sigma eps / 2
    fixed = lambda m, lv: reparameterize(m, lv, n_samples=3, generator=gen(4))  # noqa: E731
    assert torch.autograd.gradcheck(fixed, (mu.detach().requires_grad_(), logvar.detach().requires_grad_()))


def test_reparameterize_bad_input():
    with pytest.raises(ShapeError, match=r"mu and logvar must have the same shape.*\(2, 3\).*\(3,\)"):
        reparameterize(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(NonFiniteError, match="logvar must be finite"):
        reparameterize(torch.zeros(2), torch.tensor([0.0, math.nan]))
    with pytest.raises(NonFiniteError, match="mu must be finite"):
        reparameterize(torch.tensor([math.inf]), torch.zeros(1))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        reparameterize(torch.zeros(2), torch.zeros(2), n_samples=0)
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        reparameterize(torch.zeros(2), torch.zeros(2), n_samples=2.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        reparameterize(torch.zeros(2), torch.zeros(2), generator=0)
    with pytest.raises(TypeError, match="floating-point"):
        reparameterize(torch.zeros(2, dtype=torch.long), torch.zeros(2))


# --------------------------------------------------------------------------- #
# reparameterize_full
# --------------------------------------------------------------------------- #
def random_tril(rng, d):
    a = np.tril(rng.standard_normal((d, d)), -1)
    return torch.tensor(a + np.diag(np.exp(rng.uniform(-1, 1, d))), dtype=F64)


@pytest.mark.parametrize("d, seed", [(1, 0), (2, 1), (3, 2), (5, 3)])
def test_reparameterize_full_moments(d, seed):
    rng = np.random.default_rng(seed)
    mu = torch.tensor(rng.standard_normal(d), dtype=F64)
    L = random_tril(rng, d)
    cov = L @ L.T
    n = 100_000
    z = reparameterize_full(mu, L, n_samples=n, generator=gen(seed))
    assert z.shape == (n, d)
    var = torch.diag(cov)
    assert (torch.abs(z.mean(0) - mu) < Z * torch.sqrt(var / n)).all()
    # standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = torch.sqrt((torch.outer(var, var) + cov**2) / n)
    sample_cov = torch.cov(z.T).reshape(d, d)
    assert (torch.abs(sample_cov - cov) < Z * se_cov).all()


def test_reparameterize_full_shapes_and_broadcasting():
    rng = np.random.default_rng(5)
    d = 3
    mu = torch.tensor(rng.standard_normal((2, 1, d)), dtype=F64)
    L = torch.stack([random_tril(rng, d) for _ in range(4)])  # (4, d, d)
    assert reparameterize_full(mu, L).shape == (2, 4, d)
    z = reparameterize_full(mu, L, n_samples=6, generator=gen(0))
    assert z.shape == (6, 2, 4, d)
    eps = torch.linalg.solve_triangular(L, (z - mu).unsqueeze(-1), upper=False).squeeze(-1)
    torch.testing.assert_close(mu + (L @ eps.unsqueeze(-1)).squeeze(-1), z)
    assert torch.equal(z, reparameterize_full(mu, L, n_samples=6, generator=gen(0)))
    assert reparameterize_full(torch.zeros(d), torch.eye(d)).dtype == torch.float32


def test_reparameterize_full_gradients():
    rng = np.random.default_rng(6)
    d = 3
    mu = torch.tensor(rng.standard_normal((2, d)), dtype=F64, requires_grad=True)
    L = random_tril(rng, d).requires_grad_(True)

    def fixed(m, a):  # same noise at every call; tril keeps L lower triangular under perturbation
        return reparameterize_full(m, torch.tril(a), n_samples=4, generator=gen(8))

    assert torch.autograd.gradcheck(fixed, (mu, L))
    z = fixed(mu, L)
    w = torch.tensor(rng.standard_normal(z.shape), dtype=F64)
    (w * z).sum().backward()
    eps = torch.linalg.solve_triangular(L.detach(), (z.detach() - mu.detach()).unsqueeze(-1),
                                        upper=False).squeeze(-1)
    torch.testing.assert_close(mu.grad, w.sum(0))  # dz/dmu = I
    # dz_i / dL_ij = eps_j  =>  grad L = sum over samples and batch of w eps^T (lower part)
    expected = torch.tril(torch.einsum("nbi,nbj->ij", w, eps))
    torch.testing.assert_close(L.grad, expected)


def test_reparameterize_full_bad_input():
    mu = torch.zeros(2, dtype=F64)
    with pytest.raises(NotLowerTriangularError, match="scale_tril must be lower triangular"):
        reparameterize_full(mu, torch.tensor([[1.0, 0.3], [0.0, 1.0]], dtype=F64))
    with pytest.raises(NotLowerTriangularError, match="strictly positive diagonal"):
        reparameterize_full(mu, torch.tensor([[1.0, 0.0], [0.3, -1.0]], dtype=F64))
    with pytest.raises(NotLowerTriangularError, match="strictly positive diagonal"):
        reparameterize_full(mu, torch.tensor([[0.0, 0.0], [0.3, 1.0]], dtype=F64))
    wrong_d = r"scale_tril .* must have shape \(\.\.\., 2, 2\), got shape \(3, 3\)"
    with pytest.raises(ShapeError, match=wrong_d):
        reparameterize_full(mu, torch.eye(3, dtype=F64))
    with pytest.raises(ShapeError, match="do not broadcast"):
        reparameterize_full(torch.zeros(3, 2), torch.eye(2).expand(4, 2, 2))
    with pytest.raises(NonFiniteError, match="scale_tril must be finite"):
        reparameterize_full(mu, torch.tensor([[1.0, 0.0], [math.nan, 1.0]], dtype=F64))
    with pytest.raises(NonFiniteError, match="mu must be finite"):
        reparameterize_full(torch.tensor([math.nan, 0.0]), torch.eye(2))


# --------------------------------------------------------------------------- #
# Gradient estimators for a Gaussian family
# --------------------------------------------------------------------------- #
def _sum_event(x):
    return x.sum(dim=tuple(range(1, x.dim())))


# Each problem: f, and the analytic gradients of E_{z ~ N(mu, sigma^2)}[f(z)] with respect to
# mu and log sigma, for f summed over independent coordinates.
PROBLEMS = {
    # E[z^2] = mu^2 + sigma^2  (the course's x = theta + eps example: grad = 2 theta)
    "square": (
        lambda z: _sum_event(z**2),
        lambda mu, s: 2 * mu,
        lambda mu, s: 2 * s**2,
    ),
    # E[sin z] = sin(mu) exp(-sigma^2 / 2)
    "sine": (
        lambda z: _sum_event(torch.sin(z)),
        lambda mu, s: torch.cos(mu) * torch.exp(-(s**2) / 2),
        lambda mu, s: -(s**2) * torch.sin(mu) * torch.exp(-(s**2) / 2),
    ),
    # E[exp(z / 2)] = exp(mu / 2 + sigma^2 / 8)
    "exponential": (
        lambda z: _sum_event(torch.exp(0.5 * z)),
        lambda mu, s: 0.5 * torch.exp(mu / 2 + s**2 / 8),
        lambda mu, s: 0.25 * s**2 * torch.exp(mu / 2 + s**2 / 8),
    ),
    # E[(z - 1)^4] = (mu - 1)^4 + 6 (mu - 1)^2 sigma^2 + 3 sigma^4
    "quartic": (
        lambda z: _sum_event((z - 1) ** 4),
        lambda mu, s: 4 * (mu - 1) ** 3 + 12 * (mu - 1) * s**2,
        lambda mu, s: 12 * (mu - 1) ** 2 * s**2 + 12 * s**4,
    ),
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("baseline", [None, "mean"])
def test_gaussian_estimators_are_unbiased_and_pathwise_has_lower_variance(name, baseline):
    f, d_mu, d_log_sigma = PROBLEMS[name]
    mu = torch.tensor([[1.5, -0.7, 0.2], [0.0, 2.0, -1.2]], dtype=F64)
    log_sigma = torch.tensor([[-0.5, 0.0, 0.3], [-1.0, -0.2, 0.1]], dtype=F64)
    s = log_sigma.exp()
    n = 40_000
    expected = (d_mu(mu, s), d_log_sigma(mu, s))
    pw = pathwise_gradient(f, mu, log_sigma, n, generator=gen(10))
    sf = score_function_gradient(f, mu, log_sigma, n, generator=gen(11), baseline=baseline)
    for per_sample in (*pw, *sf):
        assert per_sample.shape == (n, *mu.shape) and per_sample.dtype == F64
    for (g_pw, g_sf, exact) in zip(pw, sf, expected):
        for g in (g_pw, g_sf):
            mean, se = mean_and_se(g)
            assert (torch.abs(mean - exact) < Z * se + 1e-12).all(), (name, mean, exact, se)
        # the pathwise estimator is far less noisy on these smooth problems
        assert (g_pw.var(0) < g_sf.var(0)).all()


def test_pathwise_per_sample_values_follow_the_chain_rule():
    # f(z) = z^2: per sample, grad_mu = 2 z and grad_log_sigma = 2 z * sigma * eps = grad_mu * (z - mu)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    log_sigma = torch.tensor([0.0, -1.0, 0.5], dtype=F64)
    g_mu, g_ls = pathwise_gradient(PROBLEMS["square"][0], mu, log_sigma, 1000, generator=gen(1))
    z = g_mu / 2
    torch.testing.assert_close(g_ls, g_mu * (z - mu))
    eps = (z - mu) / log_sigma.exp()
    assert abs(eps.mean().item()) < Z / math.sqrt(eps.numel())
    # inputs that require grad are left untouched (no graph kept, no .grad populated)
    mu_req = mu.clone().requires_grad_(True)
    out = pathwise_gradient(PROBLEMS["square"][0], mu_req, log_sigma, 10, generator=gen(1))
    assert mu_req.grad is None and not out[0].requires_grad


def test_score_function_baseline_reduces_variance():
    f = PROBLEMS["square"][0]
    mu = torch.tensor([3.0, -2.0], dtype=F64)
    log_sigma = torch.zeros(2, dtype=F64)
    plain = score_function_gradient(f, mu, log_sigma, 20_000, generator=gen(2))
    with_mean = score_function_gradient(f, mu, log_sigma, 20_000, generator=gen(2), baseline="mean")
    constant = score_function_gradient(f, mu, log_sigma, 20_000, generator=gen(2), baseline=14.0)
    for est in (with_mean, constant):
        for g_plain, g_b in zip(plain, est):
            assert (g_b.var(0) < 0.5 * g_plain.var(0)).all()


def test_leave_one_out_baseline_subtracts_the_mean_of_the_other_samples():
    # With baseline="mean", sample i is weighted by f(z_i) - (sum_{j != i} f(z_j)) / (n - 1): the
    # baseline of a sample must not use that sample (else the estimate is biased, e.g. halved
    # for n = 2) and must average the n - 1 others. Rebuild it from the samples f was given.
    f = PROBLEMS["quartic"][0]
    mu = torch.tensor([0.4, -1.1], dtype=F64)
    log_sigma = torch.tensor([0.2, -0.3], dtype=F64)
    sigma = log_sigma.exp()
    for n in (2, 5):
        seen = []

        def recording_f(z, seen=seen):
            seen.append(z.clone())
            return f(z)

        g_mu, g_ls = score_function_gradient(
            recording_f, mu, log_sigma, n, generator=gen(5), baseline="mean"
        )
        z = seen[0]
        values = f(z)
        others = torch.stack([torch.cat([values[:i], values[i + 1 :]]).mean() for i in range(n)])
        w = (values - others).unsqueeze(-1)
        eps = (z - mu) / sigma
        torch.testing.assert_close(g_mu, w * eps / sigma)
        torch.testing.assert_close(g_ls, w * (eps**2 - 1))


def test_score_function_handles_non_differentiable_f():
    # f(z) = 1[z > 0]: E = Phi(mu / sigma), d/dmu = phi(mu / sigma) / sigma
    f = lambda z: _sum_event((z > 0).to(z.dtype))  # noqa: E731
    mu = torch.tensor([0.3, -0.5], dtype=F64)
    log_sigma = torch.tensor([0.0, math.log(0.5)], dtype=F64)
    s = log_sigma.exp()
    x = mu / s
    phi = torch.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)
    g_mu, g_ls = score_function_gradient(f, mu, log_sigma, 50_000, generator=gen(3), baseline="mean")
    for g, exact in ((g_mu, phi / s), (g_ls, -phi * x)):
        mean, se = mean_and_se(g)
        assert (torch.abs(mean - exact) < Z * se).all()
    with pytest.raises(ValueError, match="does not depend differentiably"):
        pathwise_gradient(f, mu, log_sigma, 10)


def test_gaussian_estimators_bad_input():
    f = PROBLEMS["square"][0]
    with pytest.raises(ShapeError, match=r"mu and log_sigma must have the same shape"):
        pathwise_gradient(f, torch.zeros(2), torch.zeros(3), 10)
    with pytest.raises(ShapeError, match=r"values of shape \(10,\).*returned shape \(10, 2\)"):
        score_function_gradient(lambda z: z, torch.zeros(2), torch.zeros(2), 10)
    with pytest.raises(ShapeError, match="one per sample"):
        pathwise_gradient(lambda z: (z**2).sum(), torch.zeros(2), torch.zeros(2), 10)
    with pytest.raises(NonFiniteError, match=r"f\(z\) must be finite"):
        score_function_gradient(lambda z: _sum_event(torch.log(z)), torch.zeros(2), torch.zeros(2), 50)
    with pytest.raises(NonFiniteError, match="log_sigma must be finite"):
        score_function_gradient(f, torch.zeros(2), torch.tensor([0.0, math.inf]), 10)
    with pytest.raises(ValueError, match="baseline must be None, a number or 'mean'"):
        score_function_gradient(f, torch.zeros(2), torch.zeros(2), 10, baseline="median")
    with pytest.raises(ShapeError, match="baseline must be a scalar"):
        score_function_gradient(f, torch.zeros(2), torch.zeros(2), 10, baseline=torch.zeros(10))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        pathwise_gradient(f, torch.zeros(2), torch.zeros(2), 0)


# --------------------------------------------------------------------------- #
# Score function for discrete latent variables
# --------------------------------------------------------------------------- #
def _exact_bernoulli_gradient(f, logits):
    """Gradient of E[f(z)] w.r.t. the logits, by enumerating all 2^k outcomes."""
    logits = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(logits)
    k = logits.numel()
    outcomes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=logits.dtype)
    outcomes = outcomes.reshape(-1, *logits.shape)
    probs = torch.prod((outcomes * p + (1 - outcomes) * (1 - p)).reshape(len(outcomes), -1), dim=1)
    expectation = (probs * f(outcomes)).sum()
    (grad,) = torch.autograd.grad(expectation, logits)
    return grad


BERNOULLI_FUNCTIONS = {
    "weighted_square": lambda z: (_sum_event(z * torch.tensor([1.0, 2.0, -3.0], dtype=z.dtype)) - 1) ** 2,
    "product": lambda z: 5 * z[:, 0] * z[:, 2] - z[:, 1] + 2.0,
    "parity": lambda z: torch.remainder(_sum_event(z), 2.0) * 4.0,
}


@pytest.mark.parametrize("name", sorted(BERNOULLI_FUNCTIONS))
@pytest.mark.parametrize("baseline", [None, "mean"])
def test_bernoulli_score_function_matches_enumeration(name, baseline):
    f = BERNOULLI_FUNCTIONS[name]
    logits = torch.tensor([0.4, -1.2, 2.0], dtype=F64)
    exact = _exact_bernoulli_gradient(f, logits)
    g = score_function_gradient_bernoulli(f, logits, 50_000, generator=gen(20), baseline=baseline)
    assert g.shape == (50_000, 3)
    mean, se = mean_and_se(g)
    assert (torch.abs(mean - exact) < Z * se + 1e-12).all(), (mean, exact, se)


def test_bernoulli_samples_have_the_right_frequencies():
    logits = torch.tensor([[-2.0, 0.0], [1.0, 3.0]], dtype=F64)
    seen = []
    g = score_function_gradient_bernoulli(
        lambda z: seen.append(z.clone()) or torch.ones(z.shape[0], dtype=z.dtype),
        logits, 20_000, generator=gen(4),
    )
    z = seen[0]
    assert z.shape == (20_000, 2, 2) and set(z.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(logits)
    assert (torch.abs(z.mean(0) - p) < Z * torch.sqrt(p * (1 - p) / 20_000)).all()
    torch.testing.assert_close(g, z - p)  # f = 1, no baseline: the score itself


def test_categorical_score_function_matches_enumeration():
    logits = torch.tensor([[0.5, -1.0, 0.0, 1.5], [0.0, 0.3, -0.7, 0.2]], dtype=F64)
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    b = torch.tensor([2.0, 0.0, -1.0, 1.0], dtype=F64)

    def f(z):  # z: one-hot samples (n, 2, 4)
        return (z[:, 0] @ a) * (z[:, 1] @ b) + (z[:, 1] @ a) ** 2

    lg = logits.clone().requires_grad_(True)
    probs = torch.softmax(lg, -1)
    eye = torch.eye(4, dtype=F64)
    expectation = sum(
        probs[0, i] * probs[1, j] * f(torch.stack([eye[i], eye[j]]).unsqueeze(0))[0]
        for i in range(4) for j in range(4)
    )
    (exact,) = torch.autograd.grad(expectation, lg)
    for baseline in (None, "mean"):
        g = score_function_gradient_categorical(f, logits, 60_000, generator=gen(30), baseline=baseline)
        assert g.shape == (60_000, 2, 4)
        mean, se = mean_and_se(g)
        assert (torch.abs(mean - exact) < Z * se + 1e-12).all(), (mean, exact, se)
        # each sample's score sums to zero over the classes
        torch.testing.assert_close(g.sum(-1), torch.zeros(60_000, 2, dtype=F64), atol=1e-12, rtol=0)


def test_discrete_estimators_bad_input():
    f = lambda z: _sum_event(z)  # noqa: E731
    with pytest.raises(NonFiniteError, match="logits must be finite"):
        score_function_gradient_bernoulli(f, torch.tensor([0.0, math.nan]), 10)
    with pytest.raises(ShapeError, match="one per sample"):
        score_function_gradient_bernoulli(lambda z: z, torch.zeros(3), 10)
    with pytest.raises(ShapeError, match="empty class axis"):
        score_function_gradient_categorical(f, torch.zeros(2, 0), 10)
    with pytest.raises(ShapeError, match="at least 1 dimension"):
        score_function_gradient_categorical(f, torch.tensor(0.0), 10)


# --------------------------------------------------------------------------- #
# Inputs found by the input audit
# --------------------------------------------------------------------------- #
def test_score_function_refuses_a_sigma_that_underflows_to_zero():
    """exp(-200) is 0 in float32: the score eps / sigma would be inf or, where f(z) = 0, nan."""
    with pytest.raises(NonFiniteError, match="underflows"):
        score_function_gradient(lambda z: z.square().sum(-1), torch.zeros(3), torch.full((3,), -200.0), 4)
    # float64 represents exp(-200): the same call is fine there
    g_mu, g_ls = score_function_gradient(
        lambda z: z.square().sum(-1), torch.zeros(3, dtype=torch.float64), torch.full((3,), -200.0, dtype=torch.float64), 4
    )
    assert torch.isfinite(g_mu).all() and torch.isfinite(g_ls).all()


# ---------------------------------------------------------------- found by mutation testing
def test_shapes_with_the_same_number_of_entries_must_still_match():
    """(2, 3) and (3, 2) hold six entries each, but are not the same shape: refused with a ShapeError."""
    with pytest.raises(ShapeError, match=r"mu and logvar must have the same shape.*\(2, 3\).*\(3, 2\)"):
        reparameterize(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ShapeError, match=r"mu and logvar must have the same shape.*\(6,\).*\(1, 6\)"):
        reparameterize(torch.zeros(6), torch.zeros(1, 6))
