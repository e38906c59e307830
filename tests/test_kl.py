"""Tests of vaelib.kl against independent references (scipy, torch.distributions, quadrature, Monte Carlo)."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.special
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Categorical,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vaelib.errors import (
    NonFiniteError,
    NotLowerTriangularError,
    NotPositiveDefiniteError,
    ProbabilityError,
    ShapeError,
    VaelibInputError,
)
from vaelib.kl import (
    cross_entropy,
    entropy,
    kl_diag_gaussians,
    kl_discrete,
    kl_gaussian,
    kl_gaussian_tril,
    kl_monte_carlo,
    kl_monte_carlo_from_samples,
    kl_standard_normal,
    nats_to_bits,
)

# Deterministic, modest hypothesis settings (applied per test: no global profile is loaded).
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FEW = settings(SETTINGS, max_examples=25)

F64 = torch.float64
EPS64 = float(np.finfo(np.float64).eps)


def t64(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# --------------------------------------------------------------------------- #
# Strategies and helpers
# --------------------------------------------------------------------------- #
def weights(k, allow_zeros=True):
    entry = st.floats(1e-6, 1.0)
    if allow_zeros:
        entry = st.one_of(st.just(0.0), entry)
    return st.lists(entry, min_size=k, max_size=k).filter(lambda w: sum(w) > 0)


def normalise(w):
    w = np.asarray(w, dtype=np.float64)
    return w / w.sum()


prob_vector = st.integers(1, 20).flatmap(weights).map(normalise)
positive_prob_vector = st.integers(1, 20).flatmap(lambda k: weights(k, False)).map(normalise)
prob_pair = st.integers(1, 20).flatmap(lambda k: st.tuples(weights(k), weights(k))).map(
    lambda ab: (normalise(ab[0]), normalise(ab[1]))
)
positive_pair = st.integers(1, 20).flatmap(
    lambda k: st.tuples(weights(k), weights(k, False))
).map(lambda ab: (normalise(ab[0]), normalise(ab[1])))


def random_spd(rng, d, log10_cond):
    """Random SPD matrix: random rotation, log-spaced eigenvalues spanning 10**log10_cond."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    eig = 10 ** rng.uniform(-1, 1) * np.logspace(0, -log10_cond, d)
    cov = (q * eig) @ q.T
    return (cov + cov.T) / 2


def kl_gaussian_scipy(mu_p, cov_p, mu_q, cov_q):
    """Closed-form Gaussian KL computed with scipy.linalg on numpy arrays (Cholesky solves)."""
    d = len(mu_p)
    cq = scipy.linalg.cho_factor(cov_q, lower=True)
    Lp = scipy.linalg.cholesky(cov_p, lower=True)
    log_det_q = 2 * np.log(np.diag(cq[0])).sum()
    log_det_p = 2 * np.log(np.diag(Lp)).sum()
    trace = np.trace(scipy.linalg.cho_solve(cq, cov_p))
    diff = mu_p - mu_q
    maha = diff @ scipy.linalg.cho_solve(cq, diff)
    return 0.5 * (log_det_q - log_det_p - d + trace + maha)


def torch_mvn_kl(mu_p, cov_p, mu_q, cov_q):
    return kl_divergence(
        MultivariateNormal(mu_p, covariance_matrix=cov_p),
        MultivariateNormal(mu_q, covariance_matrix=cov_q),
    )


gaussian_case = st.tuples(
    st.integers(1, 50),  # d
    st.integers(0, 2**32 - 1),  # seed
    st.floats(0.0, 8.0),  # log10 condition number of cov_p
    st.floats(0.0, 8.0),  # log10 condition number of cov_q
)


def build_gaussians(case):
    d, seed, cp, cq = case
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(d),
        random_spd(rng, d, cp),
        rng.standard_normal(d),
        random_spd(rng, d, cq),
    )


# --------------------------------------------------------------------------- #
# Discrete: entropy, cross-entropy, KL (notebook 01)
# --------------------------------------------------------------------------- #
@SETTINGS
@given(prob_vector)
def test_entropy_matches_scipy(p):
    got = entropy(t64(p)).item()
    assert got == pytest.approx(scipy.stats.entropy(p), rel=1e-12, abs=1e-14)
    assert got == pytest.approx(scipy.special.entr(p).sum(), rel=1e-12, abs=1e-14)
    assert 0.0 <= got <= math.log(len(p)) + 1e-12


@SETTINGS
@given(prob_pair)
def test_kl_discrete_matches_scipy(pq):
    p, q = pq
    got = kl_discrete(t64(p), t64(q)).item()
    ref = scipy.stats.entropy(p, q)
    if math.isinf(ref):
        assert got == math.inf
    else:
        assert got == pytest.approx(ref, rel=1e-10, abs=1e-13)


