"""Tests of vaelib.exercises: the checkers of the exercises in notebooks 01 to 06.

For every checker: the reference passes, an untouched stub is "not attempted" and shows the
reference, each usual mistake gets its own hint, and a wrong shape, dtype, nan or exception is
reported (not raised). The references themselves are checked against torch.distributions, scipy
and vaelib on every case the checkers use.
"""

import inspect
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from torch.special import xlogy

from vaelib import bounds, kl
from vaelib import exercises as ex
from vaelib.toy_models import GaussianMixture, LinearGaussian

NAMES = list(ex._EXERCISES)  # every checker that takes one function; check_kl_identity takes three


def checker(name):
    return getattr(ex, f"check_{name}")


def reference(name):
    return getattr(ex, f"reference_{name}")


def stub(*args):
    raise NotImplementedError("your code here")


def each_output(transform, fn):
    """``fn`` with ``transform`` applied to each tensor it returns (one, or a tuple)."""
    def changed(*args):
        out = fn(*args)
        return tuple(map(transform, out)) if isinstance(out, tuple) else transform(out)
    return changed


# --------------------------------------------------------------------------- the reference, a stub
@pytest.mark.parametrize("name", NAMES)
def test_the_reference_is_exact(name, capsys):
    result = checker(name)(reference(name))
    assert (result.status, result.passed, result.exact, result.hint) == ("done", True, True, None)
    assert result.max_abs_error == 0 and result.max_rel_error == 0
    line = capsys.readouterr().out
    assert line.startswith(name) and "| exact |" in line and "max abs error 0.0e+00" in line


@pytest.mark.parametrize("name", NAMES)
def test_an_untouched_stub_is_not_attempted_and_shows_the_reference(name, capsys):
    result = checker(name)(stub)
    assert (result.status, result.passed, result.hint) == ("not attempted", False, None)
    out = capsys.readouterr().out
    assert "not done yet" in out and "NotImplementedError" in out
    assert inspect.getsource(reference(name)) in out


def test_a_notebook_check_cell_runs_clean_with_the_stub_and_with_a_solution():
    for solution in (stub, ex.reference_kl_discrete):
        result = ex.check_kl_discrete(solution)
        assert result.status != "wrong"


# --------------------------------------------------------------------------- other correct answers
def _sample_full_einsum(mu, cov, eps):
    return mu + torch.einsum("...ij,...j->...i", torch.linalg.cholesky(cov), eps)


def _elbo_by_hand(log_p_xz, mu, logvar, eps):
    z = mu + torch.exp(logvar / 2) * eps
    log_q = (-0.5 * (math.log(2 * math.pi) + logvar + ((z - mu) / torch.exp(logvar / 2)) ** 2)).sum(-1)
    return log_p_xz(z).mean(0) - log_q.mean(0)


def _mixture_elbo_by_where(q, log_joint):  # the solution folded in notebook 03
    log_q = torch.log(torch.where(q > 0, q, 1.0))
    return torch.where(q > 0, q * (log_joint - log_q), 0.0).sum(-1)


def _mixture_elbo_as_log_px_minus_kl(q, log_joint):  # the identity log p(x) = ELBO(q) + KL(q ‖ p(z|x))
    return torch.logsumexp(log_joint, -1) - kl.kl_discrete(q, torch.softmax(log_joint, -1))


def _solve_rows(A, v):  # A⁻¹ v for each row v of a batch
    return torch.linalg.solve(A, v.unsqueeze(-1)).squeeze(-1)


def _posterior_by_cholesky(W, b, s, x):
    L = torch.linalg.cholesky(torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s**2)
    S = torch.cholesky_inverse(L)
    return _solve_rows(L @ L.T, (x - b) @ W / s**2), S


def _posterior_by_woodbury(W, b, s, x):  # Gaussian conditioning: S = I − Wᵀ (W Wᵀ + s² I)⁻¹ W
    gain = torch.linalg.solve(W @ W.T + s**2 * torch.eye(W.shape[0], dtype=W.dtype), W).T  # Wᵀ (W Wᵀ + s² I)⁻¹
    return (x - b) @ gain.T, torch.eye(W.shape[1], dtype=W.dtype) - gain @ W


def _ess_by_shift(lw):
    w = torch.exp(lw - lw.amax(0))  # the largest weight becomes 1; the ESS does not change with a common factor
    return w.sum(0) ** 2 / (w**2).sum(0)


def _pathwise_by_autograd(mu, sigma, eps):
    shape = torch.broadcast_shapes(mu.shape, sigma.shape, eps.shape)
    mu, sigma = mu.expand(shape).clone().requires_grad_(), sigma.expand(shape).clone().requires_grad_()
    ((mu + sigma * eps) ** 2).sum().backward()  # sample i depends only on its own copies of μ and σ
    return mu.grad, sigma.grad


