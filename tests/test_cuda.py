"""The course on a CUDA GPU: its numbers against the CPU's, both trainers, checkpoints, the k = 5000
bound within a memory bound, and the latent explorer driven by a model on the GPU.

Every test here runs where torch sees a CUDA GPU and is skipped elsewhere, with the reason shown by
``pytest -rs``. ``benchmarks/gpu_check.py`` runs this file on a GPU machine (docs/gpu.md).

Checking these tests on a machine without a GPU: ``VAELIB_CUDA_STAND_IN=cpu python -m pytest
tests/test_cuda.py`` runs them with the CPU in the GPU's place. The comparisons then compare the
CPU with itself and the GPU memory bound is not measured, but every call the tests make runs, so a
test that no longer fits the library fails here first, not on the GPU machine. It takes minutes
(``compile=True`` compiles the CPU step, and the k = 5000 bound runs twice on the CPU).

Written for torch 2.11 (the GPU machines') as well as later versions: only long-standing calls.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch

import vaelib
from vaelib import bounds, checkpoints, kl, reparam
from vaelib.data import binarized_test_set
from vaelib.errors import NotPositiveDefiniteError
from vaelib.evaluate import test_scores as scores_on_test_set  # named so that pytest does not collect it
from vaelib.models import VAE
from vaelib.speed import fit_fast, tf32_matmuls
from vaelib.train import fit
from vaelib.training import evaluate

STAND_IN = os.environ.get("VAELIB_CUDA_STAND_IN", "").strip()
if STAND_IN and STAND_IN != "cpu":
    raise RuntimeError(f"VAELIB_CUDA_STAND_IN must be 'cpu' or unset, got {STAND_IN!r}")
DEVICE = torch.device("cpu" if STAND_IN else "cuda")
ON_GPU = DEVICE.type == "cuda"

pytestmark = pytest.mark.skipif(
    not STAND_IN and not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
    "run benchmarks/gpu_check.py on a GPU machine (docs/gpu.md)",
)

GiB = 1024**3
#: The k = 5000 bound on 100 images in chunks of max_rows = 50,000 codes must stay below this much GPU
#: memory on top of what was allocated before it (the model and the images). On the CPU the same call
#: raised the process's peak resident memory by about 0.7 GiB.
LOG_LIKELIHOOD_MEMORY_BOUND = 2 * GiB
UNTRAINED_LOSS = 784 * math.log(2)  # nats per image of a decoder that says 1/2 for every pixel


def on_device(*tensors):
    out = tuple(t.to(DEVICE) for t in tensors)
    return out if len(out) > 1 else out[0]


def device_generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def assert_on_device(t: torch.Tensor) -> None:
    assert t.device.type == DEVICE.type, f"expected a tensor on {DEVICE.type}, got one on {t.device}"


def assert_matches_cpu(on_dev: torch.Tensor, on_cpu: torch.Tensor, rtol=None, atol=None) -> None:
    """The GPU's result equals the CPU's up to rounding (the dtype's default tolerance unless given)."""
    assert_on_device(on_dev)
    torch.testing.assert_close(on_dev.cpu(), on_cpu, rtol=rtol, atol=atol, equal_nan=True)


def full_float32():
    """CUDA float32 matrix products in full float32 (no TF32) inside the block, restored afterwards."""
    return tf32_matmuls(False)


def tf32_setting():
    flags = torch.backends.cuda.matmul
    return flags.fp32_precision if hasattr(flags, "fp32_precision") else flags.allow_tf32


def finite_parameters(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def small_vae(latent_dim=4, hidden=(32,), likelihood="bernoulli", dtype=torch.float64, seed=0) -> VAE:
    torch.manual_seed(seed)
    return VAE(latent_dim, hidden_sizes=hidden, likelihood=likelihood).to(dtype)


def fake_images(n=16, binary=True, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g, dtype=dtype)
    return (x < 0.3).to(dtype) if binary else x


# --------------------------------------------------------------------------- numbers against the CPU's
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_discrete_entropy_and_cross_entropy_match_cpu(dtype):
    g = torch.Generator().manual_seed(1)
    p = torch.rand(64, 10, generator=g, dtype=dtype)
    q = torch.rand(64, 10, generator=g, dtype=dtype)
    p[::3, 0] = 0.0  # outcomes p does not have add nothing
    q[1::4, 1] = 0.0  # and q(k) = 0 < p(k) gives +inf
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    p_dev, q_dev = on_device(p, q)
    assert_matches_cpu(kl.entropy(p_dev), kl.entropy(p))
    assert_matches_cpu(kl.cross_entropy(p_dev, q_dev), kl.cross_entropy(p, q))
    assert_matches_cpu(kl.kl_discrete(p_dev, q_dev), kl.kl_discrete(p, q))
    result = kl.kl_discrete(p_dev, q_dev).cpu()
    assert torch.isinf(result[1::4]).all() and torch.isfinite(result[2::4]).all()
    assert (result >= 0).all()


def test_kl_gaussian_full_covariance_matches_cpu():
    g = torch.Generator().manual_seed(2)
    d = 6
    a, b = torch.randn(8, d, d, generator=g, dtype=torch.float64), torch.randn(8, d, d, generator=g, dtype=torch.float64)
    cov_p, cov_q = a @ a.mT + 0.5 * torch.eye(d, dtype=torch.float64), b @ b.mT + 0.5 * torch.eye(d, dtype=torch.float64)
    mu_p, mu_q = torch.randn(8, d, generator=g, dtype=torch.float64), torch.randn(8, d, generator=g, dtype=torch.float64)
    expected = kl.kl_gaussian(mu_p, cov_p, mu_q, cov_q)
    assert_matches_cpu(kl.kl_gaussian(*on_device(mu_p, cov_p, mu_q, cov_q)), expected, rtol=1e-9, atol=1e-9)
    # the same divergence as torch.distributions computes it
    reference = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(mu_p, cov_p),
                                                  torch.distributions.MultivariateNormal(mu_q, cov_q))
    torch.testing.assert_close(expected, reference, rtol=1e-9, atol=1e-9)
    bad = cov_q.clone()
    bad[3] = -bad[3]  # symmetric, not positive definite: the Cholesky factorisation on the GPU reports it
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        kl.kl_gaussian(*on_device(mu_p, cov_p, mu_q, bad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_standard_normal_and_diagonal_gaussians_match_cpu_with_gradients(dtype):
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(128, 20, generator=g, dtype=dtype)
    logvar = torch.cat([torch.randn(128, 10, generator=g, dtype=dtype) * 1e-3,  # the series branch, |s| < 0.5
                        torch.randn(128, 10, generator=g, dtype=dtype) * 4], dim=-1)
    mu_q, logvar_q = torch.randn(128, 20, generator=g, dtype=dtype), torch.randn(128, 20, generator=g, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)

    def value_and_grads(device):
        m, lv = mu.detach().clone().to(device).requires_grad_(), logvar.detach().clone().to(device).requires_grad_()
        out = kl.kl_standard_normal(m, lv)
        out.sum().backward()
        return out.detach(), m.grad, lv.grad

    for on_dev, on_cpu in zip(value_and_grads(DEVICE), value_and_grads("cpu")):
        assert_matches_cpu(on_dev, on_cpu, **tol)
    _, grad_mu, grad_logvar = value_and_grads(DEVICE)
    assert_matches_cpu(grad_mu, mu, **tol)  # d KL / d mu = mu
    assert_matches_cpu(grad_logvar, (logvar.exp() - 1) / 2, **tol)  # d KL / d log var = (var - 1) / 2
    assert_matches_cpu(kl.kl_diag_gaussians(*on_device(mu, logvar, mu_q, logvar_q)),
                       kl.kl_diag_gaussians(mu, logvar, mu_q, logvar_q), **tol)


def test_reparameterize_with_a_device_generator():
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mu_dev, logvar_dev = on_device(mu, logvar)
    z1 = reparam.reparameterize(mu_dev, logvar_dev, n_samples=200_000, generator=device_generator(7))
    z2 = reparam.reparameterize(mu_dev, logvar_dev, n_samples=200_000, generator=device_generator(7))
    assert_on_device(z1)
    assert z1.shape == (200_000, 3, 5) and z1.dtype == torch.float32
    assert torch.equal(z1, z2), "the same seed must give the same draws"
    # z = mu + sigma * eps, with eps the generator's standard normal draws in that shape
    eps = torch.randn((200_000, 3, 5), generator=device_generator(7), device=DEVICE)
    torch.testing.assert_close(z1, mu_dev + torch.exp(0.5 * logvar_dev) * eps)
    # the draws have the asked-for mean and variance (five standard errors)
    sigma = torch.exp(0.5 * logvar)
    se_mean = sigma / math.sqrt(z1.shape[0])
    assert ((z1.mean(0).cpu() - mu).abs() <= 5 * se_mean).all()
    se_var = sigma**2 * math.sqrt(2 / z1.shape[0])
    assert ((z1.var(0).cpu() - sigma**2).abs() <= 5 * se_var).all()
    # gradients reach mu and log sigma^2 through the draw
    m, lv = mu_dev.clone().requires_grad_(), logvar_dev.clone().requires_grad_()
    z = reparam.reparameterize(m, lv, n_samples=4, generator=device_generator(8))
    z.sum().backward()
    assert_matches_cpu(m.grad, torch.full_like(mu, 4.0))
    eps = torch.randn((4, 3, 5), generator=device_generator(8), device=DEVICE)
    assert_matches_cpu(lv.grad, (0.5 * torch.exp(0.5 * lv.detach()) * eps).sum(0).cpu())
    if ON_GPU:  # a generator on the wrong kind of device is refused with advice
        with pytest.raises(ValueError, match="generator"):
            reparam.reparameterize(mu_dev, logvar_dev, generator=torch.Generator().manual_seed(0))


def _cpu_elbo_with_noise(model, x, eps, beta=1.0):
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = model.log_px_given_z(x, model.decode(z)).mean(0)
    kl_term = model.kl(mu, logvar)
    return rec - beta * kl_term, rec, kl_term


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_matches_cpu_with_the_same_noise(likelihood):
    model = small_vae(likelihood=likelihood)
    x = fake_images(binary=likelihood == "bernoulli")
    model_dev, x_dev = model.to(DEVICE), x.to(DEVICE)
    model_cpu = small_vae(likelihood=likelihood)
    terms = bounds.elbo(model_dev, x_dev, beta=0.5, n_samples=3, generator=device_generator(5), return_terms=True)
    eps = torch.randn((3, 16, 4), generator=device_generator(5), device=DEVICE, dtype=torch.float64).cpu()
    expected = _cpu_elbo_with_noise(model_cpu, x, eps, beta=0.5)
    for on_dev, on_cpu in zip(terms, expected):
        assert_matches_cpu(on_dev, on_cpu, rtol=1e-10, atol=1e-9)
    loss = model_dev.loss(x_dev, generator=device_generator(6))
    eps = torch.randn((1, 16, 4), generator=device_generator(6), device=DEVICE, dtype=torch.float64).cpu()
    assert_matches_cpu(loss, -_cpu_elbo_with_noise(model_cpu, x, eps)[0].mean(), rtol=1e-10, atol=1e-9)


def test_iwae_bound_and_log_weights_match_cpu():
    g = torch.Generator().manual_seed(9)
    log_w = torch.randn(1000, 16, generator=g, dtype=torch.float64) * 5 - 1000  # would underflow without logsumexp
    assert_matches_cpu(bounds.iwae_bound(log_w.to(DEVICE)), bounds.iwae_bound(log_w), rtol=1e-12, atol=1e-9)
    assert_matches_cpu(bounds.iwae_bound(log_w.float().to(DEVICE), dim=0), bounds.iwae_bound(log_w.float()),
                       rtol=1e-6, atol=1e-3)
    model, x = small_vae(), fake_images()
    model_dev, x_dev = model.to(DEVICE), x.to(DEVICE)
    model_cpu = small_vae()
    lw = bounds.log_weights(model_dev, x_dev, 5, generator=device_generator(10))
    eps = torch.randn((5, 16, 4), generator=device_generator(10), device=DEVICE, dtype=torch.float64).cpu()
    mu, logvar = model_cpu.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    expected = (model_cpu.log_px_given_z(x, model_cpu.decode(z)) + bounds.gaussian_log_likelihood(z, torch.zeros_like(z))
                - bounds.gaussian_log_likelihood(z, mu, torch.exp(0.5 * logvar)))
    assert_matches_cpu(lw, expected, rtol=1e-10, atol=1e-8)
    assert_matches_cpu(bounds.iwae_loss(model_dev, x_dev, 5, generator=device_generator(10)),
                       -bounds.iwae_bound(expected).mean(), rtol=1e-10, atol=1e-8)
    # k = 1 is the ELBO loss, drawn the same way
    torch.testing.assert_close(bounds.iwae_loss(model_dev, x_dev, 1, generator=device_generator(11)),
                               model_dev.loss(x_dev, generator=device_generator(11)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_and_gaussian_log_likelihoods_match_cpu(dtype):
    g = torch.Generator().manual_seed(12)
    x = (torch.rand(32, 784, generator=g) < 0.4).to(dtype)
    logits = (torch.randn(32, 784, generator=g) * 30).to(dtype)  # far into both tails
    logits[0, :4] = torch.tensor([math.inf, -math.inf, math.inf, -math.inf], dtype=dtype)
    x[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype)  # certain and right, then certain and wrong
    tol = dict(rtol=1e-5, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    expected = bounds.bernoulli_log_likelihood(x, logits)
    result = bounds.bernoulli_log_likelihood(*on_device(x, logits))
    assert_matches_cpu(result, expected, **tol)
    assert result[0].item() == -math.inf and torch.isfinite(result[1:]).all()
    clean = logits.clone()
    clean[0, :4] = 0.0
    assert_matches_cpu(bounds.bernoulli_log_likelihood(*on_device(x, clean)), bounds.bernoulli_log_likelihood(x, clean),
                       **tol)
    grey = torch.rand(32, 784, generator=g).to(dtype)
    mean = torch.rand(32, 784, generator=g).to(dtype)
    sigma = (torch.rand(784, generator=g) + 0.1).to(dtype)  # one sigma per pixel
    assert_matches_cpu(bounds.gaussian_log_likelihood(*on_device(grey, mean)),
                       bounds.gaussian_log_likelihood(grey, mean), **tol)
    assert_matches_cpu(bounds.gaussian_log_likelihood(*on_device(grey, mean, sigma)),
                       bounds.gaussian_log_likelihood(grey, mean, sigma), **tol)
    assert_matches_cpu(bounds.gaussian_log_likelihood(*on_device(grey, mean), sigma=0.3),
                       bounds.gaussian_log_likelihood(grey, mean, sigma=0.3), **tol)


# --------------------------------------------------------------------------- training on the GPU
@pytest.fixture(scope="module")
def trained_on_device(mnist_small):
    """A small VAE trained for two epochs with vaelib.train.fit on the GPU, on 6,000 real training images;
    also the test loss the same model had before training."""
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = VAE(8, hidden_sizes=(256,))
    before = evaluate(model, test_x)["loss"]
    history = fit(model, train_x, test_x, epochs=2, device=DEVICE, progress=False, verbose=False)
    return model, history, before


def check_training(model, history, before, epochs=2):
    assert history["device"].startswith(DEVICE.type), history["device"]
    assert len(history["train_loss"]) == epochs
    for key in ("train_loss", "test_loss", "test_neg_elbo", "test_kl"):
        assert all(math.isfinite(v) for v in history[key]), (key, history[key])
    assert history["train_loss"][-1] < history["train_loss"][0], history["train_loss"]
    assert history["test_loss"][-1] < history["test_loss"][0], history["test_loss"]
    assert history["test_loss"][-1] < 0.5 * before, (history["test_loss"], before)
    assert finite_parameters(model), "a weight became nan or infinite"
    assert_on_device(next(model.parameters()))


def test_fit_trains_on_the_gpu(trained_on_device):
    model, history, before = trained_on_device
    assert before > 0.9 * UNTRAINED_LOSS
    check_training(model, history, before)


FAST_VARIANTS = {"eager": {}, "bf16": {"bf16": True}, "compiled": {"compile": True}}


@pytest.mark.filterwarnings("ignore:bf16=True:RuntimeWarning")  # bf16_matmul_speedup's advice, not a failure
@pytest.mark.parametrize("variant", sorted(FAST_VARIANTS))
def test_fit_fast_trains_on_the_gpu(variant, mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = VAE(16, hidden_sizes=(256, 256))
    before = evaluate(model, test_x)["loss"]
    setting = tf32_setting()
    history = fit_fast(model, train_x, test_x, epochs=2, device=DEVICE, progress=False, verbose=False,
                       **FAST_VARIANTS[variant])
    check_training(model, history, before)
    assert history["engine"] == "fast"
    assert tf32_setting() == setting, "fit_fast must give the caller's TF32 setting back"
    assert next(model.parameters()).dtype == torch.float32


def test_checkpoint_trained_on_the_gpu_loads_on_the_cpu(trained_on_device, tmp_path, mnist_small):
    model, history, _ = trained_on_device
    path = checkpoints.save_checkpoint(model, tmp_path / "gpu.pt", record={"device": history["device"]})
    assert_on_device(next(model.parameters()))  # saving leaves the model where it was
    on_cpu = checkpoints.load_checkpoint(path)
    assert next(on_cpu.parameters()).device.type == "cpu"
    state = model.state_dict()
    for name, tensor in on_cpu.state_dict().items():
        assert torch.equal(tensor, state[name].cpu()), name  # bit for bit
    x = binarized_test_set(mnist_small[2][:64])
    with torch.no_grad(), full_float32():
        mu_dev, logvar_dev = model.encode(x.to(DEVICE))
        mu_cpu, logvar_cpu = on_cpu.encode(x)
        assert_matches_cpu(mu_dev, mu_cpu, rtol=1e-4, atol=1e-4)
        assert_matches_cpu(logvar_dev, logvar_cpu, rtol=1e-4, atol=1e-4)
        assert_matches_cpu(model.reconstruct(x.to(DEVICE)), on_cpu.reconstruct(x), rtol=1e-4, atol=1e-4)
        back = checkpoints.load_checkpoint(path, map_location=DEVICE)
        assert_on_device(next(back.parameters()))
        torch.testing.assert_close(back.encode(x.to(DEVICE)), (mu_dev, logvar_dev), rtol=1e-6, atol=1e-6)
    assert checkpoints.load_record(path)["device"] == history["device"]


def test_test_scores_on_the_gpu(trained_on_device, mnist_small):
    model, _, _ = trained_on_device
    scores = scores_on_test_set(model, mnist_small[2][:200], k=50)
    assert scores["device"].startswith(DEVICE.type) and scores["images"] == 200 and scores["k"] == 50
    assert math.isfinite(scores["nll"]) and math.isfinite(scores["neg_elbo"])
    assert scores["nll"] < scores["neg_elbo"] + 3 * scores["nll_standard_error"]  # the k-sample bound is tighter


def test_log_likelihood_k5000_within_a_memory_bound_and_as_on_the_cpu(mnist_small):
    """k = 5000 on 100 test images in chunks of at most 50,000 codes: below the memory bound on the GPU,
    and the same estimate as on the CPU up to its Monte Carlo error (the draws differ between devices)."""
    model_cpu = vaelib.load_pretrained(50)
    x = binarized_test_set(mnist_small[2][:100])
    model_dev = vaelib.load_pretrained(50, map_location=DEVICE)
    x_dev = x.to(DEVICE)
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with full_float32():
        ll_dev = bounds.log_likelihood(model_dev, x_dev, k=5000, batch_size=100, max_rows=50_000,
                                       generator=device_generator(0))
    if ON_GPU:
        torch.cuda.synchronize()
        used = torch.cuda.max_memory_allocated() - before
        assert used < LOG_LIKELIHOOD_MEMORY_BOUND, f"log_likelihood took {used / GiB:.2f} GiB of GPU memory"
    assert_on_device(ll_dev)
    assert ll_dev.dtype == torch.float64 and ll_dev.shape == (100,) and torch.isfinite(ll_dev).all()
    ll_cpu = bounds.log_likelihood(model_cpu, x, k=5000, batch_size=100, max_rows=50_000,
                                   generator=torch.Generator().manual_seed(1))
    nll_dev, nll_cpu = -ll_dev.cpu(), -ll_cpu
    # within the standard error over images of the estimate (what test_scores reports)
    standard_error = nll_cpu.std().item() / math.sqrt(100)
    assert abs(nll_dev.mean().item() - nll_cpu.mean().item()) < standard_error
    # and, tighter, image by image: the two differ only by their Monte Carlo draws
    diff = nll_dev - nll_cpu
    se_diff = diff.std().item() / math.sqrt(100)
    assert abs(diff.mean().item()) < 5 * se_diff + 1e-3, (diff.mean().item(), se_diff)
    assert 60 < nll_dev.mean().item() < 120  # the shipped model scores 87.5 nats on the whole test set


def test_latent_explorer_driven_by_a_gpu_model(trained_on_device, mnist_small):
    pytest.importorskip("ipywidgets", reason="the latent explorer needs ipywidgets (pip install ipywidgets)")
    from vaelib.widgets import latent_explorer
    from vaelib.widgets.drawing import digit_png, png_to_array

    model, _, _ = trained_on_device
    images, labels = mnist_small[2][:300], mnist_small[3][:300]
    explorer = latent_explorer(model, images, labels)
    assert_on_device(next(model.parameters()))  # the explorer leaves the model on the GPU
    assert explorer.last_error is None and explorer.n_redraws >= 1
    before, redraws = explorer.pixels().copy(), explorer.n_redraws
    explorer.sliders[0].value = 2.5
    explorer.sliders[1].value = -2.0
    assert explorer.last_error is None, explorer.message.value
    assert explorer.n_redraws == redraws + 2
    after = explorer.pixels()
    assert after.shape == (280, 280) and after.dtype == np.uint8
    assert not np.array_equal(after, before), "moving the sliders must change the digit"
    assert 0 < after.mean() < 255
    # the digit shown is the CPU's decoding of the same code, up to a grey level of rounding
    cpu_model = copy.deepcopy(model).cpu()
    with torch.no_grad():
        expected = png_to_array(digit_png(cpu_model.decode_mean(explorer.code()[None])[0].numpy(), 280), "L")
    assert np.abs(after.astype(int) - expected.astype(int)).max() <= 1
    explorer.pick(5)
    explorer.sample_prior()
    assert explorer.last_error is None, explorer.message.value
    assert explorer.picked == 5 and explorer.posterior_codes.shape == (8, 8)

