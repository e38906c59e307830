"""Training on real MNIST: the loss falls, runs are reproducible, divergence stops with a message."""

import json
import math

import pytest
import torch

from vaelib import cli, shipped, training
from vaelib import train as vtrain
from vaelib.checkpoints import load_checkpoint, load_record
from vaelib.errors import TrainingDiverged
from vaelib.models import VAE, Autoencoder, paper_vae


def test_short_training_run_lowers_the_test_loss(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = paper_vae(2)
    before = training.evaluate(model, test_x, seed=1)
    history = vtrain.fit(model, train_x, test_x, epochs=3, batch_size=100, device="cpu", progress=False)
    after = history["test_neg_elbo"][-1]
    assert before["neg_elbo"] > 500, before  # an untrained decoder is near log 2 per pixel
    assert after < 215, history
    assert history["test_neg_elbo"][0] > history["test_neg_elbo"][-1] + 5, history
    assert history["epoch"] == [1, 2, 3] and history["steps"] == [60, 120, 180]
    assert history["device"].startswith("cpu")
    # the reported test loss is what evaluate computes on the final model with the same seed
    again = training.evaluate(model, test_x, seed=1)
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
    ev = training.evaluate(model, test_x[:300], beta=4.0, seed=2)
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
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 1, step 1"):
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


def test_warmup_linear_schedule_rises_for_a_tenth_of_the_steps_then_falls_to_zero():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = training.make_scheduler(opt, "warmup-linear", 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:10] == pytest.approx([0.5 * (t + 1) / 10 for t in range(10)])
    assert lrs[10:] == pytest.approx([0.5 * (100 - t) / 90 for t in range(10, 100)])
    assert opt.param_groups[0]["lr"] == 0.0  # after the last planned step
    assert max(lrs) == pytest.approx(0.5)


def test_adam_betas_reach_the_optimizer_and_bad_ones_are_refused(mnist_small):
    train_x = mnist_small[0][:256]
    seen = {}
    real = training.make_optimizer

    def spy(params, lr, weight_decay=0.0, betas=(0.9, 0.999), **kw):
        opt = real(params, lr, weight_decay, betas, **kw)
        seen["betas"] = opt.param_groups[0]["betas"]
        return opt

    from vaelib.speed import step as vcompiled  # the fast trainer's optimizer (fused_adam) is built there

    for engine, module in (("reference", vtrain), ("fast", vcompiled)):
        seen.clear()
        setattr(module, "make_optimizer", spy)
        try:
            cli.train_with(engine, VAE(2, hidden_sizes=(8,)), train_x, None, epochs=1, max_steps=2, betas=(0.8, 0.99),
                           progress=False, verbose=False)
        finally:
            setattr(module, "make_optimizer", real)
        assert seen["betas"] == (0.8, 0.99), engine
    for bad in [(0.9, 1.0), (-0.1, 0.9), (0.9,)]:
        with pytest.raises(ValueError, match="betas"):
            training.make_optimizer([torch.zeros(1, requires_grad=True)], 1e-3, betas=bad)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.pick_device(None).type == "cpu"
    assert training.pick_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        training.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training.pick_device("auto").type == "cuda"
    assert training.pick_device("cpu").type == "cpu"


def test_bad_arguments_are_refused(mnist_small):
    train_x, _, _, _ = mnist_small
    with pytest.raises(ValueError, match="binarize"):
        vtrain.fit(VAE(2), train_x[:10], binarize="sometimes", progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vtrain.fit(VAE(2), train_x[:10].float(), progress=False)


def test_command_line_writes_a_loadable_checkpoint_and_record(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run" / "vae2.pt"
    cli.main([
        "--latent-dim", "2", "--epochs", "2", "--paper", "--out", str(out), "--data-dir", str(mnist_dir),
        "--train-limit", "3000", "--no-progress", "--seed", "4",
    ])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = load_checkpoint(out)
    assert model.config["hidden_sizes"] == [500] and model.config["activation"] == "tanh"
    record = load_record(out)
    # --paper is recorded as what it builds: the settings name the model
    assert record["settings"]["paper"] is True
    assert record["settings"]["hidden"] == [500] and record["settings"]["activation"] == "tanh"
    assert record["settings"]["seed"] == 4 and record["data"]["train_images"] == 3000
    assert record["data"]["test_images"] == 10000
    assert len(record["seconds_per_epoch"]) == 2 and all(s > 0 for s in record["seconds_per_epoch"])
    assert record["device"].startswith("cpu") and record["torch"] == torch.__version__
    assert record["final"]["test_neg_elbo"] == printed["test_neg_elbo"] == record["history"]["test_neg_elbo"][-1]
    # the stored number is reproduced from the checkpoint on the real test set
    from vaelib.data import load_mnist

    test_x, _ = load_mnist("test", root=mnist_dir)
    ev = training.evaluate(model, test_x, seed=4 + 1)
    assert ev["neg_elbo"] == pytest.approx(record["final"]["test_neg_elbo"], rel=1e-5)


# ------------------------------------------------------------------ load_or_train (notebook 06)

from vaelib import checkpoints as vckpt  # noqa: E402


@pytest.fixture
def empty_pretrained(tmp_path, monkeypatch):
    """An empty folder in place of vaelib/pretrained/, so that nothing is shipped."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setattr(vckpt, "PRETRAINED_DIR", folder)
    return folder


def test_training_settings_come_from_the_table_then_the_record_then_overrides(empty_pretrained, mnist_small):
    s = shipped.training_settings(3)  # the modern recipe, as the shipped model was trained
    assert s["hidden_sizes"] == (512, 256) and s["activation"] == "gelu" and s["norm"] == "layer" and s["epochs"] == 100
    assert s["lr"] == 5e-3 and s["betas"] == (0.8, 0.99) and s["ema"] == 0.99 and s["engine"] == "fast" and s["bf16"]
    paper = shipped.training_settings(3, "paper")
    assert paper["hidden_sizes"] == (500,) and paper["activation"] == "tanh" and paper["epochs"] == 200
    assert paper["lr"] == 1e-3 and paper["schedule"] == "cosine" and paper["ema"] is None and paper["norm"] == "none"
    iwae = shipped.training_settings(50, "iwae")
    assert iwae["objective"] == "iwae" and iwae["k"] == 5 and iwae["hidden_sizes"] == (512, 256)
    assert shipped.training_settings(20, "autoencoder")["kind"] == "autoencoder"
    assert shipped.training_settings(7, "paper")["hidden_sizes"] == (500,)  # not shipped: the paper's network
    with pytest.raises(ValueError, match="kind must be one of"):
        shipped.training_settings(3, "tanh")
    assert shipped.training_settings(20, beta=4)["beta"] == 4.0
    unknown = shipped.training_settings(7)
    assert {k: unknown[k] for k in shipped.DEFAULT_SETTINGS} == {**shipped.DEFAULT_SETTINGS, "hidden_sizes": (512, 512)}
    assert shipped.training_settings(3, epochs=5, lr=3e-4)["epochs"] == 5
    with pytest.raises(TypeError, match="unknown training settings"):
        shipped.training_settings(3, epoch=5)
    # once a checkpoint is shipped, the settings in its record win over the table
    train_x, _, test_x, _ = mnist_small
    shipped.load_or_train(3, train=train_x[:500], test=test_x[:100], hidden_sizes=(8,), activation="relu",
                          epochs=1, schedule="constant", progress=False, out=vckpt.pretrained_path(3))
    s = shipped.training_settings(3)
    assert s["hidden_sizes"] == (8,) and s["activation"] == "relu" and s["epochs"] == 1 and s["schedule"] == "constant"


def test_load_or_train_trains_what_is_missing_then_loads_it(empty_pretrained, mnist_small):
    train_x, _, test_x, _ = mnist_small
    path = vckpt.pretrained_path(2)
    first = shipped.load_or_train(2, train=train_x[:1000], test=test_x[:300], hidden_sizes=(16,), epochs=2,
                                  progress=False, out=path)
    assert first.source == "trained" and path.is_file()
    rec = first.record
    assert rec["model"] == first.model.config and rec["settings"]["hidden"] == [16] and rec["settings"]["epochs"] == 2
    assert rec["history"]["epoch"] == [1, 2] and len(rec["seconds_per_epoch"]) == 2
    assert rec["data"] == {"train_images": 1000, "test_images": 300, "binarization": "dynamic",
                           "test_binarization": "one fixed Bernoulli sample of the test set drawn on the CPU with "
                                                "seed + 1 (vaelib.data.binarized_test_set); z from seed + 2"}
    assert rec["final"]["test_neg_elbo"] < rec["initial"]["neg_elbo"]  # the loss fell
    assert not first.model.training and next(first.model.parameters()).device.type == "cpu"
    # the record's final number is what the returned model gives on the same images with seed + 1
    again = training.evaluate(first.model, test_x[:300], seed=rec["settings"]["seed"] + 1)
    assert again["neg_elbo"] == pytest.approx(rec["final"]["test_neg_elbo"], rel=1e-6)

    loaded = shipped.load_or_train(2)
    assert loaded.source == "shipped" and loaded.record == json.loads(json.dumps(rec))
    for a, b in zip(loaded.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)
    # retrain=True with no overrides repeats the recorded run exactly (same settings, seed, data, device)
    redo = shipped.load_or_train(2, retrain=True, train=train_x[:1000], test=test_x[:300], progress=False)
    assert redo.source == "trained" and redo.record["settings"]["hidden"] == [16]
    for a, b in zip(redo.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_load_or_train_short_run_and_kinds(empty_pretrained, mnist_small):
    train_x, _, test_x, _ = mnist_small
    ae = shipped.load_or_train(4, "autoencoder", train=train_x, test=test_x[:200], hidden_sizes=(16,), max_steps=20,
                               progress=False)
    assert isinstance(ae.model, Autoencoder) and ae.record["history"]["steps"] == [20]
    assert ae.record["settings"]["max_steps"] == 20 and ae.record["settings"]["model"] == "autoencoder"
    assert ae.record["final"]["test_loss"] < ae.record["initial"]["loss"]
    beta = shipped.load_or_train(4, beta=4.0, train=train_x, test=test_x[:200], hidden_sizes=(16,), max_steps=10,
                                 progress=False)
    assert beta.record["settings"]["beta"] == 4.0 and "test_neg_elbo" in beta.record["final"]
    assert "--beta 4" in beta.record["command"] and "--max-steps 10" in beta.record["command"]
    # the paper's network was shipped from runs of the fast engine: retraining it uses that engine too (the
    # reference loop draws its random numbers in another order), and the record says so
    paper = shipped.load_or_train(3, "paper", train=train_x, test=test_x[:200], max_steps=5, progress=False,
                                  compile=False)
    assert paper.record["settings"]["engine"] == "fast" and "--engine fast" in paper.record["command"]
    assert paper.record["model"]["hidden_sizes"] == [500] and paper.record["model"]["activation"] == "tanh"
    assert paper.record["history"]["steps"] == [5] and paper.record["settings"]["bf16"]
    # the modern recipe builds the tuned network, initialized from the data, and trains it with the average
    modern = shipped.load_or_train(2, train=train_x, test=test_x[:200], max_steps=5, progress=False, compile=False,
                                   bf16=False, hidden_sizes=(32, 16))
    assert modern.record["model"]["kind"] == "tuned_vae" and modern.record["settings"]["ema"] == 0.99
    assert modern.record["final"]["test_loss"] < modern.record["initial"]["loss"]


def test_load_or_train_trains_exactly_what_the_command_line_trains(empty_pretrained, mnist_dir, tmp_path, capsys):
    out = tmp_path / "cli" / "vae3.pt"
    argv = ["--latent-dim", "7", "--epochs", "1", "--hidden", "32", "--activation", "elu", "--out", str(out),
            "--data-dir", str(mnist_dir), "--train-limit", "2000", "--max-steps", "12", "--seed", "7",
            "--schedule", "cosine", "--no-progress", "--norm", "layer", "--center-input", "--init-from-data",
            "--ema", "0.9", "--betas", "0.8", "0.99"]
    cli.main(argv)
    capsys.readouterr()
    from vaelib.data import load_mnist

    train_x, _ = load_mnist("train", root=mnist_dir)
    test_x, _ = load_mnist("test", root=mnist_dir)
    ours = shipped.load_or_train(7, retrain=True, train=train_x[:2000], test=test_x, hidden_sizes=(32,),
                                  activation="elu", epochs=1, seed=7, schedule="cosine", max_steps=12, progress=False,
                                  norm="layer", center_input=True, init_from_data=True, ema=0.9, betas=(0.8, 0.99))
    from_cli = load_checkpoint(out)
    for a, b in zip(ours.model.state_dict().values(), from_cli.state_dict().values()):
        assert torch.equal(a, b)
    cli_record = load_record(out)
    assert ours.record["final"] == cli_record["final"]
    skip = {"out", "data_dir", "train_limit", "no_progress"}
    assert {k: v for k, v in ours.record["settings"].items() if k not in skip} == {
        k: v for k, v in cli_record["settings"].items() if k not in skip
    }
    # the command stored in the record is one the command line accepts
    stored = ours.record["command"].split()[3:]
    assert cli.build_parser().parse_args(stored).hidden == [32]


def test_command_line_trains_the_tuned_recipe(mnist_dir, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    cli.main(["--latent-dim", "4", "--hidden", "32", "32", "--activation", "gelu", "--norm", "layer",
              "--center-input", "--init-from-data", "--betas", "0.8", "0.99", "--schedule", "warmup-linear",
              "--lr", "3e-3", "--engine", "fast", "--epochs", "1", "--max-steps", "6", "--train-limit", "1000",
              "--data-dir", str(mnist_dir), "--out", str(out), "--no-progress"])
    capsys.readouterr()
    model, record = load_checkpoint(out), load_record(out)
    from vaelib.speed import TunedVAE

    assert type(model) is TunedVAE and record["model"]["kind"] == "tuned_vae"
    assert record["model"]["norm"] == "layer" and record["model"]["center_input"] is True
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 4
    from vaelib.data import load_mnist

    train_x, _ = load_mnist("train", root=mnist_dir)
    mean = train_x[:1000].reshape(-1, 784).double().mean(0) / 255
    torch.testing.assert_close(model.encoder[0].offset.double(), mean, atol=1e-6, rtol=0)  # a buffer: not trained
    assert record["settings"]["betas"] == [0.8, 0.99]
    assert record["history"]["lr"] == [0.0]  # the warmup-linear schedule ends at 0 after the planned 6 steps
    with pytest.raises(SystemExit):
        cli.main(["--latent-dim", "4", "--model", "autoencoder", "--init-from-data", "--out", str(out),
                  "--data-dir", str(mnist_dir), "--max-steps", "1", "--no-progress"])


def test_shipped_commands_are_the_commands_of_the_shipped_records():
    """The table used to retrain a missing model says what the shipped records say, and every model
    of a family was trained with its family's recipe."""
    assert sorted(shipped.SHIPPED_COMMANDS) == vckpt.list_pretrained()
    ignore = {"out", "no_progress"}
    for stem in vckpt.list_pretrained():
        record = json.loads(vckpt.record_path(vckpt.PRETRAINED_DIR / f"{stem}.pt").read_text())
        ran = vars(cli.parse_args(record["command"].split()[3:]))
        table = vars(cli.parse_args(shipped.SHIPPED_COMMANDS[stem].split() + ["--out", "x.pt"]))
        assert {k: v for k, v in ran.items() if k not in ignore} == {k: v for k, v in table.items() if k not in ignore}
        assert record["settings"]["hidden"] == record["model"]["hidden_sizes"], stem  # the settings say what was built
        assert record["settings"]["activation"] == record["model"]["activation"], stem


def test_load_or_train_keeps_a_model_it_trained_in_its_cache(tmp_path, mnist_small, monkeypatch):
    train_x, _, test_x, _ = mnist_small
    monkeypatch.setenv("VAELIB_CACHE", str(tmp_path))
    small = dict(hidden_sizes=(16,), epochs=1, batch_size=500)
    # latent 7 is never shipped, so the first call trains and keeps the model in the cache
    first = shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True, **small)
    kept = tmp_path / "models" / "vae_latent7.pt"
    assert first.source == "trained" and kept.is_file() and (tmp_path / "models" / "vae_latent7.pt.sha256").is_file()
    again = shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True, **small)
    assert again.source == "cached"
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert again.record["final"] == first.record["final"]
    # other settings, a short run, or retrain=True never take the cached model
    other = shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True,
                                  **{**small, "lr": 2e-3})
    assert other.source == "trained"
    short = shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True,
                                  max_steps=1, **small)
    assert short.source == "trained"
    forced = shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True,
                                   retrain=True, **small)
    assert forced.source == "trained"
    # a tampered cached file is refused, not silently loaded
    kept.write_bytes(kept.read_bytes()[:-10] + b"0123456789")
    from vaelib.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="checksum"):
        shipped.load_or_train(7, train=train_x[:1000], test=test_x[:200], progress=False, cache=True, **small)