CORRECT = [
    ("entropy", kl.entropy), ("cross_entropy", kl.cross_entropy), ("kl_discrete", kl.kl_discrete),
    ("kl_bits", lambda p, q: kl.nats_to_bits(kl.kl_discrete(p, q))),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: kl_divergence(Normal(mp, sp), Normal(mq, sq))),
    ("kl_gaussian", lambda mp, cp, mq, cq: kl_divergence(MultivariateNormal(mp, cp), MultivariateNormal(mq, cq))),
    ("kl_gaussian", kl.kl_gaussian), ("kl_standard_normal", kl.kl_standard_normal),
    ("elbo_estimate", _elbo_by_hand), ("iwae_bound", bounds.iwae_bound),
    ("iwae_bound", lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[0])),
    ("reparameterize", lambda mu, logvar, eps: mu + logvar.mul(0.5).exp() * eps),
    ("sample_full", _sample_full_einsum), ("pathwise_gradient_x2", _pathwise_by_autograd),
    ("mixture_elbo", _mixture_elbo_by_where), ("mixture_elbo", _mixture_elbo_as_log_px_minus_kl),
    ("linear_gaussian_posterior", _posterior_by_cholesky), ("linear_gaussian_posterior", _posterior_by_woodbury),
    ("linear_gaussian_posterior", lambda W, b, s, x: LinearGaussian(W, b, s).posterior(x)),
    ("effective_sample_size", _ess_by_shift),
    ("effective_sample_size", lambda lw: 1 / (torch.softmax(lw, 0) ** 2).sum(0)),
]


@pytest.mark.parametrize("name, fn", CORRECT)
def test_a_correct_answer_written_another_way_passes(name, fn, capsys):
    result = checker(name)(fn)
    assert result.status == "done", capsys.readouterr().out
    assert result.max_rel_error < 1e-6
    assert ("| exact |" if result.exact else "| close |") in capsys.readouterr().out


def test_a_function_that_edits_its_input_in_place_does_not_spoil_the_check():
    def entropy_then_scribble(p):
        h = -xlogy(p, p).sum(-1)
        p.zero_()
        return h
    assert ex.check_entropy(entropy_then_scribble).status == "done"


# --------------------------------------------------------------------------- the usual mistakes
@pytest.mark.parametrize("name, hint, mistaken", [(n, h, f) for n in NAMES for h, f in ex._EXERCISES[n].mistakes],
                         ids=lambda v: v[:40] if isinstance(v, str) else "")
def test_every_listed_mistake_is_told_apart_with_its_own_hint(name, hint, mistaken, capsys):
    result = checker(name)(mistaken)
    assert (result.status, result.hint) == ("wrong", hint)  # not the reference, and no earlier mistake shadows it
    assert f"hint: {hint}" in capsys.readouterr().out


def _kl(p, q):
    return (xlogy(p, p) - xlogy(p, q)).sum(-1)


def _chol(cov):
    return torch.linalg.cholesky(cov)


def _sqrtm(cov):  # the symmetric square root, by scipy, matrix by matrix
    roots = [scipy.linalg.sqrtm(c).real for c in cov.reshape(-1, *cov.shape[-2:]).numpy()]
    return torch.from_numpy(np.stack(roots)).reshape(cov.shape)


def _log_q(mu, sigma, eps):
    return Normal(mu, sigma).log_prob(mu + sigma * eps).sum(-1)


def _precision(W, s):  # S⁻¹ = I + Wᵀ W / s², which a learner may forget to invert
    return torch.eye(W.shape[1]).double() + W.T @ W / s**2


def _ess_without_the_square(lw):  # Σ w / Σ w², written stably: Σ w = eᵐ Σ w', Σ w² = e²ᵐ Σ w'² with w' = w e⁻ᵐ
    m = lw.amax(0)
    w = torch.exp(lw - m)
    return w.sum(0) / (w**2).sum(0) * torch.exp(-m)


