"""The evaluation command: test −ELBO and the importance-sampled −log p(x) of a saved VAE."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from vaelib import evaluate
from vaelib.bounds import elbo, iwae_bound, log_weights
from vaelib.checkpoints import load_record, pretrained_path, save_checkpoint
from vaelib.data import TEST_SEED, binarize_static, binarized_test_set
from vaelib.models import VAE


@pytest.fixture(scope="module")
def model2():
    from vaelib import load_pretrained

    return load_pretrained(2)


def test_binarized_test_set_is_a_fixed_bernoulli_sample(mnist_small):
    images = mnist_small[2][:500]
    a = binarized_test_set(images, seed=3)
    b = binarized_test_set(images, seed=3)
    c = binarized_test_set(images, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # black pixels stay black, white pixels stay white; the mean matches the grey levels
    p = images.reshape(500, -1).double() / 255
    assert torch.all(a[p == 0] == 0) and torch.all(a[p == 1] == 1)
    assert abs(a.double().mean() - p.mean()) < 0.005


def _z_blind(latent_dim: int, seed: int = 0) -> VAE:
    """A VAE whose decoder ignores z (its first layer's weights are zero): its −ELBO from one z is then
    a function of the binary image alone, so two evaluations agree exactly when they score the same images."""
    torch.manual_seed(seed)
    model = VAE(latent_dim, hidden_sizes=(16,))
    with torch.no_grad():
        model.decoder[0].weight.zero_()
    return model.eval()


def test_training_records_and_the_likelihood_command_score_the_same_binary_images(mnist_small):
    """vaelib.training.evaluate (the records' test numbers) binarizes the test set as test_scores does, for any
    model and batch size. It used to draw each batch's binarization from the generator that also drew z, so
    from the second batch on the images depended on the latent size and the batch size."""
    from vaelib.training import evaluate as train_evaluate

    images = mnist_small[2][:300]
    for latent_dim in (2, 7):
        model = _z_blind(latent_dim)
        want = evaluate.test_scores(model, images, k=1, seed=5, batch_size=100)["neg_elbo"]
        for batch_size in (64, 1000):
            got = train_evaluate(model, images, seed=5, batch_size=batch_size)["neg_elbo"]
            assert got == pytest.approx(want, rel=1e-6), (latent_dim, batch_size)
    # and another seed scores other images
    other = train_evaluate(_z_blind(2), images, seed=6)["neg_elbo"]
    assert other != pytest.approx(train_evaluate(_z_blind(2), images, seed=5)["neg_elbo"], rel=1e-6)


def test_binarized_test_set_is_the_static_binarization_flattened_on_the_cpu(mnist_small):
    """binarized_test_set is binarize_static(images, seed) flattened to (N, 784) on the CPU, i.e. the one
    binarization (u < p for u = torch.rand(p.shape) from a CPU generator seeded with seed), and the same
    draw as torch.bernoulli from an equally seeded CPU generator; the default seed is TEST_SEED = 1."""
    images = mnist_small[2][:500]
    got = binarized_test_set(images, seed=3)
    assert got.shape == (500, 784) and got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, binarize_static(images, 3).reshape(500, -1))
    probs = images.reshape(500, 784).float() / 255
    assert torch.equal(got, torch.bernoulli(probs, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(got, (torch.rand(probs.shape, generator=torch.Generator().manual_seed(3)) < probs).float())
    assert TEST_SEED == 1 and torch.equal(binarized_test_set(images), binarized_test_set(images, seed=1))
    # an (images, labels) pair gives the images' draw; float grey levels in [0, 1] the same draw as uint8
    assert torch.equal(binarized_test_set((images, mnist_small[3][:500]), seed=3), got)
    assert torch.equal(binarized_test_set(images.float() / 255, seed=3), got)


def _scores_by_hand(model, x, k: int, batch_size: int, seed: int):
    """Per-image −ELBO and −L_k of ``x``, batch by batch from one generator seeded with ``seed``: the sequence of
    draws test_scores makes, computed here with the bounds module directly."""
    gen = torch.Generator().manual_seed(seed)
    neg_elbo, nll = [], []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size]
            neg_elbo.append(-elbo(model, xb, generator=gen).double())
            nll.append(-iwae_bound(log_weights(model, xb, k, generator=gen).double(), dim=0))
    return torch.cat(neg_elbo), torch.cat(nll)


def test_scores_agree_with_the_bounds_module(model2, mnist_small):
    images = mnist_small[2][:40]
    out = evaluate.test_scores(model2, images, k=200, seed=5, batch_size=16)
    assert out["images"] == 40 and out["k"] == 200
    # recompute independently from the same binarization and the generator sequence used inside
    neg_elbo, nll = _scores_by_hand(model2, binarized_test_set(images, seed=5), k=200, batch_size=16, seed=6)
    assert out["neg_elbo"] == pytest.approx(neg_elbo.mean().item(), rel=1e-6)
    assert out["nll"] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert out["gap"] == pytest.approx((neg_elbo - nll).mean().item(), rel=1e-5)
    assert out["gap_standard_error"] == pytest.approx((neg_elbo - nll).std().item() / 40**0.5, rel=1e-5)
    # the k-sample bound is tighter than the one-sample ELBO on average, and by a real margin
    assert 0.5 < out["gap"] < 15
    assert out["nll_standard_error"] == pytest.approx(nll.std().item() / 40**0.5, rel=1e-6)


def test_more_samples_tighten_the_bound(model2, mnist_small):
    images = mnist_small[2][:100]
    small = evaluate.test_scores(model2, images, k=5, seed=1)
    large = evaluate.test_scores(model2, images, k=500, seed=1)
    assert large["nll"] < small["nll"] < small["neg_elbo"] + 1.0


def test_scores_reject_bad_arguments(model2, mnist_small):
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate.test_scores(model2, mnist_small[2][:4], k=0)
    with pytest.raises(TypeError, match="k must be an integer"):  # was "k must be at least 1"
        evaluate.test_scores(model2, mnist_small[2][:4], k=0.5)
    with pytest.raises(TypeError, match="needs a VAE"):
        evaluate.test_scores(torch.nn.Linear(2, 2), mnist_small[2][:4])


def test_command_line_updates_the_record_atomically(tmp_path, mnist_dir, capsys):
    src = pretrained_path(2)
    for suffix in (".pt", ".json"):
        shutil.copy(src.with_name(src.stem + suffix), tmp_path / ("m" + suffix))
    digest = (src.parent / (src.name + ".sha256")).read_text().split()[0]
    (tmp_path / "m.pt.sha256").write_text(f"{digest}  m.pt\n")
    before = load_record(tmp_path / "m.pt")
    out = evaluate.main([str(tmp_path / "m.pt"), "--k", "20", "--limit", "30", "--update-record", "--no-progress",
                         "--data-dir", str(mnist_dir)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nll"] == pytest.approx(out["nll"])
    after = load_record(tmp_path / "m.pt")
    assert after["test_log_likelihood"]["nll"] == pytest.approx(out["nll"])
    assert after["test_log_likelihood"]["binarization_seed"] == before["settings"]["seed"] + 1
    assert {k: v for k, v in after.items() if k != "test_log_likelihood"} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt", "m.pt.sha256"]


def test_command_line_scores_a_checkpoint_of_the_speed_recipe(tmp_path, mnist_dir):
    # `python -m vaelib.train --norm layer ...` writes a TunedVAE; the command, started in a fresh interpreter
    # (vaelib.speed not yet imported), must know that kind of model
    from vaelib.speed import TunedVAE

    torch.manual_seed(0)
    save_checkpoint(TunedVAE(4, hidden_sizes=[16], norm="layer", center_input=True), tmp_path / "tuned.pt")
    run = subprocess.run([sys.executable, "-m", "vaelib.evaluate", str(tmp_path / "tuned.pt"), "--k", "2", "--limit", "3",
                          "--no-progress", "--data-dir", str(mnist_dir)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["nll"] > 0


def test_command_line_refuses_to_update_a_missing_record(tmp_path, mnist_dir):
    model = VAE(latent_dim=2, hidden_sizes=(8,))
    save_checkpoint(model, tmp_path / "bare.pt")
    with pytest.raises(SystemExit, match="no JSON record"):
        evaluate.main([str(tmp_path / "bare.pt"), "--k", "2", "--limit", "2", "--update-record", "--no-progress",
                       "--data-dir", str(mnist_dir)])


# ---------------------------------------------------------------- inputs found by the input audit
def test_scores_reject_bad_batch_sizes(model2):
    images = torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for bad in (0, -1):  # -1 used to report uninitialized memory as the NLL; 0 divided by zero
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            evaluate.test_scores(model2, images, k=2, batch_size=bad)
    with pytest.raises(TypeError, match="k must be an integer"):
        evaluate.test_scores(model2, images, k=2.5)


def test_command_line_refuses_a_corrupt_record(tmp_path, mnist_dir):
    from vaelib.checkpoints import CheckpointError

    save_checkpoint(VAE(latent_dim=2, hidden_sizes=(8,)), tmp_path / "m.pt", record={"settings": {"seed": 4}})
    (tmp_path / "m.json").write_text('{"settings": {"seed": 4')  # cut short
    with pytest.raises(CheckpointError, match=r"m\.json is corrupt"):
        evaluate.main([str(tmp_path / "m.pt"), "--k", "2", "--limit", "2", "--no-progress", "--data-dir", str(mnist_dir)])


# ---------------------------------------------------------------- found by mutation testing
def test_binarization_is_the_bernoulli_draw_of_the_given_seed(mnist_small):
    images = mnist_small[2][:50]
    probs = images.reshape(50, 784).float() / 255  # float32 grey levels, drawn in this order
    want = torch.bernoulli(probs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(binarized_test_set(images, seed=7).reshape(50, 784), want)


def test_a_gaussian_model_is_scored_on_the_grey_levels(mnist_small):
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden_sizes=(16,), likelihood="gaussian")
    images = mnist_small[2][:12]
    out = evaluate.test_scores(model, images, k=4, seed=3, batch_size=5)
    x = images.reshape(12, 784).float() / 255  # grey levels, not a Bernoulli draw
    neg_elbo, nll = _scores_by_hand(model, x, k=4, batch_size=5, seed=4)
    assert out["neg_elbo"] == pytest.approx(neg_elbo.mean().item(), rel=1e-6)
    assert out["nll"] == pytest.approx(nll.mean().item(), rel=1e-6)


def test_one_image_has_a_zero_spread_not_nan(model2, mnist_small):
    out = evaluate.test_scores(model2, mnist_small[2][:1], k=3, seed=1)
    assert out["images"] == 1
    assert out["nll_sd_per_image"] == 0.0 and out["nll_standard_error"] == 0.0


def test_command_line_scores_the_first_limit_images_with_the_documented_defaults(tmp_path, mnist_dir, capsys):
    from vaelib.data import load_mnist

    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden_sizes=(8,))
    save_checkpoint(model, tmp_path / "m.pt", record={"settings": {"seed": 4}})
    out = evaluate.main([str(tmp_path / "m.pt"), "--k", "3", "--limit", "7", "--no-progress",
                         "--data-dir", str(mnist_dir)])
    assert out["images"] == 7 and out["k"] == 3 and out["binarization_seed"] == 5
    images, _ = load_mnist("test", root=mnist_dir)
    direct = evaluate.test_scores(model, images[:7], k=3, seed=5)
    assert out["nll"] == pytest.approx(direct["nll"], rel=1e-9)
    assert out["neg_elbo"] == pytest.approx(direct["neg_elbo"], rel=1e-9)
    args = evaluate.build_parser().parse_args(["m.pt"])
    assert (args.k, args.seed, args.limit, args.batch_size, args.device) == (5000, None, None, 100, "auto")
    assert not args.update_record and not args.no_progress


@pytest.mark.parametrize("option", ["--limit", "--k", "--batch-size"])
@pytest.mark.parametrize("value", ["-9990", "0", "1.5"])
def test_command_line_refuses_counts_below_one(option, value, capsys):
    """--limit -9990 used to score the first 10 images (a slice [:-9990]) and report them as a result."""
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["m.pt", option, value])  # refused while parsing, before any file is read
    assert stop.value.code == 2
    assert f"argument {option}: expected a whole number >= 1" in capsys.readouterr().err
