"""Tests of vaelib.checking, the helpers the notebooks check their claims with.

Each helper is compared with an independent reference (scipy.stats, NumPy's linear algebra,
the definition of a condition number); the Monte Carlo test is deterministic (fixed seeds).
Bad input must stop with an error that names the problem.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vaelib.checking import Z_TOL, check_mc, gen, mean_se, random_cov, random_rotation, t64


# --------------------------------------------------------------------------- t64
@pytest.mark.parametrize("values", [1.5, [1, 2, 3], [[0.5, 0.25]], np.arange(4, dtype=np.float32),
                                    np.array([3, 4], dtype=np.int64), torch.tensor([1.0, 2.0])])
def test_t64_gives_float64_with_the_same_values(values):
    out = t64(values)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), np.asarray(values, dtype=np.float64))


def test_t64_copies_arrays_and_keeps_a_tensor_on_the_graph():
    a = np.array([1.0, 2.0])
    out = t64(a)
    out[0] = 9.0
    assert a[0] == 1.0                                      # a copy: the caller's array is untouched
    x = torch.tensor([1.0, 2.0], requires_grad=True)        # float32 on the graph
    y = t64(x)
    assert y.dtype == torch.float64 and y.requires_grad
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.ones(2))
    z = torch.zeros(3, dtype=torch.float64)
    assert t64(z) is z


def test_t64_rejects_what_is_not_numbers():
    with pytest.raises(TypeError, match="t64"):
        t64("abc")
    with pytest.raises(TypeError, match="t64"):
        t64([1.0, [2.0, 3.0]])


# --------------------------------------------------------------------------- gen
def test_gen_equal_seeds_give_equal_draws_and_different_seeds_different_ones():
    a = torch.randn(1000, generator=gen(7), dtype=torch.float64)
    b = torch.randn(1000, generator=gen(7), dtype=torch.float64)
    c = torch.randn(1000, generator=gen(8), dtype=torch.float64)
    assert torch.equal(a, b)
    assert (a != c).all()
    assert torch.equal(torch.rand(5, generator=gen(np.int64(3))), torch.rand(5, generator=gen(3)))
    # the draws of torch.Generator().manual_seed(seed), which the notebooks' numbers were made with
    plain = torch.Generator().manual_seed(12345)
    assert torch.equal(torch.rand(5, generator=gen(12345)), torch.rand(5, generator=plain))


def test_gen_is_fresh_and_independent_of_the_global_seed():
    g = gen(1)
    first = torch.rand(3, generator=g)
    torch.manual_seed(123)
    torch.rand(10)                                           # global draws do not move a generator
    assert torch.equal(torch.rand(3, generator=gen(1)), first)
    assert not torch.equal(torch.rand(3, generator=g), first)   # the same generator moves on


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None])
def test_gen_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        gen(seed)


# --------------------------------------------------------------------------- mean_se
@pytest.mark.parametrize("shape", [(50,), (200, 3), (7, 2, 4)])
def test_mean_se_agrees_with_numpy_and_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.gamma(0.5, 3.0, size=shape) - 2.0
    mean, se = mean_se(x)
    assert mean.dtype == se.dtype == torch.float64 and mean.shape == se.shape == shape[1:]
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(se.numpy(), stats.sem(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(se.numpy(), x.std(axis=0, ddof=1) / math.sqrt(shape[0]), rtol=1e-12)


def test_mean_se_takes_float32_tensors_and_returns_no_graph():
    x = torch.randn(100, 2, generator=gen(0)).requires_grad_()
    mean, se = mean_se(x)
    assert mean.dtype == torch.float64 and not mean.requires_grad and not se.requires_grad
    np.testing.assert_allclose(se.numpy(), stats.sem(x.detach().double().numpy(), axis=0), rtol=1e-12)


@pytest.mark.parametrize("bad", [3.0, [1.0], np.zeros((1, 4))])
def test_mean_se_needs_two_samples(bad):
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_se(bad)


def test_the_z_of_mean_se_is_standard_normal_for_normal_samples():
    """Over 400 seeded repetitions of 200 normal draws, |mean - truth| / SE behaves like |t_199|:
    within 4 in every repetition, beyond 1.96 in about 5% of them, and the check passes."""
    rng = np.random.default_rng(2024)
    zs = []
    for _ in range(400):
        x = rng.normal(3.0, 2.0, size=200)
        mean, se = mean_se(x)
        zs.append(check_mc(mean, se, 3.0, "normal mean", quiet=True))
    zs = np.array(zs)
    assert zs.max() < Z_TOL
    beyond = np.mean(zs > 1.96)                # P(|t_199| > 1.96) = 0.051; SE of the fraction 0.011
    assert 0.02 < beyond < 0.09, beyond
    assert abs(np.mean(zs**2) - 200 / 198) < 0.2    # E[t^2] = nu / (nu - 2) for nu = 199 d.o.f.


def test_mean_se_catches_a_biased_estimate():
    x = np.random.default_rng(5).normal(0.0, 1.0, size=(10_000,))
    mean, se = mean_se(x)
    with pytest.raises(AssertionError, match="biased"):
        check_mc(mean, se, 0.1, "biased", quiet=True)      # 0.1 is 10 SE away


# --------------------------------------------------------------------------- check_mc
def test_check_mc_passes_inside_and_returns_the_largest_z(capsys):
    z = check_mc(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1]), torch.tensor([1.5, 2.1]), "two numbers")
    assert z == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "two numbers" in out and "1.00 SE" in out
    assert check_mc(0.0, 1.0, 0.0, "quiet", quiet=True) == 0.0
    assert capsys.readouterr().out == ""


def test_check_mc_raises_outside_and_names_what_and_z():
    with pytest.raises(AssertionError, match=r"gradient wrt mu.*4\.50 standard errors"):
        check_mc(4.5, 1.0, 0.0, "gradient wrt mu", quiet=True)
    with pytest.raises(AssertionError, match="6.00"):       # the largest entry decides, broadcasting
        check_mc(np.array([0.0, 3.0]), 0.5, 0.0, "vector", quiet=True)
    assert check_mc(4.5, 1.0, 0.0, "wider", z_tol=5.0, quiet=True) == 4.5
    with pytest.raises(AssertionError, match="nan"):
        check_mc(float("nan"), 1.0, 0.0, "nan estimate", quiet=True)


@pytest.mark.parametrize("se", [0.0, -1.0, float("nan"), float("inf"), [1.0, 0.0]])
def test_check_mc_rejects_a_bad_standard_error(se):
    with pytest.raises(ValueError, match=r"my check: every standard error must be finite and > 0"):
        check_mc([1.0, 1.0], se, 1.0, "my check")


def test_check_mc_rejects_bad_input():
    with pytest.raises(ValueError, match="do not broadcast"):
        check_mc(np.zeros(3), 1.0, np.zeros(2), "shapes")
    with pytest.raises(ValueError, match="exact value must be finite"):
        check_mc(1.0, 1.0, float("inf"), "truth")
    with pytest.raises(ValueError, match="z_tol"):
        check_mc(1.0, 1.0, 1.0, "tolerance", z_tol=0.0)
    with pytest.raises(TypeError, match="what"):
        check_mc(1.0, 1.0, 1.0, 42)


# --------------------------------------------------------------------------- random_rotation, random_cov
@pytest.mark.parametrize("d", [1, 2, 5, 30])
def test_random_rotation_is_orthogonal(d):
    q = random_rotation(d, np.random.default_rng(d))
    assert q.shape == (d, d)
    np.testing.assert_allclose(q.T @ q, np.eye(d), atol=1e-13)


@pytest.mark.parametrize("d, cond", [(2, 1.0), (3, 10.0), (10, 1e4), (50, 1e8), (20, 1e12)])
def test_random_cov_has_the_condition_number_asked_for(d, cond):
    cov, rot, eig = random_cov(d, cond, np.random.default_rng(int(d + math.log10(cond))))
    assert cov.shape == rot.shape == (d, d) and eig.shape == (d,)
    assert np.array_equal(cov, cov.T)                                    # exactly symmetric
    np.testing.assert_allclose(rot.T @ rot, np.eye(d), atol=1e-13)
    np.testing.assert_allclose(rot @ np.diag(eig) @ rot.T, cov, rtol=0, atol=1e-14 * eig.max())
    assert eig.max() / eig.min() == pytest.approx(cond, rel=1e-8)
    assert 1 / math.e <= eig.max() <= math.e                              # the random overall scale
    np.linalg.cholesky(cov)                                               # positive definite
    computed = np.linalg.eigvalsh(cov)
    assert computed.min() > 0
    np.testing.assert_allclose(np.sort(computed), np.sort(eig), rtol=0, atol=1e-14 * eig.max() * d)
    if cond <= 1e8:   # beyond that the computed condition number carries rounding of order cond * eps
        assert np.linalg.cond(cov) == pytest.approx(cond, rel=1e-6)


def test_random_cov_is_reproducible_and_1x1_has_condition_number_1():
    a, b = random_cov(4, 100.0, np.random.default_rng(0)), random_cov(4, 100.0, np.random.default_rng(0))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    cov, rot, eig = random_cov(1, 1e6, np.random.default_rng(1))
    assert cov.shape == (1, 1) and abs(rot[0, 0]) == 1.0 and cov[0, 0] == eig[0] > 0


@pytest.mark.parametrize("d, cond, message", [(0, 10.0, "d must be"), (2.5, 10.0, "d must be"), (3, 0.0, "cond"),
                                              (3, -5.0, "cond"), (3, 0.5, "cond"), (3, float("inf"), "cond"),
                                              (3, float("nan"), "cond")])
def test_random_cov_rejects_bad_input(d, cond, message):
    with pytest.raises(ValueError, match=message):
        random_cov(d, cond, np.random.default_rng(0))


def test_random_rotation_and_cov_need_a_numpy_generator():
    with pytest.raises(ValueError, match="d must be"):
        random_rotation(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        random_rotation(3, 0)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        random_cov(3, 10.0, np.random.RandomState(0))