# As a learner would write them, independently of the module's variants.
LEARNERS_MISTAKES = [
    ("entropy", lambda p: xlogy(p, p).sum(-1), "the sign is wrong"),
    ("entropy", lambda p: -(p * torch.log2(p).nan_to_num(neginf=0.0)).sum(-1), "log base 2"),
    ("entropy", lambda p: -xlogy(p, p).mean(-1), "mean over the outcomes"),
    ("entropy", lambda p: -(p * torch.log(p)).sum(-1), "0·log 0"),
    ("cross_entropy", lambda p, q: -xlogy(q, p).sum(-1), "arguments are swapped"),
    ("cross_entropy", lambda p, q: xlogy(p, q).sum(-1), "the sign is wrong"),
    ("cross_entropy", lambda p, q: -xlogy(p, q).sum(-1) / math.log(2), "log base 2"),
    ("cross_entropy", lambda p, q: -xlogy(p, q).mean(-1), "mean over the outcomes"),
    ("cross_entropy", lambda p, q: -(p * q.log()).sum(-1), "0·log 0"),
    ("kl_discrete", lambda p, q: _kl(q, p), "KL(q ‖ p)"),
    ("kl_discrete", lambda p, q: (xlogy(p, q) - xlogy(p, p)).sum(-1), "the sign is wrong"),
    ("kl_discrete", lambda p, q: (xlogy(p, p) - xlogy(p, q)).sum(-1) / math.log(2), "log base 2"),
    ("kl_discrete", lambda p, q: (xlogy(p, p) - xlogy(p, q)).mean(-1), "mean over the outcomes"),
    ("kl_discrete", lambda p, q: (p * torch.log(p / q)).sum(-1), "0·log 0"),
    ("kl_discrete", lambda p, q: torch.log(p / q).sum(-1), "not weighted by p"),
    ("kl_bits", _kl, "nats"),
    ("kl_bits", lambda p, q: _kl(p, q) * math.log(2), "multiplied by ln 2"),
    ("kl_bits", lambda p, q: _kl(q, p) / math.log(2), "KL(q ‖ p)"),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: kl_divergence(Normal(mq, sq), Normal(mp, sp)), "KL(q ‖ p)"),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2), "−½"),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp + (mp - mq) ** 2) / (2 * sq) - 0.5,
     "σ where σ² belongs"),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: torch.log(sq**2 / sp**2) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5,
     "the ½ of log"),
    ("kl_gaussian_1d", lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / sq**2 - 0.5,
     "denominator 2σq²"),
    ("kl_gaussian", lambda mp, cp, mq, cq: 2 * kl.kl_gaussian(mp, cp, mq, cq), "½ in front of the braces"),
    ("kl_gaussian", lambda mp, cp, mq, cq: kl.kl_gaussian(mp, cp, mq, cq) + mp.shape[-1] / 2, "−d is missing"),
    ("kl_gaussian", lambda mp, cp, mq, cq: kl.kl_gaussian(mq, cq, mp, cp), "KL(q ‖ p)"),
    ("kl_gaussian", lambda mp, cp, mq, cq: kl.kl_gaussian(mp, cp, mq, cq)
     + torch.logdet(cp) - torch.logdet(cq), "upside down"),
    ("kl_gaussian", lambda mp, cp, mq, cq: kl.kl_gaussian(mp, cp, mq, cq)
     + 0.5 * (torch.einsum("...ij,...ji->...", cq, cp) - torch.einsum("...ij,...ji->...", torch.inverse(cq), cp)),
     "tr(Σq⁻¹ Σp)"),
    ("kl_standard_normal", lambda mu, lv: (lv.exp() - lv - 1 + mu**2).sum(-1), "½ in front of the sum"),
    ("kl_standard_normal", lambda mu, lv: 0.5 * (torch.exp(2 * lv) - 2 * lv - 1 + mu**2).sum(-1), "read as log σ"),
    ("kl_standard_normal", lambda mu, lv: 0.5 * (lv.exp() - lv + mu**2).sum(-1), "the −1"),
    ("kl_standard_normal", lambda mu, lv: 0.5 * (lv.exp() + lv - 1 + mu**2).sum(-1), "sign of log σ²"),
    ("kl_standard_normal", lambda mu, lv: -0.5 * (lv.exp() - lv - 1 + mu**2).sum(-1), "never negative"),
    ("kl_standard_normal", lambda mu, lv: 0.5 * (lv.exp() - lv - 1 + mu**2).mean(-1), "mean over the coordinates"),
    ("kl_standard_normal", lambda mu, lv: 0.5 * (lv.exp() - lv - 1 + mu**2).sum(), "over the batch too"),
    ("elbo_estimate", lambda f, mu, lv, eps: f(mu + (lv / 2).exp() * eps).mean(0), "−log q(z|x) term is missing"),
    ("elbo_estimate", lambda f, mu, lv, eps: (f(mu + (lv / 2).exp() * eps) + _log_q(mu, (lv / 2).exp(), eps)).mean(0),
     "sign of log q(z|x)"),
    ("elbo_estimate", lambda f, mu, lv, eps: (f(mu + lv.exp() * eps) - _log_q(mu, lv.exp(), eps)).mean(0),
     "read as log σ"),
    ("elbo_estimate", lambda f, mu, lv, eps: (f(mu + (lv / 2).exp() * eps) - _log_q(mu, (lv / 2).exp(), eps)).sum(0),
     "sum over the samples"),
    ("elbo_estimate", lambda f, mu, lv, eps: (f(mu + (lv / 2).exp() * eps) + (0.5 * eps**2 + lv / 2).sum(-1)).mean(0),
     "constant −½ log 2π"),
    ("elbo_estimate", lambda *a: ex.reference_elbo_estimate(*a).mean(), "over the data points too"),
    ("iwae_bound", lambda lw: torch.logsumexp(lw, 0), "−log K"),
    ("iwae_bound", lambda lw: torch.log(torch.mean(torch.exp(lw), 0)), "overflows or underflows"),
    ("iwae_bound", lambda lw: lw.mean(0), "the ELBO"),
    ("iwae_bound", lambda lw: torch.exp(lw).mean(0), "the log is missing"),
    ("iwae_bound", lambda lw: torch.logsumexp(lw, -1) - math.log(lw.shape[-1]), "over the last axis"),
    ("reparameterize", lambda mu, lv, eps: mu + torch.exp(lv) * eps, "σ²"),
    ("reparameterize", lambda mu, lv, eps: mu + lv * eps, "scaled by logvar itself"),
    ("reparameterize", lambda mu, lv, eps: mu + eps, "without its scale"),
    ("reparameterize", lambda mu, lv, eps: mu + eps / torch.exp(0.5 * lv), "divided by σ"),
    ("sample_full", lambda mu, cov, eps: mu + torch.einsum("...ij,...j->...i", cov, eps), "multiplied by Σ itself"),
    ("sample_full", lambda mu, cov, eps: mu + torch.einsum("...ji,...j->...i", _chol(cov), eps), "Lᵀ ε"),
    ("sample_full", lambda mu, cov, eps: mu + eps @ _chol(cov).mT, "for a batch of covariances"),
    ("sample_full", lambda mu, cov, eps: mu + eps @ _chol(cov), "eps @ L"),
    ("sample_full", lambda mu, cov, eps: mu + torch.einsum("...ij,...j->...i", torch.sqrt(cov), eps),
     "square root of each entry"),
    ("sample_full", lambda mu, cov, eps: mu + torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)) * eps,
     "only the diagonal"),
    ("sample_full", lambda mu, cov, eps: mu + torch.einsum("...ij,...j->...i", _sqrtm(cov), eps),
     "symmetric square root"),
    ("pathwise_gradient_x2", lambda mu, s, eps: (mu + s * eps, (mu + s * eps) * eps), "factor 2"),
    ("pathwise_gradient_x2", lambda mu, s, eps: ((mu + s * eps) ** 2 * eps / s, (mu + s * eps) ** 2 * (eps**2 - 1) / s),
     "score-function"),
    ("pathwise_gradient_x2", lambda mu, s, eps: (2 * (mu + s * eps), 2 * (mu + s * eps)), "lacks its factor ε"),
    ("pathwise_gradient_x2", lambda mu, s, eps: (2 * mu * torch.ones_like(eps), 2 * mu * eps), "taken at μ"),
    ("pathwise_gradient_x2", lambda mu, s, eps: (2 * (mu + s * eps) * eps, 2 * (mu + s * eps)), "swapped"),
    ("mixture_elbo", lambda q, lj: (q * lj).sum(-1), "the −log qₖ term is missing"),
    ("mixture_elbo", lambda q, lj: torch.where(q > 0, q * (lj + q.log()), 0.0).sum(-1), "sign of log qₖ"),
    ("mixture_elbo", lambda q, lj: (q * (lj - torch.log(q))).sum(-1), "0·log 0 as 0"),
    ("mixture_elbo", lambda q, lj: _mixture_elbo_by_where(q, lj) / q.shape[-1], "mean over the K values"),
    ("mixture_elbo", lambda q, lj: torch.where(q > 0, q * (lj - q.log()), 0.0), "one number per value of z"),
    ("mixture_elbo", lambda q, lj: _mixture_elbo_by_where(q, lj).sum(), "over the batch too"),
    ("linear_gaussian_posterior", lambda W, b, s, x: (_solve_rows(W.T @ W / s**2, (x - b) @ W / s**2),
                                                      torch.inverse(W.T @ W / s**2)), "the prior's I is missing"),
    ("linear_gaussian_posterior", lambda W, b, s, x: _posterior_by_cholesky(W, b, math.sqrt(s), x),
     "s where s² belongs"),
    ("linear_gaussian_posterior", lambda W, b, s, x: _posterior_by_cholesky(W, torch.zeros_like(b), s, x),
     "b is not subtracted"),
    ("linear_gaussian_posterior", lambda W, b, s, x: (_posterior_by_cholesky(W, b, s, x)[0], _precision(W, s)),
     "the second output is the precision"),
    ("linear_gaussian_posterior", lambda W, b, s, x: (torch.einsum("ij,...j->...i", _precision(W, s) @ W.T, x - b)
                                                      / s**2, _precision(W, s)), "used where its inverse S belongs"),
    ("linear_gaussian_posterior", lambda W, b, s, x: (torch.einsum("ji,...j->...i", W, x - b) / s**2,
                                                      _posterior_by_cholesky(W, b, s, x)[1]), "lacks its factor S"),
    ("effective_sample_size", lambda lw: torch.exp(lw).sum(0) ** 2 / (torch.exp(lw) ** 2).sum(0), "work in log space"),
    ("effective_sample_size", _ess_without_the_square, "the square of the numerator"),
    ("effective_sample_size", lambda lw: torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1)),
     "over the last axis"),
    ("effective_sample_size", lambda lw: (torch.softmax(lw, 0) ** 2).sum(0), "1/ESS"),
    ("effective_sample_size", lambda lw: 1 / (torch.softmax(lw, 0) ** 2).sum(0) / len(lw), "ESS/N"),
]


