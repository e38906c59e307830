"""Log-likelihoods, the ELBO and the importance-weighted bound against independent references.

The ELBO and IWAE properties are checked on a linear-Gaussian latent variable model whose
marginal p(x) and posterior p(z|x) are known in closed form.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal

from vaelib import VAE
from vaelib.errors import NonFiniteError, ShapeError, VaelibInputError
from vaelib.bounds import (
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    iwae_bound,
    log_likelihood,
    log_weights,
)
from vaelib.kl import kl_standard_normal

settings.register_profile("bounds", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("bounds")
D64 = torch.float64


# ---------------------------------------------------------------- log-likelihoods
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), p=st.integers(1, 40), per_pixel=st.booleans())
def test_gaussian_log_likelihood_matches_torch_distributions(seed, n, p, per_pixel):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=D64)
    mean = torch.randn(n, p, generator=g, dtype=D64)
    sigma = torch.rand(p, generator=g, dtype=D64) * 3 + 0.05 if per_pixel else 0.05 + 3 * torch.rand((), generator=g).item()
    ref = Independent(Normal(mean, torch.as_tensor(sigma, dtype=D64).expand(n, p)), 1).log_prob(x)
    torch.testing.assert_close(gaussian_log_likelihood(x, mean, sigma), ref, rtol=1e-12, atol=1e-10)


def test_gaussian_log_likelihood_constant_is_minus_p_over_2_log_2_pi_sigma2():
    p, sigma = 784, 0.3
    x = torch.rand(3, p, dtype=D64)
    got = gaussian_log_likelihood(x, x.clone(), sigma)
    expected = -(p / 2) * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(got, torch.full((3,), expected, dtype=D64), rtol=1e-13, atol=0)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), p=st.integers(1, 40), scale=st.sampled_from([1.0, 10.0, 80.0]))
def test_bernoulli_log_likelihood_matches_torch_distributions(seed, n, p, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, p), 0.5, dtype=D64), generator=g)
    logits = torch.randn(n, p, generator=g, dtype=D64) * scale
    ref = Independent(Bernoulli(logits=logits), 1).log_prob(x)
    got = bernoulli_log_likelihood(x, logits)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-10)


def test_log_likelihoods_sum_event_dims_not_batch():
    x = torch.rand(4, 28, 28, dtype=D64).round()
    logits = torch.randn(4, 28, 28, dtype=D64)
    per_image = bernoulli_log_likelihood(x, logits, event_dims=2)
    assert per_image.shape == (4,)
    torch.testing.assert_close(per_image, bernoulli_log_likelihood(x.reshape(4, -1), logits.reshape(4, -1)))
    # broadcasting over a leading sample dimension keeps both the sample and batch axes
    many = gaussian_log_likelihood(x.reshape(4, -1), torch.zeros(7, 4, 784, dtype=D64))
    assert many.shape == (7, 4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gaussian_log_likelihood(torch.zeros(3, 5), torch.zeros(3, 4)), "event shapes"),
        (lambda: gaussian_log_likelihood(torch.zeros(3, 5), torch.zeros(2, 5)), "do not broadcast"),
        (lambda: gaussian_log_likelihood(torch.zeros(3, 5), torch.zeros(3, 5), sigma=0.0), "sigma must be positive"),
        (lambda: gaussian_log_likelihood(torch.zeros(3, 5), torch.full((3, 5), math.nan)), "nan"),
        (lambda: bernoulli_log_likelihood(torch.full((2, 3), 2.0), torch.zeros(2, 3)), r"\[0, 1\]"),
        (lambda: bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 4)), "event shapes"),
        (lambda: iwae_bound(torch.tensor([0.0, math.nan])), "nan"),
        (lambda: iwae_bound(torch.tensor([0.0, math.inf])), r"\+inf"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, match):
    with pytest.raises(VaelibInputError, match=match):
        call()


# ---------------------------------------------------------------- the IWAE bound
@given(seed=st.integers(0, 10_000), k=st.integers(1, 300), shift=st.sampled_from([0.0, -200.0, -1000.0]))
def test_iwae_bound_is_a_stable_log_mean_exp(seed, k, shift):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randn(k, 3, generator=g, dtype=D64) * 5
    naive = torch.log(torch.exp(lw).mean(0))  # safe: |lw| is moderate before the shift
    got = iwae_bound(lw + shift, dim=0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, naive + shift, rtol=1e-12, atol=1e-9)


def test_iwae_bound_with_one_weight_is_that_weight_and_handles_zero_weights():
    lw = torch.tensor([[-3.5, 2.0]], dtype=D64)
    torch.testing.assert_close(iwae_bound(lw), lw[0])
    # a zero weight (log weight −inf) simply does not contribute
    torch.testing.assert_close(iwae_bound(torch.tensor([-math.inf, 0.0], dtype=D64)), torch.tensor(math.log(0.5), dtype=D64))


# ---------------------------------------------------------------- a model with exact log p(x)
class LinearGaussian(torch.nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I); q(z|x) = N(Ax + c, diag exp(lv)).

    W has orthogonal columns, so the exact posterior has a diagonal covariance and can be set
    as the encoder with :meth:`use_exact_posterior`.
    """

    def __init__(self, x_dim, z_dim, seed, s=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g, dtype=D64))
        self.W = q * (0.5 + 2 * torch.rand(z_dim, generator=g, dtype=D64))
        self.b = torch.randn(x_dim, generator=g, dtype=D64)
        self.s = s
        self.A = 0.3 * torch.randn(z_dim, x_dim, generator=g, dtype=D64)
        self.c = 0.3 * torch.randn(z_dim, generator=g, dtype=D64)
        self.lv = 0.5 * torch.randn(z_dim, generator=g, dtype=D64)
        self.latent_dim = z_dim

    def use_exact_posterior(self):
        # posterior precision I + WᵀW/s² is diagonal; mean = Σ Wᵀ(x − b)/s²
        prec = 1 + (self.W**2).sum(0) / self.s**2
        self.A = (self.W / self.s**2).T / prec[:, None]
        self.c = -self.A @ self.b
        self.lv = -torch.log(prec)

    def prepare_input(self, x):
        return x

    def encode(self, x):
        return x @ self.A.T + self.c, self.lv.expand(*x.shape[:-1], -1)

    def decode(self, z):
        return z @ self.W.T + self.b

    def log_px_given_z(self, x, mean):
        return gaussian_log_likelihood(x, mean, self.s)

    def kl(self, mu, logvar):
        return kl_standard_normal(mu, logvar)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=D64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


