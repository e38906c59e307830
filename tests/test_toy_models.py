"""Tests of vaelib.toy_models, the exact toy models of notebooks 03 and 05.

Every closed form is checked against an independent reference: scipy's densities, numerical
integration (scipy.integrate), torch.distributions, or a Monte Carlo estimate judged against its
standard error (4 SE, fixed seeds). Bad input must stop with an error that names the problem.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelib import bounds
from vaelib.errors import ShapeError, VaelibInputError
from vaelib.toy_models import (
    ArcModel,
    GaussianMixture,
    LinearEncoder,
    LinearGaussian,
    MLPEncoder,
    fixed_encoder,
    lbfgs,
    log1p_relative_variance,
    optimal_q,
    train_encoder,
)

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def within_se(draws, truth, z=4.0):
    """Is the mean of ``draws`` (over axis 0) within ``z`` standard errors of ``truth``, everywhere?"""
    draws = torch.as_tensor(draws, dtype=F64)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return bool(((draws.mean(0) - truth).abs() < z * se).all())


# --------------------------------------------------------------------------- the mixture (section 1)
@pytest.fixture(scope="module")
def mix():
    return GaussianMixture()


@pytest.fixture(scope="module")
def points():
    return torch.cat([6 * torch.rand(20, 2, generator=gen(1), dtype=F64) - 3, torch.tensor([[7.0, -6.0]], dtype=F64)])


def scipy_log_joint(mix, x):
    return np.stack([np.log(1 / 3) + stats.multivariate_normal(m, c).logpdf(x.numpy())
                     for m, c in zip(mix.means.numpy(), mix.covs.numpy())], axis=-1)


def test_mixture_log_joint_marginal_and_posterior_match_scipy(mix, points):
    ref = scipy_log_joint(mix, points)
    np.testing.assert_allclose(mix.log_joint(points).numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mix.log_marginal(points).numpy(), special.logsumexp(ref, -1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mix.posterior(points).numpy(), special.softmax(ref, -1), rtol=0, atol=1e-12)


def test_mixture_marginal_is_a_density(mix):
    density = lambda y, x: math.exp(mix.log_marginal(torch.tensor([x, y], dtype=F64)).item())  # noqa: E731
    total, err = integrate.dblquad(density, -12, 12, -12, 12, epsabs=1e-10)
    assert abs(total - 1) < 1e-7, (total, err)


def test_mixture_samples_follow_the_model(mix):
    x, z = mix.sample(60_000, gen(2))
    counts = torch.bincount(z, minlength=3).double()
    assert within_se(torch.nn.functional.one_hot(z, 3).double(), torch.full((3,), 1 / 3, dtype=F64))
    for k in range(3):
        xk = x[z == k]
        assert within_se(xk, mix.means[k])
        centred = xk - mix.means[k]
        products = centred[:, :, None] * centred[:, None, :]   # each has mean Sigma_k
        assert within_se(products.reshape(len(xk), 4), mix.covs[k].reshape(4)), k
    assert counts.sum() == 60_000


def test_mixture_elbo_is_log_p_minus_the_kl_to_the_posterior(mix, points):
    q = torch.softmax(3 * torch.randn(50, len(points), 3, generator=gen(3), dtype=F64), -1)
    q = torch.cat([q, torch.tensor([1.0, 0.0, 0.0], dtype=F64).expand(1, len(points), 3)])
    post = mix.posterior(points).numpy()
    kl = special.rel_entr(q.numpy(), post).sum(-1)                 # 0 log 0 = 0, by scipy
    want = special.logsumexp(scipy_log_joint(mix, points), -1) - kl
    np.testing.assert_allclose(mix.elbo(q, points).numpy(), want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mix.elbo(mix.posterior(points), points).numpy(), mix.log_marginal(points).numpy(),
                               rtol=0, atol=1e-12)


def test_mixture_means_can_be_replaced_and_differentiated(mix, points):
    means = mix.means.clone().requires_grad_()
    torch.testing.assert_close(mix.log_joint(points, means), mix.log_joint(points), rtol=0, atol=0)
    mix.log_marginal(points, means).sum().backward()
    resid = points[:, None, :] - mix.means
    fisher = torch.einsum("nk,kij,nkj->ki", mix.posterior(points), torch.linalg.inv(mix.covs), resid)
    torch.testing.assert_close(means.grad, fisher, rtol=0, atol=1e-10)


@pytest.mark.parametrize("call, error", [
    (lambda m: m.log_joint(torch.zeros(4, 3, dtype=F64)), ShapeError),
    (lambda m: m.log_joint(torch.zeros(4, 2, dtype=torch.int64)), TypeError),
    (lambda m: m.log_marginal(torch.tensor([[math.nan, 0.0]], dtype=F64)), Exception),
    (lambda m: m.elbo(torch.full((1, 3), 0.5, dtype=F64), torch.zeros(1, 2, dtype=F64)), VaelibInputError),
    (lambda m: m.elbo(torch.full((1, 2), 0.5, dtype=F64), torch.zeros(1, 2, dtype=F64)), ShapeError),
    (lambda m: m.sample(0, gen(0)), ValueError),
    (lambda m: m.sample(5, None), TypeError),
    (lambda m: GaussianMixture(covs=-torch.eye(2).expand(3, 2, 2)), ValueError),
])
def test_mixture_rejects_bad_input(mix, call, error):
    with pytest.raises(error):
        call(mix)


# --------------------------------------------------------------------------- linear-Gaussian (sections 2-6, 8)
@pytest.fixture(scope="module")
def lg():
    return LinearGaussian.random(x_dim=5, z_dim=2, s=0.5, generator=gen(4))


@pytest.fixture(scope="module")
def general_lg():  # non-orthogonal columns: the posterior covariance is not diagonal
    return LinearGaussian(torch.randn(4, 3, generator=gen(5), dtype=F64), torch.randn(4, generator=gen(6), dtype=F64),
                          0.7)


def test_random_has_orthogonal_columns_of_lengths_one_to_three_and_is_reproducible(lg):
    gram = lg.W.T @ lg.W
    lengths = torch.diagonal(gram).sqrt()
    assert (gram - torch.diag(torch.diagonal(gram))).abs().max() < 1e-12
    assert ((lengths >= 1) & (lengths <= 3)).all()
    again = LinearGaussian.random(x_dim=5, z_dim=2, s=0.5, generator=gen(4))
    assert torch.equal(again.W, lg.W) and torch.equal(again.b, lg.b)


def test_log_px_matches_numerical_integration_in_one_dimension():
    model = LinearGaussian(torch.tensor([[1.3], [-0.4]], dtype=F64), torch.tensor([0.2, 1.0], dtype=F64), 0.6)
    x = torch.tensor([[1.1, 0.5], [-2.0, 3.0]], dtype=F64)
    for xi, lp in zip(x, model.log_px(x)):
        lik = lambda z: stats.multivariate_normal(model.W[:, 0].numpy() * z + model.b.numpy(),  # noqa: E731
                                                  0.36 * np.eye(2)).pdf(xi.numpy()) * stats.norm.pdf(z)
        value, _ = integrate.quad(lik, -12, 12, epsabs=1e-14, epsrel=1e-12)
        assert abs(math.log(value) - lp.item()) < 1e-9


@pytest.mark.parametrize("which", ["lg", "general_lg"])
def test_log_px_matches_monte_carlo_over_the_prior(which, request):
    model = request.getfixturevalue(which)
    x = model.sample(3, gen(7))
    z = torch.randn(400_000, model.z_dim, generator=gen(8), dtype=F64)
    lik_ratio = torch.exp(Independent(Normal(model.decode(z)[:, None], model.s), 1).log_prob(x) - model.log_px(x))
    assert within_se(lik_ratio, torch.ones(3, dtype=F64))   # E_p(z)[p(x|z)] / p(x) = 1


@pytest.mark.parametrize("which", ["lg", "general_lg"])
def test_posterior_satisfies_bayes_rule_at_every_z(which, request):
    model = request.getfixturevalue(which)
    x = model.sample(4, gen(9))
    mean, cov = model.posterior(x)
    z = 2 * torch.randn(50, 4, model.z_dim, generator=gen(10), dtype=F64)
    log_post = (Independent(Normal(model.decode(z), model.s), 1).log_prob(x)
                + Independent(Normal(torch.zeros(model.z_dim, dtype=F64), 1.0), 1).log_prob(z) - model.log_px(x))
    ref = np.stack([stats.multivariate_normal(m, cov.numpy()).logpdf(zi) for m, zi in
                    zip(mean.numpy(), z.numpy().transpose(1, 0, 2))], axis=1)
    np.testing.assert_allclose(log_post.numpy(), ref, rtol=0, atol=1e-9)


def test_exact_posterior_is_the_diagonal_of_the_posterior_and_exact_for_orthogonal_columns(lg):
    x = lg.sample(3, gen(11))
    mean, cov = lg.posterior(x)
    mu, logvar = lg.exact_posterior(x)
    torch.testing.assert_close(mu, mean)
    torch.testing.assert_close(logvar.exp(), torch.diagonal(cov).expand_as(mu))
    torch.testing.assert_close(lg.elbo_closed_form(x, mu, logvar), lg.log_px(x), rtol=0, atol=1e-10)


def test_expected_log_lik_and_elbo_match_monte_carlo(general_lg):
    model = general_lg
    x = model.sample(3, gen(12))
    mu, logvar = torch.randn(3, 3, generator=gen(13), dtype=F64), torch.randn(3, 3, generator=gen(14), dtype=F64) - 1
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    z = q.sample((200_000,))
    log_lik = Independent(Normal(model.decode(z), model.s), 1).log_prob(x)
    log_prior = Independent(Normal(torch.zeros(3, dtype=F64), 1.0), 1).log_prob(z)
    assert within_se(log_lik, model.expected_log_lik(x, mu, logvar))
    assert within_se(log_lik + log_prior - q.log_prob(z), model.elbo_closed_form(x, mu, logvar))


def test_samples_have_the_marginal_mean_and_covariance(general_lg):
    model = general_lg
    x = model.sample(100_000, gen(15))
    assert within_se(x, model.b)
    centred = x - model.b
    cov = model.W @ model.W.T + model.s**2 * torch.eye(4, dtype=F64)
    assert within_se((centred[:, :, None] * centred[:, None, :]).reshape(len(x), 16), cov.reshape(16))


def test_vaelib_bounds_run_on_the_model_with_a_fixed_encoder(lg):
    x = lg.sample(2, gen(16))
    mu, logvar = torch.randn(2, 2, generator=gen(17), dtype=F64), torch.randn(2, 2, generator=gen(18), dtype=F64)
    with_q = lg.with_encoder(fixed_encoder(mu, logvar))
    reps = 50_000
    draws = bounds.elbo(with_q, x.repeat(reps, 1), generator=gen(19)).reshape(reps, 2)
    assert within_se(draws, lg.elbo_closed_form(x, mu, logvar))
    assert lg.encoder == lg.exact_posterior          # with_encoder left the original alone
    log_w = bounds.log_weights(lg, x, k=100, generator=gen(20))   # the default q is the exact posterior
    torch.testing.assert_close(log_w, lg.log_px(x).expand(100, 2), rtol=0, atol=1e-10)


def test_fixed_encoder_tiles_its_rows_and_refuses_a_batch_it_cannot_tile():
    mu, logvar = torch.arange(6, dtype=F64).reshape(3, 2), torch.zeros(3, 2, dtype=F64)
    encode = fixed_encoder(mu, logvar)
    got_mu, got_logvar = encode(torch.zeros(9, 5, dtype=F64))
    assert torch.equal(got_mu, mu.repeat(3, 1)) and got_logvar.shape == (9, 2)
    with pytest.raises(ShapeError):
        encode(torch.zeros(4, 5, dtype=F64))
    with pytest.raises(ShapeError):
        fixed_encoder(mu, torch.zeros(3, 3, dtype=F64))


@pytest.mark.parametrize("make, error", [
    (lambda: LinearGaussian(torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64), 1.0), ShapeError),
    (lambda: LinearGaussian(torch.zeros(5, 2, dtype=F64), torch.zeros(4, dtype=F64), 1.0), ShapeError),
    (lambda: LinearGaussian(torch.zeros(5, 2, dtype=F64), torch.zeros(5, dtype=F64), 0.0), VaelibInputError),
    (lambda: LinearGaussian([[1.0]], torch.zeros(1, dtype=F64), 1.0), TypeError),
    (lambda: LinearGaussian.random(2, 3, 0.5, gen(0)), ValueError),
])
def test_linear_gaussian_rejects_bad_settings(make, error):
    with pytest.raises(error):
        make()


def test_linear_gaussian_methods_reject_bad_input(lg):
    with pytest.raises(ShapeError):
        lg.log_px(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ShapeError):
        lg.elbo_closed_form(torch.zeros(3, 5, dtype=F64), torch.zeros(3, 2, dtype=F64), torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ShapeError):
        bounds.elbo(lg, torch.zeros(3, 4, dtype=F64))   # the model's check_input, called by vaelib.bounds


# --------------------------------------------------------------------------- importance weights (section 6)
def random_cov(d, seed):
    a = torch.randn(d, d, generator=gen(seed), dtype=F64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=F64)


def test_log1p_relative_variance_matches_numerical_integration_in_one_dimension():
    for m, s, mu, v in [(0.3, 0.5, -0.2, 0.9), (1.0, 0.2, 0.0, 1.0), (-2.0, 1.5, -1.0, 2.0)]:
        integrand = lambda z: stats.norm.pdf(z, m, math.sqrt(s)) ** 2 / stats.norm.pdf(z, mu, math.sqrt(v))  # noqa: E731
        value, _ = integrate.quad(integrand, -30, 30, epsabs=1e-13, epsrel=1e-12)
        got = log1p_relative_variance(*(torch.tensor(t, dtype=F64).reshape(*shape) for t, shape in
                                        [(m, (1,)), (s, (1, 1)), (mu, (1,)), (v, (1, 1))]))
        assert abs(got.item() - math.log(value)) < 1e-9


def test_log1p_relative_variance_matches_monte_carlo_of_the_squared_weight():
    m, S = torch.tensor([0.5, -1.0, 0.2], dtype=F64), random_cov(3, 21)
    mu, V = m + 0.3, 2 * S                                   # a wide proposal: the squared weights have finite variance
    q = MultivariateNormal(mu, V)
    z = q.sample((400_000,))
    ratio_sq = torch.exp(2 * (MultivariateNormal(m, S).log_prob(z) - q.log_prob(z)))   # (p(z|x) / q(z))^2
    assert within_se(ratio_sq, log1p_relative_variance(m, S, mu, V).exp())


def test_log1p_relative_variance_is_zero_at_the_posterior_and_infinite_for_a_narrow_proposal():
    m, S = torch.tensor([0.5, -1.0], dtype=F64), random_cov(2, 22)
    assert abs(log1p_relative_variance(m, S, m, S).item()) < 1e-12
    assert log1p_relative_variance(m, S, m, 0.45 * S).item() == math.inf
    with pytest.raises(ShapeError):
        log1p_relative_variance(m, S, m, torch.eye(3, dtype=F64))


# --------------------------------------------------------------------------- the arc model (section 7)
@pytest.fixture(scope="module")
def arc():
    return ArcModel(R=2.0, a=1.0, s=0.6)


def test_arc_decoder_lies_on_the_circle(arc):
    z = torch.linspace(-5, 5, 11, dtype=F64)[:, None]
    torch.testing.assert_close(arc.decode(z).norm(dim=-1), torch.full((11,), 2.0, dtype=F64))


def test_arc_log_px_matches_scipy_quad(arc):
    x = arc.sample(4, gen(23))
    for xi, lp in zip(x, arc.log_px(x)):
        density = lambda z: (stats.norm.pdf(z) * stats.norm.pdf(xi[0].item(), 2 * math.sin(z), 0.6)  # noqa: E731
                             * stats.norm.pdf(xi[1].item(), 2 * math.cos(z), 0.6))
        value, _ = integrate.quad(density, -12, 12, epsabs=1e-14, epsrel=1e-12, limit=200)
        assert abs(math.log(value) - lp.item()) < 1e-9


def test_arc_elbo_closed_form_matches_monte_carlo(arc):
    x = arc.sample(4, gen(24))
    mu, logvar = torch.randn(4, 1, generator=gen(25), dtype=F64), torch.randn(4, 1, generator=gen(26), dtype=F64) - 1
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((200_000,))                                            # (N, 4, 1)
    draws = (Independent(Normal(arc.decode(z), 0.6), 1).log_prob(x) + Normal(0.0, 1.0).log_prob(z[..., 0])
             - q.log_prob(z)[..., 0])
    assert within_se(draws, arc.elbo_closed_form(x, mu, logvar))


def test_arc_model_needs_an_encoder_and_positive_settings(arc):
    with pytest.raises(VaelibInputError):
        arc.encode(torch.zeros(2, 2, dtype=F64))
    with pytest.raises(VaelibInputError):
        ArcModel(s=-1.0)
    with pytest.raises(ShapeError):
        arc.elbo_closed_form(torch.zeros(3, 2, dtype=F64), torch.zeros(2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64))
    with pytest.raises(TypeError):
        arc.with_encoder("not a function")


# --------------------------------------------------------------------------- fitting q (section 7)
def test_lbfgs_finds_the_minimum_of_a_quadratic():
    target = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    w = torch.zeros(3, dtype=F64, requires_grad=True)
    lbfgs([w], lambda: ((w - target) ** 2 * torch.tensor([1.0, 10.0, 100.0], dtype=F64)).sum(), 100)
    torch.testing.assert_close(w.detach(), target, rtol=0, atol=1e-8)


def test_optimal_q_is_a_stationary_point_above_the_prior_and_below_log_px(arc):
    x = arc.sample(6, gen(27))
    mu, logvar, value, max_grad = optimal_q(arc, x)
    assert max_grad < 1e-5 and mu.shape == logvar.shape == (6, 1)
    torch.testing.assert_close(value, arc.elbo_closed_form(x, mu, logvar), rtol=0, atol=1e-12)
    prior_q = arc.elbo_closed_form(x, torch.zeros(6, 1, dtype=F64), torch.zeros(6, 1, dtype=F64))
    assert (value >= prior_q).all() and (value < arc.log_px(x)).all()
    grid_mu, grid_lv = torch.meshgrid(torch.linspace(-4, 4, 161, dtype=F64), torch.linspace(-6, 1, 141, dtype=F64),
                                      indexing="ij")
    for i in range(6):                                  # no point of a fine grid does better
        on_grid = arc.elbo_closed_form(x[i].expand(grid_mu.numel(), 2), grid_mu.reshape(-1, 1), grid_lv.reshape(-1, 1))
        assert on_grid.max() <= value[i] + 1e-9


def test_encoders_output_mean_and_log_variance_and_training_raises_the_elbo(arc):
    x = arc.sample(200, gen(28))
    torch.manual_seed(0)
    for encoder in (LinearEncoder(), MLPEncoder(hidden=8)):
        mu, logvar = encoder(x)
        assert mu.shape == logvar.shape == (200, 1) and mu.dtype == F64
        before = arc.elbo_closed_form(x, *encoder(x)).mean().item()
        train_encoder(encoder, arc, x, steps=200, lr=1e-2)
        after = arc.elbo_closed_form(x, *encoder(x)).mean().item()
        assert after > before + 0.1 and after < arc.log_px(x).mean().item()