# ---------------------------------------------------------------- inputs found by the input audit
def _grey_images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)


def test_evaluate_refuses_bad_batch_sizes_binarizations_and_betas():
    model, images = VAE(2, hidden_sizes=(8,)), _grey_images()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        training.evaluate(model, images, batch_size=-1)  # used to return all-zero losses
    with pytest.raises(ValueError, match="binarize must be one of"):
        training.evaluate(model, images, binarize="dynamc")  # used to evaluate on grey levels silently
    with pytest.raises(ValueError, match="beta"):
        training.evaluate(model, images, beta=math.nan)  # used to report a nan loss


def test_fit_refuses_empty_or_nan_image_sets():
    images = _grey_images()
    with pytest.raises(ValueError, match="non-empty set of images"):  # used to be a raw reshape error
        vtrain.fit(VAE(2, hidden_sizes=(8,)), images[:0], images, epochs=1, progress=False, verbose=False)
    with pytest.raises(ValueError, match="non-empty set of images"):
        training.evaluate(VAE(2, hidden_sizes=(8,)), images[:0])
    nan_images = torch.full((8, 28, 28), math.nan)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # used to be a raw torch.bernoulli error
        vtrain.fit(VAE(2, hidden_sizes=(8,)), nan_images, images, epochs=1, progress=False, verbose=False)