@given(seed=st.integers(0, 10_000))
@settings(max_examples=25)
def test_elbo_is_below_log_px_and_tight_at_the_exact_posterior(seed):
    model = LinearGaussian(x_dim=6, z_dim=3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 6, generator=g, dtype=D64) * 2
    exact = model.exact_log_px(x)
    terms = elbo(model, x, n_samples=4000, generator=g, return_terms=True)
    assert torch.all(terms.elbo < exact), (terms.elbo - exact).max()
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl)
    model.use_exact_posterior()
    # at the exact posterior every log weight equals log p(x): the bound is tight sample by sample
    lw = log_weights(model, x, k=7, generator=g)
    torch.testing.assert_close(lw, exact.expand(7, -1), rtol=1e-10, atol=1e-9)
    # the ELBO estimator (analytic KL + sampled reconstruction) is then unbiased for log p(x)
    reps = 4000
    draws = elbo(model, x.expand(reps, -1, -1).reshape(-1, 6), generator=g).reshape(reps, -1)
    se = draws.std(0) / math.sqrt(reps)
    assert torch.all((draws.mean(0) - exact).abs() < 4.5 * se), ((draws.mean(0) - exact) / se)


def test_monte_carlo_elbo_matches_its_closed_form():
    model = LinearGaussian(x_dim=5, z_dim=2, seed=3)
    x = torch.randn(4, 5, dtype=D64)
    mu, logvar = model.encode(x)
    var = logvar.exp()
    # E_q ||x − Wz − b||² = ||x − Wμ − b||² + Σⱼ varⱼ ||Wⱼ||²
    resid = x - model.decode(mu)
    sq = (resid**2).sum(-1) + (var * (model.W**2).sum(0)).sum(-1)
    closed = -0.5 * sq / model.s**2 - 5 / 2 * math.log(2 * math.pi * model.s**2) - kl_standard_normal(mu, logvar)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([elbo(model, x, n_samples=1, generator=g) for _ in range(4000)])
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - closed).abs() < 4 * se), ((draws.mean(0) - closed) / se)