@SETTINGS
@given(prob_pair)
def test_cross_entropy_matches_scipy_xlogy(pq):
    p, q = pq
    got = cross_entropy(t64(p), t64(q)).item()
    ref = -scipy.special.xlogy(p, q).sum()
    if math.isinf(ref):
        assert got == math.inf
    else:
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-14)


@SETTINGS
@given(positive_pair)
def test_kl_discrete_matches_torch_categorical(pq):
    p, q = pq
    ref = kl_divergence(Categorical(probs=t64(p)), Categorical(probs=t64(q))).item()
    assert kl_discrete(t64(p), t64(q)).item() == pytest.approx(ref, rel=1e-10, abs=1e-13)


@SETTINGS
@given(positive_pair)
def test_kl_is_cross_entropy_minus_entropy(pq):
    p, q = (t64(x) for x in pq)
    kl = kl_discrete(p, q)
    torch.testing.assert_close(kl, cross_entropy(p, q) - entropy(p), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(prob_pair)
def test_kl_non_negative_and_zero_on_itself(pq):
    p, q = (t64(x) for x in pq)
    assert kl_discrete(p, q).item() >= 0.0
    assert kl_discrete(p, p).item() == 0.0
    assert cross_entropy(p, p).item() == pytest.approx(entropy(p).item(), abs=1e-14)


def test_worked_example_numbers():
    p = t64([0.5, 0.5])
    q = t64([0.1, 0.9])
    forward = 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)
    reverse = 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5)
    assert kl_discrete(p, q).item() == pytest.approx(forward, abs=1e-12)
    assert kl_discrete(q, p).item() == pytest.approx(reverse, abs=1e-12)
    assert round(kl_discrete(p, q).item(), 4) == 0.5108
    assert round(kl_discrete(q, p).item(), 4) == 0.3681
    assert entropy(p).item() == pytest.approx(math.log(2), abs=1e-15)


def test_bits_conversion():
    uniform8 = torch.full((8,), 1 / 8, dtype=F64)
    assert nats_to_bits(entropy(uniform8)).item() == pytest.approx(3.0, abs=1e-14)
    assert nats_to_bits(torch.tensor(math.log(2))).item() == pytest.approx(1.0)


def test_zero_probability_conventions():
    p = t64([0.0, 1.0])
    half = t64([0.5, 0.5])
    assert entropy(p).item() == 0.0
    assert kl_discrete(p, half).item() == pytest.approx(math.log(2), abs=1e-15)
    # q = 0 where p > 0: infinite divergence and cross-entropy
    assert kl_discrete(half, p).item() == math.inf
    assert cross_entropy(half, p).item() == math.inf
    # zeros of p in the same place as zeros of q are harmless
    assert kl_discrete(t64([0.0, 0.3, 0.7]), t64([0.0, 0.5, 0.5])).item() == pytest.approx(
        0.3 * math.log(0.6) + 0.7 * math.log(1.4), abs=1e-15
    )


def test_gradients_are_finite_where_p_is_zero():
    p = t64([0.0, 0.25, 0.75]).requires_grad_(True)
    q = t64([0.2, 0.3, 0.5]).requires_grad_(True)
    (entropy(p) + kl_discrete(p, q) + cross_entropy(p, q)).backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    # d KL / d q_k = -p_k / q_k
    q2 = q.detach().clone().requires_grad_(True)
    kl_discrete(p.detach(), q2).backward()
    torch.testing.assert_close(q2.grad, -p.detach() / q.detach())


def test_gradcheck_discrete_through_softmax():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, dtype=F64, generator=gen, requires_grad=True)
    b = torch.randn(3, 5, dtype=F64, generator=gen, requires_grad=True)
    sm = lambda x: torch.softmax(x, dim=-1)  # noqa: E731
    assert torch.autograd.gradcheck(lambda x, y: kl_discrete(sm(x), sm(y)), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: cross_entropy(sm(x), sm(y)), (a, b))
    assert torch.autograd.gradcheck(lambda x: entropy(sm(x)), (a,))