@pytest.mark.parametrize("name, mistaken, hint", LEARNERS_MISTAKES, ids=[f"{n}: {h}" for n, _, h in LEARNERS_MISTAKES])
def test_a_learners_mistake_gets_its_hint(name, mistaken, hint, capsys):
    result = checker(name)(mistaken)
    assert result.status == "wrong" and not result.passed
    assert result.hint is not None and hint in result.hint, result.hint
    out = capsys.readouterr().out
    assert f"{name}" in out and "| WRONG |" in out and "first failing case:" in out and f"hint: {result.hint}" in out


def test_every_hint_in_the_module_is_reached_by_a_learners_mistake(capsys):
    reached = {(name, checker(name)(mistaken).hint) for name, mistaken, _ in LEARNERS_MISTAKES}
    assert reached == {(name, hint) for name in NAMES for hint, _ in ex._EXERCISES[name].mistakes}


def test_an_unknown_mistake_is_wrong_without_a_hint(capsys):
    result = ex.check_kl_discrete(lambda p, q: _kl(p, q) + 0.1)
    assert (result.status, result.hint) == ("wrong", None)
    assert result.max_abs_error == pytest.approx(0.1) and "hint" not in capsys.readouterr().out


# --------------------------------------------------------------------------- shape, dtype, nan, exceptions
BROKEN = {
    "shape": (lambda ref: each_output(lambda t: t.unsqueeze(-1), ref), "has shape"),
    "dtype": (lambda ref: each_output(lambda t: t.float(), ref), "dtype torch.float32, expected torch.float64"),
    "nan": (lambda ref: each_output(lambda t: t * math.nan, ref), "has nan"),
    "numpy": (lambda ref: each_output(lambda t: t.numpy(), ref), "is a ndarray, not a torch.Tensor"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", BROKEN)
def test_a_wrong_shape_dtype_nan_or_type_is_reported(name, kind, capsys):
    make, words = BROKEN[kind]
    result = checker(name)(make(reference(name)))
    assert result.status == "wrong" and words in result.message, result.message
    assert result.failed_case is not None
    assert words in capsys.readouterr().out
    if kind == "shape":
        assert result.max_abs_error == math.inf


@pytest.mark.parametrize("name", NAMES)
def test_an_exception_in_the_learners_code_is_reported_not_raised(name, capsys):
    def buggy(*args):
        raise IndexError("index 7 is out of bounds")
    result = checker(name)(buggy)
    assert result.status == "wrong" and result.hint is None
    assert result.message == "your function raised IndexError: index 7 is out of bounds"
    out = capsys.readouterr().out
    assert "| WRONG |" in out and "IndexError: index 7 is out of bounds" in out and result.failed_case in out


def test_a_pair_of_gradients_must_be_a_pair():
    result = ex.check_pathwise_gradient_x2(lambda mu, s, eps: 2 * (mu + s * eps))
    assert result.status == "wrong" and "returned 1 value(s), expected 2" in result.message


def test_a_nan_on_an_edge_case_names_that_case():
    def kl_nan_for_extreme_variances(mu, logvar):
        return torch.where(logvar.abs().amax(-1) >= 10, math.nan, ex.reference_kl_standard_normal(mu, logvar))
    result = ex.check_kl_standard_normal(kl_nan_for_extreme_variances)
    assert result.status == "wrong" and result.failed_case == "log σ² = ±10" and "nan" in result.message


# --------------------------------------------------------------------------- the identity KL = H(p, q) − H(p)
def test_the_identity_holds_for_the_references_and_for_vaelib(capsys):
    for trio in ((ex.reference_entropy, ex.reference_cross_entropy, ex.reference_kl_discrete),
                 (kl.entropy, kl.cross_entropy, kl.kl_discrete)):
        assert ex.check_kl_identity(*trio).status == "done"
    assert "kl_identity" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["entropy", "cross_entropy", "kl_discrete"])
def test_the_identity_names_the_function_that_is_off(which, capsys):
    trio = {"entropy": ex.reference_entropy, "cross_entropy": ex.reference_cross_entropy,
            "kl_discrete": ex.reference_kl_discrete}
    trio[which] = each_output(lambda t: 2 * t, trio[which])
    result = ex.check_kl_identity(**trio)
    assert result.status == "wrong" and f"your {which} disagrees" in result.hint
    assert f"check_{which}({which})" in capsys.readouterr().out


def test_the_identity_reports_the_nan_of_a_naive_entropy():
    naive_entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    result = ex.check_kl_identity(naive_entropy, ex.reference_cross_entropy, ex.reference_kl_discrete)
    assert result.status == "wrong" and "nan" in result.message and "your entropy" in result.hint


def test_the_identity_reports_an_exception_in_one_of_the_three(capsys):
    def broken_cross_entropy(p, q):
        return -(p * torch.log(q)).sum(dim=2)  # an axis that not every case has
    result = ex.check_kl_identity(ex.reference_entropy, broken_cross_entropy, ex.reference_kl_discrete)
    assert result.status == "wrong" and result.message.startswith("your function raised IndexError")
    assert "| WRONG |" in capsys.readouterr().out


def test_the_identity_with_a_stub_is_not_attempted_and_shows_the_three_references(capsys):
    result = ex.check_kl_identity(ex.reference_entropy, ex.reference_cross_entropy, stub)
    assert result.status == "not attempted"
    out = capsys.readouterr().out
    for fn in (ex.reference_entropy, ex.reference_cross_entropy, ex.reference_kl_discrete):
        assert inspect.getsource(fn) in out


# --------------------------------------------------------------------------- the references are right
def _np(t):
    return t.numpy()


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _expected(name, args):
    """The answer from torch.distributions, scipy or vaelib, not from this module."""
    if name == "entropy":
        return _t(scipy.stats.entropy(_np(args[0]), axis=-1))
    if name in ("cross_entropy", "kl_discrete", "kl_bits"):
        p, q = map(_np, args)
        kl_nats = scipy.special.rel_entr(p, q).sum(-1)
        return _t({"cross_entropy": scipy.stats.entropy(p, axis=-1) + kl_nats, "kl_discrete": kl_nats,
                                 "kl_bits": kl_nats / np.log(2)}[name])
    if name == "kl_gaussian_1d":
        return kl_divergence(Normal(args[0], args[1]), Normal(args[2], args[3]))
    if name == "kl_gaussian":
        return kl_divergence(MultivariateNormal(args[0], args[1]), MultivariateNormal(args[2], args[3]))
    if name == "kl_standard_normal":
        mu, lv = args
        return kl_divergence(Independent(Normal(mu, (lv / 2).exp()), 1), Independent(Normal(0 * mu, 1 + 0 * mu), 1))
    if name == "elbo_estimate":
        log_p_xz, mu, lv, eps = args
        sigma = torch.exp(lv / 2)
        z = mu + sigma * eps
        return (log_p_xz(z) - _t(scipy.stats.norm.logpdf(_np(z), _np(mu), _np(sigma)).sum(-1))).mean(0)
    if name == "iwae_bound":
        return _t(scipy.special.logsumexp(_np(args[0]), axis=0) - np.log(args[0].shape[0]))
    if name == "reparameterize":
        mu, lv, eps = map(_np, args)
        return _t(mu + np.sqrt(np.exp(lv)) * eps)
    if name == "sample_full":
        mu, cov, eps = map(_np, args)
        lower = np.linalg.cholesky(cov)
        return _t(mu + np.einsum("...ij,...j->...i", lower, eps))
    if name == "pathwise_gradient_x2":
        return _pathwise_by_autograd(*args)
    if name == "mixture_elbo":  # log p(x) − KL(q ‖ p(z|x)), the other side of the identity, by scipy
        q, log_joint = map(_np, args)
        posterior = scipy.special.softmax(log_joint, axis=-1)
        return _t(scipy.special.logsumexp(log_joint, axis=-1) - scipy.special.rel_entr(q, posterior).sum(-1))
    if name == "linear_gaussian_posterior":  # condition the joint Gaussian of (z, x) on x, in numpy
        W, b, s, x = _np(args[0]), _np(args[1]), args[2], _np(args[3])
        gain = W.T @ np.linalg.inv(W @ W.T + s**2 * np.eye(len(W)))  # Cov(z, x) Cov(x)⁻¹
        return _t((x - b) @ gain.T), _t(np.eye(W.shape[1]) - gain @ W)
    if name == "effective_sample_size":  # 1 / Σ w̃² with the normalized weights w̃ = w / Σ w, by scipy
        return _t(1 / (scipy.special.softmax(_np(args[0]).astype(np.float64), axis=0) ** 2).sum(0))
    raise KeyError(name)


@pytest.mark.parametrize("name", NAMES)
def test_each_reference_agrees_with_an_independent_library_on_every_case(name):
    exercise = ex._EXERCISES[name]
    for label, args in exercise.cases():
        got, want = reference(name)(*args), _expected(name, args)
        for g, w in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want))):
            assert g.shape == w.shape, label
            rtol = 1e-6 if "ill-conditioned" in label or g.dtype == torch.float32 else 1e-9
            torch.testing.assert_close(g, w.to(g.dtype), rtol=rtol, atol=1e-9, msg=label)


