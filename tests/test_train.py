"""Training on real MNIST: the loss falls, runs are reproducible, divergence stops with a message."""

import json
import math

import pytest
import torch

from vaelib import train as vtrain
from vaelib.checkpoints import load_checkpoint, load_record
from vaelib.models import VAE, Autoencoder, paper_vae


def test_short_training_run_lowers_the_test_loss(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = paper_vae(2)
    before = vtrain.evaluate(model, test_x, seed=1)
    history = vtrain.fit(model, train_x, test_x, epochs=3, batch_size=100, device="cpu", progress=False)
    after = history["test_neg_elbo"][-1]
    assert before["neg_elbo"] > 500, before  # an untrained decoder is near log 2 per pixel
    assert after < 215, history
    assert history["test_neg_elbo"][0] > history["test_neg_elbo"][-1] + 5, history
    assert history["epoch"] == [1, 2, 3] and history["steps"] == [60, 120, 180]
    assert history["device"].startswith("cpu")
    # the reported test loss is what evaluate computes on the final model with the same seed
    again = vtrain.evaluate(model, test_x, seed=1)
    assert again["neg_elbo"] == pytest.approx(after, rel=1e-6)
    assert again["neg_elbo"] == pytest.approx(again["reconstruction"] + again["kl"], rel=1e-9)


def test_the_same_seed_gives_the_same_run(mnist_small):
    train_x, _, test_x, _ = mnist_small
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = VAE(2, hidden_sizes=(32,))
        h = vtrain.fit(model, train_x[:1000], test_x[:500], epochs=1, seed=5, progress=False)
        runs.append((h["train_loss"], h["test_loss"], model.decode(torch.ones(1, 2))))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    torch.testing.assert_close(runs[0][2], runs[1][2], rtol=0, atol=0)


def test_beta_weights_the_kl_in_the_reported_loss(mnist_small):
    _, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = VAE(4, hidden_sizes=(32,))
    ev = vtrain.evaluate(model, test_x[:300], beta=4.0, seed=2)
    assert ev["loss"] == pytest.approx(ev["reconstruction"] + 4.0 * ev["kl"], rel=1e-9)
    assert ev["neg_elbo"] == pytest.approx(ev["reconstruction"] + ev["kl"], rel=1e-9)


def test_autoencoder_trains_too(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    ae = Autoencoder(2, hidden_sizes=(64,))
    h = vtrain.fit(ae, train_x[:2000], test_x[:500], epochs=2, progress=False)
    assert h["test_loss"][1] < h["test_loss"][0]


def test_a_nan_loss_stops_training_with_a_clear_message(mnist_small):
    train_x, _, _, _ = mnist_small
    model = VAE(2, hidden_sizes=(16,))
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = math.nan
    with pytest.raises(vtrain.TrainingDiverged, match=r"became nan at epoch 1, step 1"):
        vtrain.fit(model, train_x[:500], epochs=1, progress=False)


def test_max_steps_stops_early(mnist_small):
    train_x, _, test_x, _ = mnist_small
    h = vtrain.fit(VAE(2, hidden_sizes=(16,)), train_x, test_x[:200], epochs=5, max_steps=7, progress=False)
    assert h["steps"] == [7] and len(h["test_loss"]) == 1


def test_cosine_schedule_decays_the_learning_rate_to_a_twentieth(mnist_small):
    train_x, _, _, _ = mnist_small
    h = vtrain.fit(VAE(2, hidden_sizes=(16,)), train_x[:1280], epochs=4, lr=2e-3, schedule="cosine", progress=False)
    assert h["lr"][0] < 2e-3 and h["lr"] == sorted(h["lr"], reverse=True)
    assert h["lr"][-1] == pytest.approx(2e-3 / 20, rel=1e-9)
    flat = vtrain.fit(VAE(2, hidden_sizes=(16,)), train_x[:1280], epochs=2, lr=2e-3, progress=False)
    assert flat["lr"] == [2e-3, 2e-3]
    with pytest.raises(ValueError, match="schedule"):
        vtrain.fit(VAE(2), train_x[:10], schedule="linear", progress=False)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vtrain.pick_device(None).type == "cpu"
    assert vtrain.pick_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        vtrain.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vtrain.pick_device("auto").type == "cuda"
    assert vtrain.pick_device("cpu").type == "cpu"


def test_bad_arguments_are_refused(mnist_small):
    train_x, _, _, _ = mnist_small
    with pytest.raises(ValueError, match="binarize"):
        vtrain.fit(VAE(2), train_x[:10], binarize="sometimes", progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vtrain.fit(VAE(2), train_x[:10].float(), progress=False)


def test_command_line_writes_a_loadable_checkpoint_and_record(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run" / "vae2.pt"
    vtrain.main([
        "--latent-dim", "2", "--epochs", "2", "--paper", "--out", str(out), "--data-dir", str(mnist_dir),
        "--train-limit", "3000", "--no-progress", "--seed", "4",
    ])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = load_checkpoint(out)
    assert model.config["hidden_sizes"] == [500] and model.config["activation"] == "tanh"
    record = load_record(out)
    assert record["settings"]["seed"] == 4 and record["data"]["train_images"] == 3000
    assert record["data"]["test_images"] == 10000
    assert len(record["seconds_per_epoch"]) == 2 and all(s > 0 for s in record["seconds_per_epoch"])
    assert record["device"].startswith("cpu") and record["torch"] == torch.__version__
    assert record["final"]["test_neg_elbo"] == printed["test_neg_elbo"] == record["history"]["test_neg_elbo"][-1]
    # the stored number is reproduced from the checkpoint on the real test set
    from vaelib.data import load_mnist

    test_x, _ = load_mnist("test", root=mnist_dir)
    ev = vtrain.evaluate(model, test_x, seed=4 + 1)
    assert ev["neg_elbo"] == pytest.approx(record["final"]["test_neg_elbo"], rel=1e-5)