def test_discrete_gradient_survives_the_clamp_near_p_equals_q():
    # Within rounding of q = p the computed sum can come out slightly negative; the value is
    # returned as 0, but the gradient must be the true one. Through the softmax it is q - p
    # (about 1e-10 here); clamping the whole expression would make it exactly 0, and an
    # optimizer (notebook 01, section 3) would stop there.
    gen = torch.Generator().manual_seed(3)
    clamped = 0
    for _ in range(20):
        p = torch.softmax(torch.randn(6, dtype=F64, generator=gen), dim=-1)
        theta = (torch.log(p) + 1e-9 * torch.randn(6, dtype=F64, generator=gen)).requires_grad_(True)
        q = torch.softmax(theta, dim=-1)
        value = kl_discrete(p, q)
        (grad,) = torch.autograd.grad(value, theta)
        assert 0.0 <= value.item() < 1e-15
        clamped += value.item() == 0.0
        expected = (q - p).detach()
        assert expected.abs().max() > 1e-11                      # a gradient far above rounding ...
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)  # ... and autograd returns it
        # the same with p and q as leaves: d/dq_k = -p_k / q_k, d/dp_k = log(p_k / q_k) + 1
        pl, ql = p.clone().requires_grad_(True), q.detach().clone().requires_grad_(True)
        gp, gq = torch.autograd.grad(kl_discrete(pl, ql), (pl, ql))
        torch.testing.assert_close(gq, -p / q.detach(), rtol=1e-14, atol=0)
        torch.testing.assert_close(gp, torch.log(p / q.detach()) + 1, rtol=0, atol=1e-14)
    assert clamped >= 5  # several of the cases are in the clamped regime (the sum rounds to <= 0)


