"""The IWAE training loss (vaelib.bounds.iwae_loss) and training with it (fit, the command line)."""

import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaelib import cli
from vaelib import train as vtrain
from vaelib.bounds import elbo, iwae_bound, iwae_loss, log_weights
from vaelib.checkpoints import load_checkpoint, load_record
from vaelib.data import binarize_dynamic, binarized_test_set
from vaelib.kl import kl_standard_normal
from vaelib.models import VAE, Autoencoder
from vaelib.reparam import reparameterize

D64 = torch.float64


def small_vae64(latent_dim=3, seed=0):
    torch.manual_seed(seed)
    return VAE(latent_dim, hidden_sizes=(24,)).to(D64)


def binary_batch(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 784, generator=g, dtype=D64) * 0.6, generator=g)


# ---------------------------------------------------------------- the loss itself
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_k1_is_the_elbo_loss_with_the_same_noise(seed):
    """iwae_loss(k=1) is model.loss (−ELBO, closed-form KL) with the same generator, in float64."""
    model, x = small_vae64(seed=seed), binary_batch(seed=seed + 10)
    ours = iwae_loss(model, x, 1, generator=torch.Generator().manual_seed(seed))
    theirs = model.loss(x, generator=torch.Generator().manual_seed(seed))
    assert ours.dtype == D64
    assert abs(ours.item() - theirs.item()) < 1e-10
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_weights_with_k1_use_the_same_draw_as_the_elbo(seed):
    """Both k=1 forms evaluate one and the same z; they differ only by the one-sample KL estimate.

    With that z (drawn here independently of vaelib.bounds), log w = log p(x|z) + log p(z) − log q(z|x)
    and ELBO = log p(x|z) − KL(q‖p); so log w − ELBO = log p(z) − log q(z|x) + KL exactly.
    """
    model, x = small_vae64(seed=seed), binary_batch(seed=seed + 20)
    lw = log_weights(model, x, 1, generator=torch.Generator().manual_seed(seed))[0]
    el = elbo(model, x, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, n_samples=1, generator=torch.Generator().manual_seed(seed))[0]
        sigma = torch.exp(0.5 * logvar)
        log_px_z = Independent(Bernoulli(logits=model.decode(z)), 1).log_prob(x)
        log_pz = Independent(Normal(torch.zeros_like(z), 1.0), 1).log_prob(z)
        log_qz = Independent(Normal(mu, sigma), 1).log_prob(z)
        kl = kl_standard_normal(mu, logvar)
    torch.testing.assert_close(lw.detach(), log_px_z + log_pz - log_qz, rtol=0, atol=1e-10)
    torch.testing.assert_close(el.detach(), log_px_z - kl, rtol=0, atol=1e-10)
    torch.testing.assert_close((lw - el).detach(), log_pz - log_qz + kl, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [2, 5, 50])
def test_k_samples_is_minus_the_mean_importance_weighted_bound(k):
    """For k > 1: −mean over images of log (1/k) Σ w_k, from independently computed log weights."""
    model, x = small_vae64(), binary_batch()
    ours = iwae_loss(model, x, k, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn((k, *mu.shape), generator=g, dtype=D64)
        lw = (Independent(Bernoulli(logits=model.decode(z)), 1).log_prob(x)
              + Independent(Normal(torch.zeros_like(z), 1.0), 1).log_prob(z)
              - Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z))
        reference = -(torch.logsumexp(lw, dim=0) - math.log(k)).mean()
    assert abs(ours.item() - reference.item()) < 1e-10
    again = -iwae_bound(log_weights(model, x, k, generator=torch.Generator().manual_seed(5)), dim=0).mean()
    assert abs(ours.item() - again.item()) < 1e-12


def test_gradients_are_finite_and_reach_encoder_and_decoder():
    torch.manual_seed(0)
    model = VAE(10, hidden_sizes=(64, 64))
    x = binary_batch(32).float()
    for k in (1, 5, 50):
        model.zero_grad(set_to_none=True)
        iwae_loss(model, x, k, generator=torch.Generator().manual_seed(k)).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (k, name)
        assert model.encoder[0].weight.grad.abs().sum() > 0 and model.decoder[-1].weight.grad.abs().sum() > 0