def test_the_discrete_references_agree_with_vaelib():
    for label, (p, q) in ex._probabilities(pairs=True):
        torch.testing.assert_close(ex.reference_kl_discrete(p, q), kl.kl_discrete(p, q), msg=label)
        torch.testing.assert_close(ex.reference_cross_entropy(p, q), kl.cross_entropy(p, q), msg=label)
        torch.testing.assert_close(ex.reference_entropy(p), kl.entropy(p), msg=label)


def test_the_cases_cover_the_edges_the_course_names():
    labels = {name: " / ".join(label for label, _ in ex._EXERCISES[name].cases()) for name in NAMES}
    assert all(word in labels["kl_discrete"] for word in ("zero", "one-hot", "+inf", "K = 1", "K = 20"))
    assert all(word in labels["kl_gaussian"] for word in ("d = 1", "d = 20", "ill-conditioned", "batch"))
    assert all(word in labels["kl_standard_normal"] for word in ("±10", "d = 1", "d = 20", "batch"))
    assert "−1000" in labels["iwae_bound"] and "+1000" in labels["iwae_bound"] and "K = 1" in labels["iwae_bound"]
    assert all(word in labels["mixture_elbo"] for word in ("zero", "one-hot", "posterior", "K = 1", "K = 20"))
    assert all(word in labels["linear_gaussian_posterior"] for word in ("d = 1", "parallel", "prior", "narrow"))
    assert all(word in labels["effective_sample_size"] for word in ("−1000", "+1000", "N = 1", "equal", "float32"))
    for name in NAMES:
        for label, args in ex._EXERCISES[name].cases():  # float64, but for the case about float32
            dtype = torch.float32 if "float32" in label else torch.float64
            assert all(a.dtype == dtype for a in args if isinstance(a, torch.Tensor)), label