def test_batches_and_broadcasting():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(6), size=(4, 3))
    Q = rng.dirichlet(np.ones(6), size=3)
    got = kl_discrete(t64(P), t64(Q))  # (4, 3, 6) against (3, 6)
    assert got.shape == (4, 3)
    ref = np.array([[scipy.stats.entropy(P[i, j], Q[j]) for j in range(3)] for i in range(4)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    assert entropy(t64(P)).shape == (4, 3)
    assert cross_entropy(t64(P), t64(Q[0])).shape == (4, 3)


def test_float32_softmax_output_accepted():
    x = torch.randn(10, 7, generator=torch.Generator().manual_seed(3))
    p, q = torch.softmax(x, -1), torch.softmax(x.flip(0), -1)
    got = kl_discrete(p, q)
    assert got.dtype == torch.float32
    ref = kl_discrete(p.double() / p.double().sum(-1, keepdim=True),
                      q.double() / q.double().sum(-1, keepdim=True))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "p, exc, match",
    [
        ([-0.1, 1.1], ProbabilityError, "p has negative probabilities"),
        ([0.3, 0.3], ProbabilityError, "p must sum to one along the last axis"),
        ([0.5, 0.5 + 1e-6], ProbabilityError, "sum to one"),
        ([math.nan, 1.0], NonFiniteError, "p must be finite"),
        ([math.inf, 0.0], NonFiniteError, "p must be finite"),
    ],
)
def test_bad_probabilities_raise(p, exc, match):
    ok = t64([0.5, 0.5])
    with pytest.raises(exc, match=match):
        entropy(t64(p))
    with pytest.raises(exc, match=match):
        kl_discrete(t64(p), ok)
    with pytest.raises(exc, match=match.replace("p ", "q ").replace("p must", "q must")):
        kl_discrete(ok, t64(p))
    with pytest.raises(VaelibInputError):
        cross_entropy(t64(p), ok)


def test_bad_discrete_shapes_raise():
    with pytest.raises(ShapeError, match=r"same number of outcomes.*\(3,\).*\(2,\)"):
        kl_discrete(t64([0.2, 0.3, 0.5]), t64([0.5, 0.5]))
    with pytest.raises(ShapeError, match="do not broadcast"):
        kl_discrete(torch.full((2, 2), 0.5, dtype=F64), torch.full((3, 2), 0.5, dtype=F64))
    with pytest.raises(ShapeError, match="at least 1 dimension"):
        entropy(torch.tensor(1.0, dtype=F64))
    with pytest.raises(ShapeError, match="empty last axis"):
        entropy(torch.zeros(3, 0, dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        entropy([0.5, 0.5])
    with pytest.raises(ProbabilityError, match=r"batch index \(1,\)"):
        entropy(t64([[0.5, 0.5], [0.5, 0.6]]))


# --------------------------------------------------------------------------- #
# Gaussians (notebook 02)
# --------------------------------------------------------------------------- #
@SETTINGS
@given(gaussian_case)
def test_kl_gaussian_matches_torch_distributions(case):
    mu_p, cov_p, mu_q, cov_q = (t64(x) for x in build_gaussians(case))
    got = kl_gaussian(mu_p, cov_p, mu_q, cov_q)
    ref = torch_mvn_kl(mu_p, cov_p, mu_q, cov_q)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(gaussian_case)
def test_kl_gaussian_matches_scipy_closed_form(case):
    arrays = build_gaussians(case)
    got = kl_gaussian(*(t64(x) for x in arrays)).item()
    ref = kl_gaussian_scipy(*arrays)
    # The divergence itself is ill-conditioned in cov_q: rounding of the inputs moves it
    # by about eps * cond(cov_q) relatively, so the two implementations agree to that.
    cond_q = np.linalg.cond(arrays[3])
    assert got == pytest.approx(ref, rel=1e-10 + 10 * EPS64 * cond_q, abs=1e-12)


@FEW
@given(
    st.floats(-5, 5), st.floats(-1, 1), st.floats(-5, 5), st.floats(-1, 1)
)
def test_kl_gaussian_1d_matches_quadrature(m_p, log10_s_p, m_q, log10_s_q):
    s_p, s_q = 10.0**log10_s_p, 10.0**log10_s_q

    def integrand(x):
        lp = scipy.stats.norm.logpdf(x, m_p, s_p)
        return math.exp(lp) * (lp - scipy.stats.norm.logpdf(x, m_q, s_q))

    ref, err = scipy.integrate.quad(
        integrand, m_p - 40 * s_p, m_p + 40 * s_p, points=[m_p], epsabs=1e-13, epsrel=1e-12,
        limit=200,
    )
    got = kl_gaussian(t64([m_p]), t64([[s_p**2]]), t64([m_q]), t64([[s_q**2]])).item()
    assert got == pytest.approx(ref, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("d, seed", [(1, 0), (2, 1), (5, 2), (10, 3)])
def test_kl_gaussian_matches_monte_carlo(d, seed):
    rng = np.random.default_rng(seed)
    mu_p, cov_p, mu_q, cov_q = (t64(x) for x in (
        rng.standard_normal(d), random_spd(rng, d, 1.0), rng.standard_normal(d), random_spd(rng, d, 1.0)
    ))
    exact = kl_gaussian(mu_p, cov_p, mu_q, cov_q).item()
    p = MultivariateNormal(mu_p, covariance_matrix=cov_p)
    q = MultivariateNormal(mu_q, covariance_matrix=cov_q)
    est, se = kl_monte_carlo(p, q, n_samples=100_000, generator=torch.Generator().manual_seed(seed))
    assert est.shape == () and se.shape == ()
    assert 0 < se.item() < 0.05 * max(exact, 1.0)
    assert abs(est.item() - exact) < 4.5 * se.item()


def test_kl_monte_carlo_is_reproducible_and_keeps_global_rng():
    p, q = Normal(t64(0.0), t64(1.0)), Normal(t64(1.0), t64(2.0))
    state = torch.get_rng_state()
    a = kl_monte_carlo(p, q, 1000, generator=torch.Generator().manual_seed(5))
    b = kl_monte_carlo(p, q, 1000, generator=torch.Generator().manual_seed(5))
    c = kl_monte_carlo(p, q, 1000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert a[0].item() == b[0].item() and a[1].item() == b[1].item()
    assert a[0].item() != c[0].item()


def test_kl_monte_carlo_from_samples_with_callables_and_batches():
    gen = torch.Generator().manual_seed(11)
    mu = t64([[0.0], [1.0], [-2.0]])  # batch of three 1-d Gaussians p = N(mu, 1)
    samples = mu + torch.randn(200_000, 3, 1, dtype=F64, generator=gen)
    log_p = lambda x: Normal(mu, 1.0).log_prob(x).sum(-1)  # noqa: E731
    log_q = lambda x: Normal(0.5, 1.5).log_prob(x).sum(-1)  # noqa: E731
    est, se = kl_monte_carlo_from_samples(samples, log_p, log_q)
    assert est.shape == (3,) and se.shape == (3,)
    exact = kl_diag_gaussians(mu, torch.zeros_like(mu), t64([0.5]), t64([2 * math.log(1.5)]))
    assert (torch.abs(est - exact) < 4.5 * se).all()
    # a distribution object is accepted for q, and a callable for q in kl_monte_carlo
    p_dist = Independent(Normal(mu, 1.0), 1)
    est2, se2 = kl_monte_carlo(p_dist, log_q, 50_000, generator=gen)
    assert (torch.abs(est2 - exact) < 4.5 * se2).all()


def test_kl_monte_carlo_standard_error_uses_the_unbiased_sample_std():
    # With few samples the n - 1 (Bessel) correction is visible: compare with numpy, ddof=1.
    x = t64([[0.3, -1.2], [1.7, 0.4], [-0.8, 2.1]])  # 3 samples, batch of 2

    def log_p(z):
        return -0.5 * z**2

    def log_q(z):
        return -0.25 * (z - 1.0) ** 2

    est, se = kl_monte_carlo_from_samples(x, log_p, log_q)
    ratio = (log_p(x) - log_q(x)).numpy()
    np.testing.assert_allclose(est.numpy(), ratio.mean(0), rtol=1e-12)
    np.testing.assert_allclose(se.numpy(), ratio.std(0, ddof=1) / math.sqrt(3), rtol=1e-12)


def test_kl_monte_carlo_infinite_and_invalid():
    samples = torch.linspace(-1, 1, 11, dtype=F64)
    log_p = lambda x: torch.zeros_like(x)  # noqa: E731
    log_q = lambda x: torch.where(x > 0, -math.inf, 0.0)  # noqa: E731
    est, se = kl_monte_carlo_from_samples(samples, log_p, log_q)
    assert est.item() == math.inf and se.item() == math.inf
    with pytest.raises(NonFiniteError, match="nan"):
        kl_monte_carlo_from_samples(samples, lambda x: torch.full_like(x, -math.inf), log_q)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kl_monte_carlo_from_samples(samples[:1], log_p, log_p)
    with pytest.raises(ShapeError, match="first axis"):
        kl_monte_carlo_from_samples(samples, lambda x: x.sum(), lambda x: x.sum())
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        kl_monte_carlo(Normal(0.0, 1.0), Normal(0.0, 1.0), 1)
    with pytest.raises(TypeError, match="q must be"):
        kl_monte_carlo(Normal(0.0, 1.0), 3.0, 10)
    with pytest.raises(TypeError, match="p must be"):
        kl_monte_carlo(lambda x: x, Normal(0.0, 1.0), 10)


@SETTINGS
@given(gaussian_case)
def test_kl_gaussian_of_itself_is_zero_and_non_negative(case):
    mu_p, cov_p, mu_q, cov_q = (t64(x) for x in build_gaussians(case))
    d = mu_p.shape[-1]
    assert 0.0 <= kl_gaussian(mu_p, cov_p, mu_p, cov_p).item() <= 1e-12 * d
    assert kl_gaussian(mu_p, cov_p, mu_q, cov_q).item() >= 0.0


def test_kl_gaussian_batch_broadcasting():
    rng = np.random.default_rng(4)
    d = 3
    mu_p = t64(rng.standard_normal((4, 1, d)))
    cov_p = t64(random_spd(rng, d, 2.0))
    mu_q = t64(rng.standard_normal((3, d)))
    cov_q = t64(np.stack([[random_spd(rng, d, 2.0) for _ in range(3)] for _ in range(4)]))
    got = kl_gaussian(mu_p, cov_p, mu_q, cov_q)
    assert got.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            ref = torch_mvn_kl(mu_p[i, 0], cov_p, mu_q[j], cov_q[i, j])
            torch.testing.assert_close(got[i, j], ref, rtol=1e-12, atol=1e-14)
    # the batch is never summed: a single pair reproduces each entry
    L_p = torch.linalg.cholesky(cov_p)
    L_q = torch.linalg.cholesky(cov_q)
    torch.testing.assert_close(kl_gaussian_tril(mu_p, L_p, mu_q, L_q), got, rtol=1e-13, atol=0)


def test_kl_gaussian_float32():
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(4), random_spd(rng, 4, 1), rng.standard_normal(4),
              random_spd(rng, 4, 1)]
    got = kl_gaussian(*(torch.tensor(a, dtype=torch.float32) for a in arrays))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(kl_gaussian_scipy(*arrays), rel=1e-4)


def test_kl_gaussian_gradients():
    gen = torch.Generator().manual_seed(2)
    d = 4
    A_p = torch.randn(2, d, d, dtype=F64, generator=gen, requires_grad=True)
    A_q = torch.randn(d, d, dtype=F64, generator=gen, requires_grad=True)
    mu_p = torch.randn(2, d, dtype=F64, generator=gen, requires_grad=True)
    mu_q = torch.randn(d, dtype=F64, generator=gen, requires_grad=True)
    eye = torch.eye(d, dtype=F64)

    def via_cov(mp, ap, mq, aq):
        return kl_gaussian(mp, ap @ ap.mT + eye, mq, aq @ aq.mT + eye)

    def via_tril(mp, ap, mq, aq):
        def tril(a):
            return torch.tril(a, -1) + torch.diag_embed(torch.exp(a.diagonal(dim1=-2, dim2=-1)))
        return kl_gaussian_tril(mp, tril(ap), mq, tril(aq))

    assert torch.autograd.gradcheck(via_cov, (mu_p, A_p, mu_q, A_q))
    assert torch.autograd.gradcheck(via_tril, (mu_p, A_p, mu_q, A_q))
    # analytic: d KL / d mu_p = cov_q^{-1} (mu_p - mu_q)
    cov_q = (A_q @ A_q.mT + eye).detach()
    mp = mu_p.detach().clone().requires_grad_(True)
    kl_gaussian(mp, (A_p @ A_p.mT + eye).detach(), mu_q.detach(), cov_q).sum().backward()
    expected = torch.linalg.solve(cov_q, (mp - mu_q).detach().mT).mT
    torch.testing.assert_close(mp.grad, expected, rtol=1e-10, atol=1e-12)


def test_gaussian_gradient_survives_the_clamp_near_p_equals_q():
    # mu_p within 1e-9 of mu_q and the same covariance: the true KL, about 1e-19, is far below
    # the rounding of the log-determinant and trace terms, so the computed sum often rounds below
    # zero and is returned as 0. The gradient for mu_p must still be cov^{-1} (mu_p - mu_q), not 0.
    gen = torch.Generator().manual_seed(5)
    d, clamped = 4, 0
    for _ in range(20):
        A = torch.randn(d, d, dtype=F64, generator=gen)
        cov = A @ A.mT + d * torch.eye(d, dtype=F64)
        mu_q = torch.randn(d, dtype=F64, generator=gen)
        mu_p = (mu_q + 1e-9 * torch.randn(d, dtype=F64, generator=gen)).requires_grad_(True)
        expected = torch.linalg.solve(cov, (mu_p - mu_q).detach())
        L = torch.linalg.cholesky(cov)
        for value in (kl_gaussian(mu_p, cov, mu_q, cov), kl_gaussian_tril(mu_p, L, mu_q, L)):
            (grad,) = torch.autograd.grad(value, mu_p)
            assert 0.0 <= value.item() < 1e-14
            clamped += value.item() == 0.0
            torch.testing.assert_close(grad, expected, rtol=1e-6, atol=0)
    assert clamped >= 5


def test_bad_gaussian_input_raises():
    mu = t64([0.0, 0.0])
    eye = torch.eye(2, dtype=F64)
    indefinite = t64([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(NotPositiveDefiniteError, match="covariance cov_q is not positive definite"):
        kl_gaussian(mu, eye, mu, indefinite)
    not_pd_at_1 = r"cov_p is not positive definite at batch index \(1,\)"
    with pytest.raises(NotPositiveDefiniteError, match=not_pd_at_1):
        kl_gaussian(mu, torch.stack([eye, indefinite]), mu, eye)
    with pytest.raises(NotPositiveDefiniteError, match="not symmetric"):
        kl_gaussian(mu, t64([[2.0, 1.0], [0.0, 2.0]]), mu, eye)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        kl_gaussian(mu, torch.zeros(2, 2, dtype=F64), mu, eye)
    with pytest.raises(ShapeError, match=r"cov_p .* must have shape \(\.\.\., 2, 2\), got shape \(3, 3\)"):
        kl_gaussian(mu, torch.eye(3, dtype=F64), mu, eye)
    with pytest.raises(ShapeError, match=r"mu_q .* got shape \(3,\)"):
        kl_gaussian(mu, eye, t64([0.0, 0.0, 0.0]), eye)
    with pytest.raises(ShapeError, match="do not broadcast"):
        kl_gaussian(torch.zeros(3, 2, dtype=F64), eye, torch.zeros(4, 2, dtype=F64), eye)
    with pytest.raises(NonFiniteError, match="mu_p must be finite"):
        kl_gaussian(t64([math.nan, 0.0]), eye, mu, eye)
    with pytest.raises(NonFiniteError, match="cov_q must be finite"):
        kl_gaussian(mu, eye, mu, t64([[1.0, 0.0], [0.0, math.inf]]))
    with pytest.raises(NotLowerTriangularError, match="L_p must be lower triangular"):
        kl_gaussian_tril(mu, t64([[1.0, 0.5], [0.0, 1.0]]), mu, eye)
    with pytest.raises(NotLowerTriangularError, match="L_q must have a strictly positive diagonal"):
        kl_gaussian_tril(mu, eye, mu, t64([[1.0, 0.0], [0.5, -1.0]]))


# --------------------------------------------------------------------------- #
# Diagonal Gaussians and the VAE regulariser (notebook 02)
# --------------------------------------------------------------------------- #
diag_case = st.tuples(st.integers(1, 20), st.integers(0, 2**32 - 1), st.floats(0.01, 5.0))


@SETTINGS
@given(diag_case)
def test_kl_standard_normal_matches_references(case):
    d, seed, spread = case
    rng = np.random.default_rng(seed)
    mu = t64(rng.standard_normal((3, d)))
    logvar = t64(spread * rng.standard_normal((3, d)))
    got = kl_standard_normal(mu, logvar)
    assert got.shape == (3,)
    zeros, eye = torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64)
    ref_full = kl_gaussian(mu, torch.diag_embed(logvar.exp()), zeros, eye)
    torch.testing.assert_close(got, ref_full, rtol=1e-10, atol=1e-12)
    ref_torch = kl_divergence(
        Independent(Normal(mu, torch.exp(0.5 * logvar)), 1), Independent(Normal(zeros, 1.0), 1)
    )
    torch.testing.assert_close(got, ref_torch, rtol=1e-10, atol=1e-12)
    ref_np = 0.5 * np.sum(np.exp(logvar.numpy()) - logvar.numpy() - 1 + mu.numpy() ** 2, -1)
    np.testing.assert_allclose(got.numpy(), ref_np, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(diag_case)
def test_kl_diag_gaussians_matches_references(case):
    d, seed, spread = case
    rng = np.random.default_rng(seed)
    mu_p, mu_q = t64(rng.standard_normal((2, d))), t64(rng.standard_normal(d))
    lv_p, lv_q = t64(spread * rng.standard_normal((2, d))), t64(spread * rng.standard_normal(d))
    got = kl_diag_gaussians(mu_p, lv_p, mu_q, lv_q)
    ref_full = kl_gaussian(mu_p, torch.diag_embed(lv_p.exp()), mu_q, torch.diag(lv_q.exp()))
    torch.testing.assert_close(got, ref_full, rtol=1e-10, atol=1e-12)
    ref_torch = kl_divergence(
        Independent(Normal(mu_p, torch.exp(0.5 * lv_p)), 1),
        Independent(Normal(mu_q, torch.exp(0.5 * lv_q)), 1),
    )
    torch.testing.assert_close(got, ref_torch, rtol=1e-10, atol=1e-12)
    zeros = torch.zeros(d, dtype=F64)
    torch.testing.assert_close(
        kl_diag_gaussians(mu_p, lv_p, zeros, zeros), kl_standard_normal(mu_p, lv_p),
        rtol=1e-14, atol=0,
    )


def test_kl_standard_normal_small_logvar_is_accurate():
    lv = t64([1e-3, -1e-5, 1e-8, 0.0, 0.4, -0.4, 0.6])
    got = kl_standard_normal(torch.zeros(1, dtype=F64), lv.unsqueeze(-1)).numpy()
    # reference: the Taylor series of exp(x) - 1 - x summed in Python floats (no cancellation)
    ref = [0.5 * sum(x**k / math.factorial(k) for k in range(2, 30)) for x in lv.tolist()]
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=0)


def test_kl_standard_normal_gradients():
    gen = torch.Generator().manual_seed(9)
    mu = torch.randn(4, 6, dtype=F64, generator=gen, requires_grad=True)
    logvar = (2 * torch.randn(4, 6, dtype=F64, generator=gen)).requires_grad_(True)
    assert torch.autograd.gradcheck(kl_standard_normal, (mu, logvar))
    # includes entries in the series branch (|logvar| < 0.5) and outside it
    kl_standard_normal(mu, logvar).sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(logvar.grad, 0.5 * torch.expm1(logvar.detach()), rtol=1e-13, atol=1e-16)
    lv2 = torch.randn(6, dtype=F64, generator=gen, requires_grad=True)
    mu_q = torch.randn(6, dtype=F64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(kl_diag_gaussians, (mu, logvar, mu_q, lv2))


def test_kl_standard_normal_batch_and_dtype():
    mu = torch.zeros(5, 3)
    logvar = torch.zeros(3)  # shared across the batch
    got = kl_standard_normal(mu, logvar)
    assert got.shape == (5,) and got.dtype == torch.float32
    assert torch.equal(got, torch.zeros(5))
    assert kl_standard_normal(torch.ones(2, 4), torch.zeros(2, 4)).tolist() == [2.0, 2.0]


def test_bad_diag_input_raises():
    with pytest.raises(ShapeError, match=r"mu and logvar must have the same last .*\(2, 3\).*\(2, 4\)"):
        kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="do not broadcast"):
        kl_standard_normal(torch.zeros(2, 3), torch.zeros(4, 3))
    with pytest.raises(NonFiniteError, match="logvar must be finite"):
        kl_standard_normal(torch.zeros(3), torch.tensor([0.0, math.nan, 0.0]))
    with pytest.raises(NonFiniteError, match="mu must be finite"):
        kl_standard_normal(torch.tensor([math.inf]), torch.zeros(1))
    with pytest.raises(ShapeError, match="same event dimension"):
        kl_diag_gaussians(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(TypeError, match="floating-point"):
        kl_standard_normal(torch.zeros(3, dtype=torch.long), torch.zeros(3))


# --------------------------------------------------------------------------- #
# Inputs found by the input audit
# --------------------------------------------------------------------------- #
def test_gaussian_kl_that_overflows_is_inf_not_nan():
    """Finite, valid float32 inputs whose divergence exceeds the dtype's range give +inf, never nan."""
    eye = torch.eye(2)
    far = torch.full((2,), 3e38)
    assert kl_gaussian(far, eye, -far, eye).item() == math.inf
    zero = torch.zeros(2)
    assert kl_gaussian_tril(zero, 1e30 * eye, zero, 1e-9 * eye).item() == math.inf


def test_monte_carlo_kl_refuses_log_densities_without_the_sample_axis():
    # log_p of shape (n, 1) against log_q of shape (n,) used to broadcast to (n, n) silently
    p = Normal(torch.zeros(1), 1.0)
    with pytest.raises(ShapeError, match="first axis"):
        kl_monte_carlo(p, lambda x: Normal(0.0, 2.0).log_prob(x).sum(-1), 50)
    # a single number for log_p used to be broadcast against every sample
    with pytest.raises(ShapeError, match="log_p"):
        kl_monte_carlo_from_samples(torch.zeros(5), lambda x: torch.tensor(0.0), Normal(0.0, 1.0).log_prob)
    # with as many samples as batch entries, (n, n) against (n,) broadcasts without an error, but it would
    # pair log_q of sample j with batch entry j
    p3 = Normal(torch.zeros(3), 1.0)
    with pytest.raises(ShapeError, match="same number of batch axes"):
        kl_monte_carlo_from_samples(p3.sample((3,)), p3.log_prob, lambda x: Normal(0.0, 2.0).log_prob(x).sum(-1))


def test_monte_carlo_kl_refuses_samples_outside_the_support_of_p():
    samples = torch.full((5,), -1.0)
    with pytest.raises(NonFiniteError, match="-inf"):
        kl_monte_carlo_from_samples(samples, lambda x: torch.full_like(x, -math.inf), Normal(0.0, 1.0).log_prob)


# ---------------------------------------------------------------- found by mutation testing
def test_probability_tolerance_grows_with_the_number_of_outcomes():
    """The sum may be off by sqrt(eps) · sqrt(k) for k outcomes (rounding adds up over many terms)."""
    k = 100
    tol = math.sqrt(torch.finfo(torch.float32).eps) * math.sqrt(k)  # about 3.5e-3
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float32)
    almost = uniform * (1 + 0.5 * tol)  # sums to 1 + tol/2: accepted
    assert entropy(almost).item() == pytest.approx(math.log(k), abs=1e-2)
    with pytest.raises(ProbabilityError, match="sum to one"):
        entropy(uniform * (1 + 2 * tol))


def test_symmetry_tolerance_is_relative_to_the_size_of_the_entries():
    """A large covariance with a rounding-level asymmetry (relative 1e-9) is accepted; a relative 1e-3 is not."""
    mu = t64([0.0, 0.0])
    big = t64([[4.0e6, 1.0e6], [1.0e6, 2.0e6]])
    rounded = big.clone()
    rounded[0, 1] += 4.0e-3  # max |A − A^T| = 4e-3, against max |A| = 4e6
    want = kl_gaussian(mu, big, t64([1.0, -1.0]), big)
    torch.testing.assert_close(kl_gaussian(mu, rounded, t64([1.0, -1.0]), big), want, rtol=1e-8, atol=0)
    skewed = big.clone()
    skewed[0, 1] += 4.0e3
    with pytest.raises(NotPositiveDefiniteError, match="not symmetric"):
        kl_gaussian(mu, skewed, mu, big)


def test_an_unbatched_input_is_described_as_such_in_the_message():
    with pytest.raises(ProbabilityError, match=r"sums to 0\.6.* in the \(unbatched\) input"):
        entropy(t64([0.3, 0.3]))
    with pytest.raises(ProbabilityError, match=r"at batch index \(0, 1\)"):
        entropy(t64([[[0.5, 0.5], [0.3, 0.3]]]))