def test_gradient_matches_finite_differences_in_float64():
    """The autograd gradient of the loss (fixed noise) agrees with central differences."""
    model, x = small_vae64(latent_dim=2), binary_batch(4)
    p = model.decoder[0].bias
    loss = iwae_loss(model, x, 8, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(loss, [p])
    h, worst = 1e-6, 0.0
    with torch.no_grad():
        for i in range(p.numel()):
            p[i] += h
            up = iwae_loss(model, x, 8, generator=torch.Generator().manual_seed(3)).item()
            p[i] -= 2 * h
            down = iwae_loss(model, x, 8, generator=torch.Generator().manual_seed(3)).item()
            p[i] += h
            worst = max(worst, abs((up - down) / (2 * h) - grad[i].item()))
    assert worst < 1e-6, worst


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("5", TypeError)])
def test_bad_k_is_refused(bad, error):
    model, x = small_vae64(), binary_batch(2)
    with pytest.raises(error, match="k"):
        iwae_loss(model, x, bad)


def test_the_bound_rises_with_k_on_a_trained_shipped_model(mnist_small):
    """On the shipped latent-20 model, E[IWAE_k] grows with k: 1 < 5 < 50, each by many standard errors.

    The per-image estimates use the same images for every k, so the standard error is that of the
    per-image differences (over 300 test images, each bound averaged over 4 independent draws).
    """
    from vaelib import load_pretrained

    model = load_pretrained(20).eval()
    x = binarized_test_set(mnist_small[2][:300], seed=1)
    g = torch.Generator().manual_seed(0)
    bounds = {}
    with torch.no_grad():
        for k in (1, 5, 50):
            reps = [iwae_bound(log_weights(model, x, k, generator=g).double(), dim=0) for _ in range(4)]
            bounds[k] = torch.stack(reps).mean(0)
    for lo, hi in ((1, 5), (5, 50)):
        d = bounds[hi] - bounds[lo]
        z = d.mean() / (d.std() / math.sqrt(len(d)))
        assert d.mean() > 0.3 and z > 8, (lo, hi, d.mean().item(), z.item())
    # and the training loss is that bound: −iwae_loss averages the same quantity over the batch
    loss = iwae_loss(model, x[:50], 5, generator=torch.Generator().manual_seed(9))
    same = iwae_bound(log_weights(model, x[:50], 5, generator=torch.Generator().manual_seed(9)), dim=0)
    assert abs(loss.item() + same.mean().item()) < 1e-4


# ---------------------------------------------------------------- training with it
def test_fit_with_iwae_k1_is_elbo_training_exactly(mnist_small):
    train_x, _, test_x, _ = mnist_small
    runs = {}
    for objective in ("elbo", "iwae"):
        torch.manual_seed(1)
        model = VAE(4, hidden_sizes=(32,))
        h = vtrain.fit(model, train_x[:1000], test_x[:300], epochs=2, seed=3, progress=False, verbose=False,
                       objective=objective, iwae_k=1)
        runs[objective] = (h, model.decode(torch.ones(1, 4)))
    (he, de), (hi, di) = runs["elbo"], runs["iwae"]
    assert he["train_loss"] == hi["train_loss"] and he["test_neg_elbo"] == hi["test_neg_elbo"]
    assert torch.equal(de, di)