def test_iwae_bound_rises_with_k_and_stays_below_log_px():
    model = LinearGaussian(x_dim=6, z_dim=3, seed=11)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=g, dtype=D64) * 2
    exact = model.exact_log_px(x)
    reps = 2000
    means, ses = [], []
    for k in (1, 2, 5, 20, 100):
        vals = iwae_bound(log_weights(model, x.expand(reps, -1, -1).reshape(-1, 6), k, generator=g)).reshape(reps, 3)
        means.append(vals.mean(0))
        ses.append(vals.std(0) / math.sqrt(reps))
    for (m0, s0), (m1, s1) in zip(zip(means, ses), zip(means[1:], ses[1:])):
        assert torch.all(m1 - m0 > -3 * torch.sqrt(s0**2 + s1**2))
    assert torch.all(means[-1] - means[0] > 10 * ses[0]), "the bound should rise clearly from k=1 to k=100"
    assert torch.all(means[-1] < exact + 3 * ses[-1])


def test_log_likelihood_estimate_converges_to_exact_log_px_whatever_the_chunking():
    model = LinearGaussian(x_dim=6, z_dim=3, seed=5)
    # a reasonable but inexact proposal: the posterior, shifted, with variances 1.5 times too large
    model.use_exact_posterior()
    model.c = model.c + 0.05
    model.lv = model.lv + math.log(1.5)
    x = torch.randn(7, 6, dtype=D64)
    exact = model.exact_log_px(x)
    assert torch.all(elbo(model, x, n_samples=2000) < exact - 0.03), "the test needs a proposal with a visible gap"
    a = log_likelihood(model, x, k=5000, generator=torch.Generator().manual_seed(0))
    b = log_likelihood(model, x, k=5000, batch_size=3, max_rows=700, generator=torch.Generator().manual_seed(1))
    assert a.shape == (7,) and a.dtype == D64
    torch.testing.assert_close(a, exact, rtol=0, atol=0.02)
    torch.testing.assert_close(b, exact, rtol=0, atol=0.02)
    # with k = 1 it is one ELBO-like draw: log p(x, z) − log q(z|x)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(log_likelihood(model, x, k=1, generator=g1), log_weights(model, x, 1, generator=g2)[0])


# ---------------------------------------------------------------- the VAE's ELBO
def test_vae_elbo_terms_against_torch_distributions():
    torch.manual_seed(0)
    model = VAE(4, hidden_sizes=(32,)).double()
    x = torch.bernoulli(torch.full((6, 784), 0.3, dtype=D64))
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    terms = elbo(model, x, beta=0.5, generator=g1, return_terms=True)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, *mu.shape, generator=g2, dtype=D64)[0]
    rec = Independent(Bernoulli(logits=model.decode(z)), 1).log_prob(x)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    kl = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(terms.reconstruction, rec)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.elbo, rec - 0.5 * kl)
    torch.testing.assert_close(model.loss(x, beta=0.5, generator=torch.Generator().manual_seed(2)), -(rec - 0.5 * kl).mean())


def test_multi_sample_elbo_averages_the_draws_against_torch_distributions():
    # With n_samples = S the reconstruction term is the mean (not the sum) of the S
    # single-draw log-likelihoods; the KL term stays the closed form, counted once.
    torch.manual_seed(0)
    model = VAE(3, hidden_sizes=(16,)).double()
    x = torch.bernoulli(torch.full((5, 784), 0.4, dtype=D64), generator=torch.Generator().manual_seed(1))
    s = 6
    terms = elbo(model, x, n_samples=s, generator=torch.Generator().manual_seed(3), return_terms=True)
    mu, logvar = model.encode(x)
    eps = torch.randn(s, *mu.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = Independent(Bernoulli(logits=model.decode(z)), 1).log_prob(x)  # (S, N)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    kl = torch.distributions.kl_divergence(q, prior)
    assert terms.elbo.shape == (5,)
    torch.testing.assert_close(terms.reconstruction, rec.mean(0))
    torch.testing.assert_close(terms.elbo, rec.mean(0) - kl)


def test_iwae_bound_counts_the_weights_along_the_requested_axis():
    # log (1/K) sum_k w_k along dim=1 (K = 5), not along the first axis (3 rows)
    g = torch.Generator().manual_seed(4)
    lw = torch.randn(3, 5, generator=g, dtype=D64) * 2
    reference = torch.log(torch.exp(lw).mean(dim=1))
    torch.testing.assert_close(iwae_bound(lw, dim=1), reference)
    torch.testing.assert_close(iwae_bound(lw, dim=-1), reference)
    torch.testing.assert_close(iwae_bound(lw.T, dim=0), reference)


def test_log_likelihood_uses_exactly_k_samples_within_max_rows():
    class Counting(LinearGaussian):
        def __init__(self, *args):
            super().__init__(*args)
            self.draws = 0
            self.largest_call = 0

        def decode(self, z):
            rows = z.shape[0] * z.shape[1]  # (samples, images, latent)
            self.draws += rows
            self.largest_call = max(self.largest_call, rows)
            return super().decode(z)

    model = Counting(6, 3, 2)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=D64)
    # at most 12 decoded rows a call with 4 images: chunks of 3, 3 and 1 samples for k = 7
    log_likelihood(model, x, k=7, batch_size=4, max_rows=12, generator=torch.Generator().manual_seed(1))
    assert model.draws == 7 * 4
    assert model.largest_call <= 12