def test_the_linear_gaussian_posterior_satisfies_bayes_rule_on_every_case():
    """log p(x | z) + log p(z) − log p(z | x) = log p(x) for every z: the reference's (m, S) against
    torch.distributions, with the marginal p(x) = N(b, W Wᵀ + s² I)."""
    for label, (W, b, s, x) in ex._linear_gaussian_cases():
        m, S = ex.reference_linear_gaussian_posterior(W, b, s, x)
        z = torch.randn(5, *m.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        log_joint = (Normal(z @ W.T + b, s).log_prob(x).sum(-1)
                     + Normal(0.0, 1.0).log_prob(z).sum(-1))
        log_px = MultivariateNormal(b, W @ W.T + s**2 * torch.eye(len(b), dtype=torch.float64)).log_prob(x)
        log_post = MultivariateNormal(m, S).log_prob(z)
        torch.testing.assert_close(log_joint - log_post, log_px.expand_as(log_post), rtol=1e-9, atol=1e-8, msg=label)


def test_the_mixture_elbo_reference_agrees_with_vaelib_and_the_toy_model():
    mix = GaussianMixture()
    x = torch.tensor([[0.0, 0.5], [7.0, -6.0], [1.0, 1.0]], dtype=torch.float64)  # the second far from every mean
    for label, (q, _) in ex._mixture_cases():
        if q.shape[-1] != mix.n_components:
            continue
        q = q[..., None, :].expand(*q.shape[:-1], len(x), 3)
        torch.testing.assert_close(ex.reference_mixture_elbo(q, mix.log_joint(x).expand_as(q)), mix.elbo(q, x),
                                   rtol=1e-12, atol=1e-12, msg=label)
        torch.testing.assert_close(ex.reference_mixture_elbo(q, mix.log_joint(x).expand_as(q)),
                                   mix.log_marginal(x) - kl.kl_discrete(q, mix.posterior(x)), msg=label)


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_the_ess_is_n_for_equal_weights_and_1_when_one_weight_dominates(n):
    for shift in (-1000.0, 0.0, 1000.0):
        equal = torch.full((n, 2), shift, dtype=torch.float64)
        assert ex.reference_effective_sample_size(equal).tolist() == pytest.approx([n, n], rel=1e-12)
        dominant = torch.full((n, 2), shift - 800.0, dtype=torch.float64)
        dominant[n // 2] = shift  # e^−800 is no weight at all next to the one kept
        assert ex.reference_effective_sample_size(dominant).tolist() == [1.0, 1.0]


def test_the_ess_keeps_float32():
    log_weights = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) + 1000  # float32
    ess = ex.reference_effective_sample_size(log_weights)
    assert ess.dtype == torch.float32 and bool(((1 <= ess) & (ess <= 50)).all())
    # log Σ w near 1000 holds an error of half a float32 ulp there (6e-5), and so does the ESS, relatively
    torch.testing.assert_close(ess, ex.reference_effective_sample_size(log_weights.double()).float(), rtol=5e-4,
                               atol=0)


def test_the_result_reads_well():
    result = ex.Result("kl_discrete", "wrong", 0.5, 1.0)
    assert repr(result) == "<kl_discrete: wrong, max abs error 0.5>" and not result.passed
    assert "kl_standard_normal(mu, logvar)" in ex.check_kl_standard_normal.__doc__
    assert ex.check_kl_standard_normal.__name__ == "check_kl_standard_normal"


# --------------------------------------------------------------------------- notebook 06: the training step
def _step_with(mistake):
    """A training step written with vaelib's functions, with one usual mistake (or none)."""
    from vaelib.bounds import bernoulli_log_likelihood
    from vaelib.kl import kl_standard_normal
    from vaelib.reparam import reparameterize

    def step(model, optimizer, x, generator):
        mu, logvar = model.encode(x)
        if mistake == "no noise":
            z = mu
        elif mistake == "sigma = exp(logvar)":
            z = mu + logvar.exp() * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        else:
            z = reparameterize(mu, logvar, generator=generator)
        rec, kl = bernoulli_log_likelihood(x, model.decode(z)), kl_standard_normal(mu, logvar)
        per_image = {"no KL": -rec, "sign": rec - kl}.get(mistake, kl - rec)
        loss = per_image.sum() if mistake == "sum" else per_image.mean()
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss
    return step


def test_the_training_step_checker_accepts_a_right_step_written_with_vaelib(capsys):
    from vaelib.exercises import check_training_step, reference_training_step

    assert check_training_step(reference_training_step).exact
    result = check_training_step(_step_with(None))
    assert result.status == "done" and result.max_abs_error < 1e-12
    assert "close" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, hint", [
    ("no zero_grad", "zero_grad"), ("no KL", "KL term is missing"), ("sign", "sign is flipped"),
    ("sum", "sum over the batch"), ("no noise", "z = μ with no noise"), ("sigma = exp(logvar)", "½ logvar"),
])
def test_the_training_step_checker_names_each_usual_mistake(mistake, hint, capsys):
    from vaelib.exercises import check_training_step

    result = check_training_step(_step_with(mistake))
    assert result.status == "wrong" and hint in result.hint
    assert hint in capsys.readouterr().out


def test_the_training_step_checker_shows_the_reference_for_a_stub(capsys):
    from vaelib.exercises import check_training_step

    def stub(model, optimizer, x, generator):
        raise NotImplementedError

    assert check_training_step(stub).status == "not attempted"
    assert "def reference_training_step" in capsys.readouterr().out


def test_sample_full_names_eps_times_L():
    """eps @ L (not L @ eps): right for no case with correlations, named by its own hint."""
    from vaelib.exercises import check_sample_full

    result = check_sample_full(lambda mu, cov, eps: mu + eps @ torch.linalg.cholesky(cov))
    assert result.status == "wrong" and "eps @ L" in result.hint