def test_fit_uses_the_iwae_objective_and_lowers_the_loss(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = VAE(5, hidden_sizes=(64,))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # the first step's reported loss is iwae_loss on the first batch, drawn as fit draws it
    h1 = vtrain.fit(model, train_x, epochs=1, batch_size=50, seed=7, max_steps=1, progress=False, verbose=False,
                    objective="iwae", iwae_k=6)
    model.load_state_dict(start)
    gen = torch.Generator().manual_seed(7)
    images = train_x.reshape(len(train_x), -1)
    idx = torch.randperm(len(images), generator=gen)[:50]
    x = binarize_dynamic(images[idx], generator=gen)
    expected = iwae_loss(model, x, 6, generator=gen).item()
    assert h1["train_loss"][0] == pytest.approx(expected, rel=1e-6)
    # a short run: the training loss and the test −ELBO fall
    model.load_state_dict(start)
    h = vtrain.fit(model, train_x, test_x[:500], epochs=3, batch_size=100, seed=0, progress=False, verbose=False,
                   objective="iwae", iwae_k=5)
    assert h["train_loss"][-1] < h["train_loss"][0] - 5, h["train_loss"]
    assert h["test_neg_elbo"][-1] < h["test_neg_elbo"][0], h["test_neg_elbo"]
    assert all(math.isfinite(v) for v in h["train_loss"] + h["test_neg_elbo"])


def test_fit_refuses_what_the_iwae_objective_cannot_do(mnist_small):
    train_x = mnist_small[0][:200]
    with pytest.raises(ValueError, match="iwae_k"):  # the fast engine trains it too, with the same checks
        cli.train_with("fast", VAE(2, hidden_sizes=(8,)), train_x, None, objective="iwae", iwae_k=0, progress=False)
    with pytest.raises(ValueError, match="objective must be one of"):
        vtrain.fit(VAE(2, hidden_sizes=(8,)), train_x, objective="iwa", progress=False)
    with pytest.raises(ValueError, match="needs a VAE"):
        vtrain.fit(Autoencoder(2, hidden_sizes=(8,)), train_x, objective="iwae", progress=False)
    with pytest.raises(ValueError, match="beta must be 1"):
        vtrain.fit(VAE(2, hidden_sizes=(8,)), train_x, objective="iwae", beta=4.0, progress=False)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="iwae_k"):
            vtrain.fit(VAE(2, hidden_sizes=(8,)), train_x, objective="iwae", iwae_k=bad, progress=False)


def test_command_line_trains_with_the_iwae_objective(mnist_dir, tmp_path, capsys):
    out = tmp_path / "iwae.pt"
    argv = ["--latent-dim", "3", "--hidden", "32", "--epochs", "1", "--train-limit", "1000", "--objective", "iwae",
            "--k", "3", "--out", str(out), "--data-dir", str(mnist_dir), "--no-progress", "--seed", "2"]
    cli.main(argv)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = load_record(out)
    assert record["settings"]["objective"] == "iwae" and record["settings"]["k"] == 3
    assert record["command"].endswith(" ".join(argv))
    assert math.isfinite(printed["test_neg_elbo"]) and load_checkpoint(out).latent_dim == 3
    # the same command with k = 1 trains exactly what the ELBO command trains
    finals = []
    for extra in (["--objective", "iwae", "--k", "1"], []):
        o = tmp_path / f"run{len(finals)}.pt"
        cli.main(["--latent-dim", "3", "--hidden", "32", "--epochs", "1", "--train-limit", "1000", "--out", str(o),
                  "--data-dir", str(mnist_dir), "--no-progress", "--seed", "2", *extra])
        finals.append(load_record(o)["final"])
    assert finals[0] == finals[1]
    defaults = cli.build_parser().parse_args(["--latent-dim", "2", "--out", "x.pt"])
    assert defaults.objective == "elbo" and defaults.k == 5
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--latent-dim", "2", "--out", "x.pt", "--objective", "likelihood"])
    # the fast engine trains it too (tests/test_fast.py), and refuses what fit refuses
    with pytest.raises(ValueError, match="beta must be 1"):
        cli.main(["--latent-dim", "2", "--epochs", "1", "--out", str(tmp_path / "f.pt"), "--engine", "fast",
                  "--objective", "iwae", "--beta", "2", "--data-dir", str(mnist_dir), "--no-progress",
                  "--train-limit", "100"])


# ---------------------------------------------------------------- inputs found by the input audit
@pytest.mark.parametrize("k", [1, 5])
def test_iwae_loss_refuses_an_empty_batch(k):
    """A mean over no images used to return nan."""
    from vaelib.errors import ShapeError

    with pytest.raises(ShapeError, match="empty batch"):
        iwae_loss(small_vae64(), torch.zeros(0, 784, dtype=D64), k)