def test_elbo_rejects_zero_samples():
    with pytest.raises(ValueError, match="n_samples"):
        elbo(VAE(2, hidden_sizes=(8,)), torch.zeros(1, 784), n_samples=0)


# ---------------------------------------------------------------- inputs found by the input audit
def test_gaussian_sigma_must_broadcast_to_the_data():
    x = torch.zeros(2, 5)
    with pytest.raises(ShapeError, match="sigma of shape"):
        gaussian_log_likelihood(x, x, torch.ones(3))  # used to be a raw torch size error
    with pytest.raises(ShapeError, match="sigma of shape"):
        gaussian_log_likelihood(x, x, torch.ones(4, 2, 5))  # used to add batch axes to the result silently
    assert gaussian_log_likelihood(x, x, torch.ones(5)).shape == (2,)


def test_gaussian_log_likelihood_refuses_x_and_mean_both_infinite():
    x = torch.full((2, 3), math.inf)
    with pytest.raises(NonFiniteError, match="both infinite"):
        gaussian_log_likelihood(x, x.clone())


def test_bernoulli_log_likelihood_with_infinite_logits_is_exact_not_nan():
    ones, zeros, inf = torch.ones(2, 3), torch.zeros(2, 3), torch.full((2, 3), math.inf)
    assert torch.equal(bernoulli_log_likelihood(ones, inf), torch.zeros(2))  # certain and right: log 1 = 0
    assert torch.equal(bernoulli_log_likelihood(zeros, -inf), torch.zeros(2))
    assert torch.equal(bernoulli_log_likelihood(zeros, inf), torch.full((2,), -math.inf))  # certain and wrong
    assert torch.equal(bernoulli_log_likelihood(ones, -inf), torch.full((2,), -math.inf))


def test_bernoulli_log_likelihood_refuses_integer_logits():
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64))


def test_iwae_bound_refuses_a_scalar_or_a_missing_axis():
    with pytest.raises(ShapeError, match="at least 1 dimension"):
        iwae_bound(torch.tensor(0.0))
    with pytest.raises(ShapeError, match="dim=2 is out of range"):
        iwae_bound(torch.zeros(3), dim=2)


def test_elbo_refuses_a_non_finite_beta_and_a_non_integer_sample_count():
    model, x = VAE(2, hidden_sizes=(8,)), torch.zeros(2, 784)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="beta"):
            elbo(model, x, beta=bad)
        with pytest.raises(ValueError, match="beta"):
            model.loss(x, beta=bad)
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        elbo(model, x, n_samples="2")


def test_log_likelihood_refuses_bad_batch_sizes_and_a_single_image():
    model, x = VAE(2, hidden_sizes=(8,)), torch.zeros(3, 784)
    for bad in (0, -1):  # -1 used to return uninitialized memory as the estimates
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            log_likelihood(model, x, k=2, batch_size=bad)
    with pytest.raises(TypeError, match="k must be an integer"):
        log_likelihood(model, x, k=2.5)
    with pytest.raises(ShapeError, match=r"got x of shape \(784,\)"):  # the message used to quote (100,)
        log_likelihood(model, x[0], k=2)


# ---------------------------------------------------------------- found by mutation testing
def test_a_batch_with_an_empty_axis_is_refused_even_when_its_first_axis_is_not():
    from vaelib.bounds import iwae_loss

    model = VAE(latent_dim=2, hidden_sizes=(8,))
    for x in (torch.zeros(0, 784), torch.zeros(2, 0, 784)):
        with pytest.raises(ShapeError, match="empty batch"):
            iwae_loss(model, x, 2)
        with pytest.raises(ShapeError, match="empty batch"):
            model.loss(x)