def test_fit_refuses_non_integer_counts_and_negative_max_steps():
    images = _grey_images()
    kwargs = {"progress": False, "verbose": False}
    with pytest.raises(TypeError, match="epochs must be an integer"):
        vtrain.fit(VAE(2, hidden_sizes=(8,)), images, epochs=1.5, **kwargs)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        vtrain.fit(VAE(2, hidden_sizes=(8,)), images, batch_size=16.5, **kwargs)
    with pytest.raises(ValueError, match="max_steps must be >= 0"):  # used to train nothing, silently
        vtrain.fit(VAE(2, hidden_sizes=(8,)), images, max_steps=-1, **kwargs)
    with pytest.raises(ValueError, match="beta"):
        vtrain.fit(VAE(2, hidden_sizes=(8,)), images, beta=math.inf, **kwargs)
    # zero steps with the cosine schedule used to divide by zero
    history = vtrain.fit(VAE(2, hidden_sizes=(8,)), images, max_steps=0, schedule="cosine", **kwargs)
    assert history["steps"] == []


def test_cosine_schedule_follows_the_half_cosine_and_then_stays_at_a_twentieth():
    lr, planned = 0.4, 40
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = training.make_scheduler(opt, "cosine", planned)
    lrs = []
    for _ in range(planned + 10):  # ten steps past the plan
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [lr / 20 + (lr - lr / 20) * 0.5 * (1 + math.cos(math.pi * min(t, planned) / planned))
            for t in range(planned + 10)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert lrs[0] == pytest.approx(lr) and lrs[planned:] == pytest.approx([lr / 20] * 10)


def test_warmup_linear_schedule_stays_at_zero_past_the_plan():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = training.make_scheduler(opt, "warmup-linear", 20)
    lrs = []
    for _ in range(25):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[19:] == [0.0] * 6  # never negative


def test_evaluate_averages_an_autoencoders_loss_over_images_not_batches():
    torch.manual_seed(0)
    ae = Autoencoder(2, hidden_sizes=(16,))
    images = torch.rand(20, 784)
    want = torch.nn.functional.binary_cross_entropy_with_logits(ae(images), images, reduction="none").sum(-1).mean()
    ev = training.evaluate(ae, images, batch_size=7, binarize="none")  # batches of 7, 7 and 6 images
    assert ev["loss"] == pytest.approx(want.item(), rel=1e-5)


def test_the_reported_test_loss_weights_the_kl_by_beta(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    model = VAE(4, hidden_sizes=(32,))
    h = vtrain.fit(model, train_x[:300], test_x[:200], epochs=1, batch_size=100, beta=0.25, seed=3, progress=False,
                   verbose=False)
    ev = training.evaluate(model, test_x[:200], seed=4)  # beta = 1
    assert h["test_loss"][-1] == pytest.approx(ev["reconstruction"] + 0.25 * ev["kl"], rel=1e-6)
    assert h["test_neg_elbo"][-1] == pytest.approx(ev["neg_elbo"], rel=1e-6)


@pytest.mark.parametrize("option", ["--train-limit", "--latent-dim", "--epochs", "--hidden", "--batch-size",
                                    "--max-steps", "--k"])
def test_command_line_refuses_counts_below_one(option, capsys, tmp_path):
    """--train-limit -5 used to train on all but the last 5 images (a slice [:-5]); the other counts
    were refused only later, by fit or the model, with a traceback instead of a usage message."""
    for value in ("-5", "0", "2.5"):
        args = ["--latent-dim", "2", "--out", str(tmp_path / "unused.pt")] + [option, value]
        with pytest.raises(SystemExit) as stop:
            cli.main(args)
        assert stop.value.code == 2
        assert f"argument {option}: expected a whole number >= 1, got '{value}'" in capsys.readouterr().err


# ---------------------------------------------------------------- the layout of the training modules
def test_train_is_the_reference_loop_and_reexports_what_notebooks_use():
    import inspect

    assert vtrain.evaluate is training.evaluate and vtrain.describe_device is training.describe_device
    assert vtrain.OBJECTIVES == ("elbo", "iwae")
    options = inspect.signature(vtrain.fit).parameters
    assert not {"engine", "bf16", "compile"} & set(options), sorted(options)
    assert "vaelib.data.binarized_test_set" in training.TEST_BINARIZATION
    assert training.BINARIZATIONS == ("dynamic", "static", "none")
    assert training.SCHEDULES == ("constant", "cosine", "warmup-linear")


def test_training_images_flattens_checks_once_and_keeps_grey_levels():
    images = _grey_images(5)
    x = training.training_images(images)
    assert x.dtype == torch.uint8 and x.shape == (5, 784) and torch.equal(x, images.reshape(5, 784))
    assert torch.equal(training.training_images((images, torch.arange(5))), x)  # an (images, labels) pair
    floats = training.training_images(images.double() / 255)  # floats in [0, 1]: float32, as to_float gives them
    assert floats.shape == (5, 784) and floats.dtype == torch.float32
    torch.testing.assert_close(floats, images.reshape(5, 784).float() / 255)
    with pytest.raises(ValueError, match=r"\[0, 1\].*to_float"):  # grey levels 0..255 as floats
        training.training_images(images.float())
    with pytest.raises(TypeError, match="image tensor or \\(images, labels\\)"):
        training.training_images([[0.0] * 784])


def test_explorer_model_takes_your_checkpoint_and_refuses_a_wrong_one(tmp_path):
    """Notebook 07's checkpoint policy (vaelib.shipped.explorer_model): yours when given, checked."""
    from vaelib import shipped
    from vaelib.checkpoints import save_checkpoint

    record = {"settings": {"epochs": 1, "max_steps": None, "train_limit": None, "beta": 1.0}}
    save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "mine.pt", record=record)
    got = shipped.explorer_model(2, tmp_path / "mine.pt")
    assert got.source == "yours" and got.model.latent_dim == 2
    assert not got.trained_in_full  # one epoch is not the shipped model's run
    with pytest.raises(ValueError, match="latent size 2; it must be a VAE with latent size 20"):
        shipped.explorer_model(20, tmp_path / "mine.pt")
    save_checkpoint(VAE(2, hidden_sizes=(8,), likelihood="gaussian"), tmp_path / "grey.pt", record=record)
    with pytest.raises(ValueError, match="gaussian decoder"):
        shipped.explorer_model(2, tmp_path / "grey.pt")
    with pytest.raises(FileNotFoundError, match="there is no file"):
        shipped.explorer_model(2, tmp_path / "missing.pt")
    assert shipped.explorer_model(2).source == "shipped"
