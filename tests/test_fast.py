"""The fast trainer computes what the reference loop computes."""

import json
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelib import cli
from vaelib import speed as fast
from vaelib.bounds import elbo, iwae_loss, log_weights
from vaelib.cli import train_with
from vaelib.data import binarize_dynamic
from vaelib.errors import TrainingDiverged
from vaelib.models import VAE, Autoencoder
from vaelib.speed import TunedVAE
from vaelib.train import fit
from vaelib.training import evaluate, make_optimizer, make_scheduler


def test_binarize_batch_is_bernoulli_of_the_grey_level():
    grey = torch.arange(256, dtype=torch.uint8).repeat_interleave(4000).reshape(256, 4000)
    u = torch.rand(grey.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = fast.binarize_batch(grey, u)
    assert x.dtype == torch.float64 and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(x[0] == 0) and torch.all(x[255] == 1)
    p = torch.arange(256, dtype=torch.float64) / 255
    freq = x.mean(1)
    se = torch.sqrt(p * (1 - p) / 4000).clamp_min(1e-12)
    z = ((freq - p) / se)[1:255]
    assert z.abs().max() < 5, z.abs().max()
    # and the same uniforms give the same draws: the threshold is exact, u < g / 255
    assert torch.equal(x, (u < grey.double() / 255).double())


@pytest.mark.parametrize("shape", [(64, 784), (5, 28, 28), (784,)])
def test_binarize_batch_draws_what_binarize_dynamic_draws(shape):
    """Given the uniforms binarize_dynamic would draw (torch.rand(shape) from the same generator), binarize_batch
    turns on the same pixels: the compiled step binarizes exactly as vaelib.data does, draw for draw."""
    grey = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    grey.view(-1)[:2] = torch.tensor([0, 255], dtype=torch.uint8)
    for seed in range(3):
        g, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        got = fast.binarize_batch(grey, torch.rand(grey.shape, generator=g))
        want = binarize_dynamic(grey, generator=g2)
        assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want), seed
        # and both generators are left in the same state: the draws that follow agree too
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=g2))


def test_binarize_batch_refuses_grey_levels_that_are_not_uint8():
    u = torch.rand(2, 784)
    with pytest.raises(TypeError, match="uint8 grey levels"):
        fast.binarize_batch(torch.full((2, 784), 0.5), u)  # floats in [0, 1] would give all zeros
    with pytest.raises(TypeError, match="uniforms must be floats"):
        fast.binarize_batch(torch.full((2, 784), 128, dtype=torch.uint8), torch.zeros(2, 784, dtype=torch.uint8))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fused_loss_equals_the_checked_elbo(likelihood):
    torch.manual_seed(1)
    model = VAE(7, hidden_sizes=(32, 16), likelihood=likelihood, sigma=0.3).double()
    x = torch.rand(50, 784, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    eps = torch.randn(50, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rec, kl = fast.vae_loss_sums(model, x, eps)
    terms = elbo(model, x, generator=torch.Generator().manual_seed(5), return_terms=True)  # draws the same eps
    torch.testing.assert_close(rec, -terms.reconstruction.sum(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(kl, terms.kl.sum(), rtol=1e-12, atol=1e-9)
    # the gradients agree too: the same loss, not just the same value
    beta = 0.7
    g_fast = torch.autograd.grad((rec + beta * kl) / 50, list(model.parameters()))
    loss_ref = -elbo(model, x, beta=beta, generator=torch.Generator().manual_seed(5)).mean()
    g_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("likelihood", "binarize"), [("bernoulli", "dynamic"), ("bernoulli", "static"),
                                                     ("bernoulli", "none"), ("gaussian", "none")])
def test_frozen_evaluation_equals_evaluate(likelihood, binarize):
    torch.manual_seed(2)
    model = TunedVAE(6, hidden_sizes=(40,), likelihood=likelihood, sigma=0.4, norm="layer",
                     center_input=True).double()
    images = torch.randint(0, 256, (230, 784), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    model.init_output_bias(images)
    draws = fast.frozen_test_draws(model, images, batch_size=100, seed=9, binarize=binarize)
    assert [x.shape[0] for x, _ in draws] == [100, 100, 30]
    for beta in (1.0, 0.3):
        got = fast.evaluate_frozen(model, draws, beta=beta)
        want = evaluate(model, images, beta=beta, batch_size=100, seed=9, binarize=binarize)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
    # the draws are fixed: new weights change the result, evaluate agrees again, and the model's mode is kept
    with torch.no_grad():
        model.decoder[-1].bias.add_(0.5)
    model.train()
    got = fast.evaluate_frozen(model, draws)
    assert got["neg_elbo"] == pytest.approx(evaluate(model, images, batch_size=100, seed=9, binarize=binarize)["neg_elbo"],
                                            rel=1e-12)
    assert model.training
    # another seed draws other numbers (ε always, the binarization too where there is one)
    other = fast.evaluate_frozen(model, fast.frozen_test_draws(model, images, 100, seed=10, binarize=binarize))
    assert other["neg_elbo"] != pytest.approx(got["neg_elbo"], rel=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float64, torch.float32]),
       lr=st.floats(1e-4, 1e-1), beta1=st.floats(0.0, 0.95), beta2=st.floats(0.9, 0.9999),
       weight_decay=st.sampled_from([0.0, 0.0, 1e-3, 0.3]), ema=st.sampled_from([None, 0.9, 0.999]))
def test_adam_update_takes_the_optimizers_own_steps(seed, dtype, lr, beta1, beta2, weight_decay, ema):
    """adam_update_ (the compiled step's optimizer) continues the optimizer's state exactly as its own step()
    would: Adam without weight decay, AdamW with it, under a changing learning rate, with gradients from 1e-7
    to 10, and the moving average follows. float64: equal to 1e-12; float32: rounding order only."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 7)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opts = [make_optimizer(ps, lr, weight_decay, (beta1, beta2), fused=True) for ps in (ours, theirs)]
    schedules = [make_scheduler(o, "warmup-linear", 40) for o in opts]
    averages = [[p.detach().clone() for p in ps] for ps in (ours, theirs)]
    for t in range(1, 41):
        grads = [torch.randn(s, generator=gen, dtype=dtype) * 10.0 ** torch.randint(-7, 2, (), generator=gen)
                 for s in shapes]
        for ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        opts[1].step()
        if ema is not None:
            torch._foreach_lerp_(averages[1], theirs, 1.0 - ema)
        if t == 1:  # the optimizer's own first step creates the state
            opts[0].step()
            if ema is not None:
                torch._foreach_lerp_(averages[0], ours, 1.0 - ema)
        else:
            states, adam_settings = fast.adam_states(opts[0])
            fast.adam_update_(ours, states, fast.adam_scalars(opts[0], t, dtype), **adam_settings,
                              averaged=averages[0] if ema is not None else None, ema=ema)
            assert all(p.grad is None for p in ours)
        for s in schedules:
            s.step()
    rel = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(ours + averages[0], theirs + averages[1]):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rel, atol=rel * b.abs().max().item())
    for a, b in zip(ours, theirs):
        sa, sb = opts[0].state[a], opts[1].state[b]
        assert sa["step"].item() == sb["step"].item() == 40
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=rel, atol=rel * sb[key].abs().max().item())


def test_adam_states_refuses_what_adam_update_does_not_follow():
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="no state yet for parameters \\[0\\]"):
        fast.adam_states(torch.optim.Adam(params))
    for opt in (torch.optim.Adam(params, weight_decay=0.1), torch.optim.Adam(params, amsgrad=True),
                torch.optim.SGD(params, lr=0.1), torch.optim.Adam([{"params": params}, {"params": [torch.ones(1)]}])):
        with pytest.raises(ValueError, match="follows torch.optim.Adam without weight decay"):
            fast.adam_states(opt)


def test_fast_and_reference_training_reach_the_same_loss(mnist_small):
    train_x, _, test_x, _ = mnist_small
    results = {}
    for engine in ("reference", "fast"):
        torch.manual_seed(0)
        model = VAE(10, hidden_sizes=(128,))
        h = train_with(engine, model, train_x, test_x[:1000], epochs=3, batch_size=100, lr=2e-3, seed=0,
                       progress=False, verbose=False)
        results[engine] = h
    ref, fst = results["reference"], results["fast"]
    assert set(ref) - {"engine", "evals"} <= set(fst)
    assert fst["engine"] == "fast" and fst["steps"] == ref["steps"] == [60, 120, 180]
    # training helped, and on the CPU the two engines draw the same random numbers in the same order, so
    # they follow the same trajectory: every epoch's numbers agree up to float32 rounding
    for h in (ref, fst):
        assert h["test_neg_elbo"][-1] < h["test_neg_elbo"][0] - 10
    for key in ("train_loss", "test_loss", "test_neg_elbo", "test_kl"):
        assert fst[key] == pytest.approx(ref[key], rel=1e-5), (key, fst[key], ref[key])


@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_compiled_step_trains_like_the_eager_one(mnist_small, backward):
    # compiled: with the written-out pass (manual) the whole step, Adam's update and the moving average included;
    # with autograd the loss. The benchmark's model, batch and recipe; 1,300 images make epochs of 10 full batches
    # and one of 20 images, which must not compile again
    import torch._dynamo

    train_x, _, test_x, _ = mnist_small
    # forget what earlier tests compiled: this test counts its own compilations
    torch._dynamo.reset()
    runs, models = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        models[compiled] = TunedVAE(50, hidden_sizes=(512, 256), activation="gelu", norm="layer", center_input=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            runs[compiled] = fast.fit_fast(models[compiled], train_x[:1300], test_x[:500], epochs=2, batch_size=128,
                                           lr=5e-3, betas=(0.8, 0.99), schedule="warmup-linear", ema=0.99, seed=0,
                                           compile=compiled, backward=backward, progress=False, verbose=False)
    eager, compiled = runs[False], runs[True]
    assert compiled["steps"] == eager["steps"] == [11, 22]
    # the same draws and the same loss: the two runs differ only by rounding (float32)
    for key in ("train_loss", "test_neg_elbo"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key
    assert eager["test_neg_elbo"][-1] < eager["test_neg_elbo"][0] - 5  # and it trained
    # and so do the weights training leaves (the moving average): Adam took the same steps. Rounding differences
    # grow over 22 steps to 1.6e-4 of the largest weight (manual) and 3.1e-3 (autograd, the compiled loss); in the
    # compiled whole step an Adam eps of 1e-6 instead of 1e-8 gave 0.05, no moving average 0.6
    for (name, a), b in zip(models[True].named_parameters(), models[False].parameters()):
        worst = ((a - b).abs().max() / b.abs().max()).item()
        assert worst < 1e-2, (name, worst)


@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_a_step_that_cannot_be_compiled_stops_training_with_advice(backward):
    # no working C++ compiler (inductor's compiler set to /bin/false, its caches off so that nothing compiled
    # earlier is reused): the first compiled step raises CompileFailed, which says how to train instead
    import torch._dynamo
    import torch._inductor.config

    images = torch.randint(0, 256, (64, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    torch._dynamo.reset()
    with torch._inductor.config.patch({"cpp.cxx": (None, "/bin/false"), "force_disable_caches": True}):
        with pytest.raises(fast.CompileFailed, match="C\\+\\+ compiler.*compile=False") as caught:
            fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, epochs=1, batch_size=16, compile=True, backward=backward,
                          progress=False, verbose=False)
    assert isinstance(caught.value.__cause__, torch._dynamo.exc.BackendCompilerFailed)
    torch._dynamo.reset()


def test_command_line_turns_a_failed_compilation_into_advice(tmp_path, mnist_dir, monkeypatch):
    def failing(*args, **kwargs):
        raise fast.CompileFailed("torch.compile could not compile the training step (no compiler); ... --compile")

    monkeypatch.setattr(cli, "fit_fast", failing)  # where the command line looks it up
    with pytest.raises(SystemExit, match="could not compile the training step"):
        cli.main(["--latent-dim", "2", "--hidden", "8", "--epochs", "1", "--engine", "fast", "--compile",
                  "--train-limit", "200", "--no-progress", "--out", str(tmp_path / "c.pt"), "--data-dir",
                  str(mnist_dir)])
    assert not (tmp_path / "c.pt").exists()


def test_compiled_step_follows_adamw_and_static_binarization(mnist_small):
    # the compiled whole step with decoupled weight decay (AdamW), a moving average and static binarization
    # (no uniforms: the grey levels of a binarized set); measured: weights within 4.6e-6 of the eager run's, and
    # 3.3e-3 away when the compiled update left out the weight decay
    train_x, _, test_x, _ = mnist_small
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = VAE(8, hidden_sizes=(64,))
        h = fast.fit_fast(model, train_x[:1000], test_x[:300], epochs=2, batch_size=100, lr=3e-3, weight_decay=0.01,
                          ema=0.95, binarize="static", seed=0, compile=compiled, progress=False, verbose=False)
        runs[compiled] = (h, [p.detach().clone() for p in model.parameters()])
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    assert comp["test_neg_elbo"] == pytest.approx(eager["test_neg_elbo"], rel=1e-5)
    assert eager["test_neg_elbo"][-1] < eager["test_neg_elbo"][0] - 50  # it trained
    for a, b in zip(w_comp, w_eager):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


def test_bfloat16_products_train_like_float32(mnist_small):
    """``bf16=True`` changes the rounding of the matrix products, not the training: with the same draws the
    test -ELBO follows float32's within 0.3 nats (measured: 0.06 at most), through the written-out pass (eager
    or compiled) and through autocast alike, and the weights and the evaluations stay float32. The runs do
    differ (bfloat16 is really used)."""
    train_x, _, test_x, _ = mnist_small
    runs = {}
    for how, bf16, backward in (("fp32", False, "manual"), ("manual", True, "manual"), ("autocast", True, "autograd"),
                                ("compiled", True, "manual")):
        torch.manual_seed(0)
        model = TunedVAE(16, hidden_sizes=(128, 64), activation="gelu", norm="layer", center_input=True)
        model.init_from_data(train_x[:3000], logvar=-6.0)
        runs[how] = fast.fit_fast(model, train_x[:3000], test_x[:1000], epochs=3, batch_size=100, lr=5e-3, seed=0,
                                  ema=0.9, progress=False, verbose=False, bf16=bf16, backward=backward,
                                  compile=how == "compiled")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[how]["model"] = model
    want = runs["fp32"]["test_neg_elbo"]
    assert want[-1] < want[0] - 10  # it trained
    for how in ("manual", "autocast", "compiled"):
        got = runs[how]["test_neg_elbo"]
        assert got == pytest.approx(want, abs=0.3), (how, got, want)
        assert got != pytest.approx(want, rel=1e-5), how  # not float32 in disguise
        # the reported test numbers are evaluate's (seed + 1), in float32, of the model that training left
        again = evaluate(runs[how]["model"], test_x[:1000], seed=1,
                         batch_size=fast.eval_batch_size_for(torch.device("cpu")))
        assert again["neg_elbo"] == pytest.approx(got[-1], rel=1e-5)


def test_bfloat16_on_hardware_without_it_is_measured_and_warned_about(monkeypatch):
    # limited to AVX2 (no bfloat16 instructions), oneDNN multiplies bfloat16 far more slowly than float32; the
    # quick check sees it (with the full instruction set it sees whatever this CPU does, 2 times faster on AVX-512
    # BF16); the variable is read when torch starts, hence a fresh interpreter
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ONEDNN_MAX_CPU_ISA limits x86 instruction sets only")
    code = "from vaelib.speed import bf16_matmul_speedup; print(bf16_matmul_speedup())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    slow = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert 0 < slow < 0.8, slow
    assert 0 < fast.bf16_matmul_speedup("cpu") < 100

    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    kwargs = dict(epochs=1, batch_size=32, max_steps=1, bf16=True, progress=False, verbose=False)
    monkeypatch.setattr(fast.trainer, "bf16_matmul_speedup", lambda device: 0.1)  # where fit_fast looks it up
    with pytest.warns(RuntimeWarning, match="runs 10.0 times slower than a float32 one on this cpu"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, **kwargs)
    monkeypatch.setattr(fast.trainer, "bf16_matmul_speedup", lambda device: 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, **kwargs)


def test_bfloat16_needs_a_float32_model_and_a_boolean():
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    with pytest.raises(ValueError, match="float32 matrix products to bfloat16; this model's weights are torch.float64"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)).double(), images, bf16=True, progress=False, verbose=False)
    with pytest.raises(TypeError, match="bf16 must be True or False, got 'yes'"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, bf16="yes", progress=False, verbose=False)


def test_fast_trainer_reports_intermediate_evaluations_and_stops_on_request(mnist_small):
    train_x, _, test_x, _ = mnist_small
    torch.manual_seed(0)
    seen = []

    def stop_after_two(entry):
        seen.append(entry)
        return len(seen) == 2

    h = fast.fit_fast(VAE(5, hidden_sizes=(64,)), train_x, test_x[:500], epochs=5, batch_size=200, progress=False,
                      verbose=False, eval_every=10, on_eval=stop_after_two)
    assert [e["step"] for e in h["evals"]] == [10, 20] and h["steps"] == [20]
    assert h["evals"][0]["seconds"] < h["evals"][1]["seconds"]
    assert all(torch.isfinite(torch.tensor(e["neg_elbo"])) for e in h["evals"])


def test_eval_below_skips_evaluations_until_the_training_loss_is_low_enough(mnist_small):
    train_x, _, test_x, _ = mnist_small
    common = dict(epochs=1, batch_size=100, max_steps=25, progress=False, verbose=False, eval_every=10)
    torch.manual_seed(0)
    every = fast.fit_fast(VAE(5, hidden_sizes=(32,)), train_x, test_x[:300], **common)
    # evaluations every 10 steps and after the last one; no per-epoch test evaluation then
    assert [e["step"] for e in every["evals"]] == [10, 20, 25] and every["test_neg_elbo"] == []
    torch.manual_seed(0)
    never = fast.fit_fast(VAE(5, hidden_sizes=(32,)), train_x, test_x[:300], eval_below=1.0, **common)
    assert [e["step"] for e in never["evals"]] == [25]  # only the evaluation after the last step, which always runs
    assert all(e["recent_train_loss"] > 1.0 for e in every["evals"])
    # a bar between the first and the last training loss lets through only the later evaluations
    torch.manual_seed(0)
    bar = (every["evals"][0]["neg_elbo"] + every["evals"][-1]["neg_elbo"]) / 2
    some = fast.fit_fast(VAE(5, hidden_sizes=(32,)), train_x, test_x[:300], eval_below=bar + 20, **common)
    assert [e["step"] for e in some["evals"]] in ([20, 25], [25]) and some["evals"][-1]["step"] == 25
    assert all(e["recent_train_loss"] <= bar + 20 for e in some["evals"][:-1])
    # the same weights and draws as the ungated run: its evaluations are the same numbers
    assert some["evals"][-1]["neg_elbo"] == pytest.approx(every["evals"][-1]["neg_elbo"], rel=1e-6)


def test_fast_trainer_refuses_what_it_cannot_train(mnist_small):
    train_x = mnist_small[0][:500]
    with pytest.raises(TypeError, match="trains VAEs"):
        fast.fit_fast(Autoencoder(5, hidden_sizes=(16,)), train_x, progress=False, verbose=False)
    with pytest.raises(ValueError, match="binarize"):
        fast.fit_fast(VAE(5, hidden_sizes=(16,)), train_x, binarize="otsu", progress=False, verbose=False)
    with pytest.raises(ValueError, match="engine must be one of"):
        train_with("turbo", VAE(5, hidden_sizes=(16,)), train_x, None, progress=False, verbose=False)
    with pytest.raises(TypeError, match="engine"):  # the reference loop is the reference loop only
        fit(VAE(5, hidden_sizes=(16,)), train_x, engine="fast", progress=False, verbose=False)


def test_fast_trainer_stops_on_a_nan_loss(mnist_small):
    model = VAE(5, hidden_sizes=(16,))
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fast.fit_fast(model, mnist_small[0][:1000], epochs=1, batch_size=100, check_every=3, progress=False,
                      verbose=False)


def test_command_line_trains_with_the_fast_engine(tmp_path, mnist_dir):
    from vaelib.checkpoints import load_checkpoint

    out = tmp_path / "fast.pt"
    record = cli.main(["--latent-dim", "4", "--hidden", "32", "--epochs", "1", "--max-steps", "5", "--engine",
                       "fast", "--train-limit", "2000", "--out", str(out), "--no-progress",
                       "--data-dir", str(mnist_dir)])
    assert record["settings"]["engine"] == "fast" and record["history"]["engine"] == "fast"
    assert json.loads(out.with_suffix(".json").read_text())["history"]["steps"] == [5]
    assert load_checkpoint(out).latent_dim == 4


@pytest.mark.parametrize("flag", ["bf16", "compile"])
def test_command_line_trains_in_bfloat16_or_compiled_with_the_fast_engine_only(tmp_path, mnist_dir, monkeypatch, flag):
    seen = []
    real = fast.fit_fast
    monkeypatch.setattr(cli, "fit_fast", lambda *a, **k: seen.append(k[flag]) or real(*a, **k))
    argv = ["--latent-dim", "4", "--hidden", "32", "--epochs", "1", "--max-steps", "3", "--train-limit", "1000",
            "--no-progress", "--data-dir", str(mnist_dir)]
    record = cli.main(argv + ["--engine", "fast", f"--{flag}", "--out", str(tmp_path / "b.pt")])
    assert seen == [True] and record["settings"][flag] is True and f"--{flag}" in record["command"]
    assert record["history"]["steps"] == [3]
    with pytest.raises(SystemExit, match=f"--{flag} needs --engine fast"):
        cli.main(argv + [f"--{flag}", "--out", str(tmp_path / "r.pt")])
    assert not (tmp_path / "r.pt").exists()
    with pytest.raises(ValueError, match=f"{flag}=True needs engine='fast'"):
        train_with("reference", VAE(2, hidden_sizes=(8,)), torch.zeros(10, 28, 28, dtype=torch.uint8), None,
                   progress=False, **{flag: True})
    with pytest.raises(TypeError, match=flag):  # fit itself has no such option
        fit(VAE(2, hidden_sizes=(8,)), torch.zeros(10, 28, 28, dtype=torch.uint8), progress=False, **{flag: True})


def test_command_line_saves_the_moving_average_with_ema(tmp_path, mnist_dir):
    from vaelib.checkpoints import load_checkpoint

    models = {}
    for ema in (None, "0.5"):
        out = tmp_path / f"ema{ema}.pt"
        record = cli.main(["--latent-dim", "4", "--hidden", "32", "--epochs", "1", "--max-steps", "5",
                           "--train-limit", "2000", "--out", str(out), "--no-progress", "--data-dir", str(mnist_dir)]
                          + (["--ema", ema] if ema else []))
        assert record["settings"]["ema"] == (float(ema) if ema else None)
        models[ema] = load_checkpoint(out)
    # same seed, same trajectory: the saved average differs from the saved last weights
    assert not torch.allclose(models[None].decoder[-1].weight, models["0.5"].decoder[-1].weight)


def test_weight_decay_is_decoupled_and_optional():
    w = torch.nn.Parameter(torch.full((3,), 2.0))
    assert type(make_optimizer([w], 1e-3)) is torch.optim.Adam
    opt = make_optimizer([w], 0.1, weight_decay=0.5)
    assert type(opt) is torch.optim.AdamW
    w.grad = torch.zeros(3)  # no gradient: only the decay acts, shrinking w by lr * decay
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay"):
            make_optimizer([w], 1e-3, weight_decay=bad)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_ema_is_the_moving_average_of_the_weight_trajectory(mnist_small, engine):
    """With ``ema=d`` the model ends holding a₁ = w₁, a_t = d·a_{t−1} + (1 − d)·w_t over the weights
    w_t after step t, and the test numbers are those of that average. The trajectory w_1..w_T comes
    from runs without averaging stopped after t steps (training is deterministic on the CPU), and
    the average is recomputed here in float64."""
    train_x, _, test_x, _ = mnist_small
    d, steps = 0.7, 6

    def run(max_steps, ema=None):
        torch.manual_seed(0)
        model = VAE(4, hidden_sizes=(16,))
        h = train_with(engine, model, train_x[:600], test_x[:300], epochs=1, batch_size=100, lr=3e-2, seed=0,
                       max_steps=max_steps, progress=False, verbose=False, ema=ema)
        return model, h

    trajectory = [[p.detach().double() for p in run(t)[0].parameters()] for t in range(1, steps + 1)]
    expected = trajectory[0]
    for weights in trajectory[1:]:
        expected = [d * a + (1 - d) * w for a, w in zip(expected, weights)]
    model, h = run(steps, ema=d)
    for got, want, last in zip(model.parameters(), expected, trajectory[-1]):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got.detach().double(), last)  # the average, not the last weights
    ev = evaluate(model, test_x[:300], seed=1, batch_size=1000)
    assert h["test_neg_elbo"][-1] == pytest.approx(ev["neg_elbo"], rel=1e-5)


def test_ema_decay_must_be_in_zero_one(mnist_small):
    for engine in ("reference", "fast"):
        for bad in (1.0, -0.1, 1.5, float("nan"), True, "0.9"):
            with pytest.raises(ValueError, match="ema"):
                train_with(engine, VAE(4, hidden_sizes=(16,)), mnist_small[0][:200], None, epochs=1, ema=bad,
                           progress=False, verbose=False)


def _matmul_precision_state() -> tuple[str, str]:
    """What a program sees of the CUDA float32 matmul setting, through the old and the new API."""
    def read(f):
        try:
            return repr(f())
        except RuntimeError as e:  # torch refuses to read the old flag once the new one was set
            return f"error: {str(e)[:40]}"
    flags = torch.backends.cuda.matmul
    return read(lambda: flags.allow_tf32), read(lambda: getattr(flags, "fp32_precision", None))


_NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")  # torch 2.9 and later


@pytest.mark.parametrize("before", ["untouched", "allow_tf32=True", "allow_tf32=False"]
                         + (["fp32_precision=tf32"] if _NEW_TF32_API else []))
@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_setting_holds_only_while_training(before, enabled):
    # The flags exist (and can be set) on CPU builds too, so the CUDA-only switch is checked here.
    flags = torch.backends.cuda.matmul
    new_api = _NEW_TF32_API
    original = flags.fp32_precision if new_api else flags.allow_tf32
    try:
        if before != "untouched":
            name, value = before.split("=")
            setattr(flags, name, value == "True" if name == "allow_tf32" else value)
        seen_before = _matmul_precision_state()
        with fast.tf32_matmuls(enabled):
            inside = flags.fp32_precision if new_api else flags.allow_tf32
        assert inside == (("tf32" if enabled else "ieee") if new_api else enabled)
        assert _matmul_precision_state() == seen_before
        with pytest.raises(ZeroDivisionError), fast.tf32_matmuls(enabled):  # restored on the way out of an error too
            1 / 0
        assert _matmul_precision_state() == seen_before
    finally:
        setattr(flags, "fp32_precision" if new_api else "allow_tf32", original)


# ---------------------------------------------------------------- inputs found by the input audit
def test_fast_trainer_refuses_nan_images_wrong_sizes_and_a_nan_beta():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 28, 28), generator=g, dtype=torch.uint8)
    kwargs = {"epochs": 1, "batch_size": 16, "progress": False, "verbose": False, "device": "cpu"}
    # nan grey levels used to be turned into black pixels and trained on without a word
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), torch.full((32, 28, 28), float("nan")), images, **kwargs)
    # 27×27 images used to fail inside the first matrix product
    with pytest.raises(ValueError, match="729 pixels"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images[:, :27, :27].contiguous(), **kwargs)
    # a nan beta used to train for check_every steps before stopping
    with pytest.raises(ValueError, match="beta"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, beta=float("nan"), **kwargs)


@pytest.mark.parametrize(("likelihood", "binarize", "beta"), [("bernoulli", "dynamic", 0.4), ("bernoulli", "static", 1.0),
                                                             ("gaussian", "none", 1.0)])
def test_fast_and_reference_training_agree_for_every_input_kind_and_beta(mnist_small, likelihood, binarize, beta):
    """On the CPU both engines draw the same numbers: a few steps give the same losses, whatever the
    binarization (static binarization included), the likelihood (grey levels for the Gaussian) and β."""
    train_x, _, test_x, _ = mnist_small
    runs = {}
    for engine in ("reference", "fast"):
        torch.manual_seed(0)
        model = VAE(4, hidden_sizes=(32,), likelihood=likelihood, sigma=0.3)
        runs[engine] = train_with(engine, model, train_x[:400], test_x[:200], epochs=2, batch_size=100, lr=3e-3,
                                  beta=beta, seed=0, binarize=binarize, progress=False, verbose=False)
    ref, fst = runs["reference"], runs["fast"]
    for key in ("train_loss", "test_loss", "test_neg_elbo"):
        assert fst[key] == pytest.approx(ref[key], rel=1e-5), (key, fst[key], ref[key])


def test_a_nan_is_caught_after_check_every_steps_not_at_the_end_of_the_epoch():
    images = torch.randint(0, 256, (1000, 784), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model = VAE(2, hidden_sizes=(8,))
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"by epoch 1, step 3 "):
        fast.fit_fast(model, images, epochs=1, batch_size=100, check_every=3, progress=False, verbose=False)


def test_intermediate_evaluations_report_the_window_loss_and_evaluate_with_the_end_of_epoch_seed(mnist_small):
    train_x, _, test_x, _ = mnist_small
    common = {"epochs": 1, "batch_size": 100, "lr": 3e-3, "seed": 2, "progress": False, "verbose": False}
    runs = {}
    for every in (1, 4):
        torch.manual_seed(0)
        model = VAE(3, hidden_sizes=(16,))
        runs[every] = fast.fit_fast(model, train_x[:800], test_x[:300], eval_every=every, **common)
    per_step = [e["recent_train_loss"] for e in runs[1]["evals"]]
    assert len(per_step) == 8 and runs[1]["train_loss"][0] == pytest.approx(sum(per_step) / 8, rel=1e-9)
    # every 4 steps: the mean training loss of the 4 steps since the previous evaluation
    assert [e["step"] for e in runs[4]["evals"]] == [4, 8]
    assert [e["recent_train_loss"] for e in runs[4]["evals"]] == pytest.approx(
        [sum(per_step[:4]) / 4, sum(per_step[4:]) / 4], rel=1e-9)
    # the evaluation after the last step is what the end-of-epoch evaluation (seed + 1) gives
    ev = evaluate(model, test_x[:300], seed=3, batch_size=2000)
    assert runs[4]["evals"][-1]["neg_elbo"] == pytest.approx(ev["neg_elbo"], rel=1e-5)


# ---------------------------------------------------------------- the IWAE objective (objective="iwae")
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_iwae_loss_and_gradients_equal_vaelib_bounds(likelihood, k):
    """The fast engine's IWAE loss, from noise drawn as vaelib.bounds draws it, is bounds.iwae_loss: the same
    value and the same gradients for every weight (float64, the recipe's LayerNorm and centered input)."""
    torch.manual_seed(3)
    model = TunedVAE(6, hidden_sizes=(32, 16), activation="gelu", likelihood=likelihood, sigma=0.3, norm="layer",
                     center_input=True).double()
    x = torch.bernoulli(torch.rand(11, 784, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    eps = torch.randn((k, 11, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = fast.iwae_loss_given_eps(model, x, eps)
    want = iwae_loss(model, x, k, generator=torch.Generator().manual_seed(5))  # draws the same eps
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the log weights themselves are vaelib.bounds.log_weights'
    lw = fast.iwae_log_weights(model, x, eps)
    torch.testing.assert_close(lw, log_weights(model, x, k, generator=torch.Generator().manual_seed(5)),
                               rtol=1e-12, atol=1e-10)
    if k == 1:
        # K = 1, as in vaelib.bounds, is the ELBO loss with its KL in closed form, the ELBO path's own loss; the
        # one log weight is the ELBO with the KL estimated from the draw: they differ by log p(z) − log q(z|x) + KL
        rec, kl = fast.vae_loss_sums(model, x, eps[0])
        torch.testing.assert_close(got, (rec + kl) / 11, rtol=1e-12, atol=1e-10)
        with torch.no_grad():
            mu, logvar = model.encode(x)
            z = mu + torch.exp(0.5 * logvar) * eps[0]
            log_pz_minus_qz = 0.5 * (eps[0].square() + logvar - z.square()).sum(-1)
            per_image_kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
        torch.testing.assert_close(-lw[0].mean(), got - (log_pz_minus_qz + per_image_kl).mean(), rtol=1e-12,
                                   atol=1e-9)
        assert not torch.allclose(-lw[0].mean(), got)  # the two K = 1 estimates are not the same number


def test_fast_and_reference_iwae_training_agree_and_report_evaluate(mnist_small):
    """fit_fast(objective="iwae") trains like fit(objective="iwae"): on the CPU the two draw the same numbers in
    the same order (K·m·d noise per batch, shaped (K, m, d)), so every epoch's numbers agree up to float32
    rounding; the test loss falls, and the recorded test numbers are evaluate's (−ELBO, as fit records them)."""
    train_x, _, test_x, _ = mnist_small
    runs, models = {}, {}
    for engine in ("reference", "fast"):
        torch.manual_seed(0)
        models[engine] = VAE(10, hidden_sizes=(128,))
        runs[engine] = train_with(engine, models[engine], train_x[:3000], test_x[:1000], epochs=2, batch_size=100,
                                  lr=2e-3, seed=0, max_steps=50, objective="iwae", iwae_k=3, progress=False,
                                  verbose=False)
    ref, fst = runs["reference"], runs["fast"]
    assert set(ref) - {"engine", "evals"} <= set(fst)
    assert fst["steps"] == ref["steps"] == [30, 50]
    for key in ("train_loss", "test_loss", "test_neg_elbo", "test_kl"):
        assert fst[key] == pytest.approx(ref[key], rel=1e-5), (key, fst[key], ref[key])
    assert fst["test_loss"][-1] < fst["test_loss"][0] - 10, fst["test_loss"]
    ev = evaluate(models["fast"], test_x[:1000], seed=1, batch_size=fast.eval_batch_size_for(torch.device("cpu")))
    assert fst["test_loss"][-1] == pytest.approx(ev["loss"], rel=1e-6)
    assert fst["test_neg_elbo"][-1] == pytest.approx(ev["neg_elbo"], rel=1e-6)
    # and the training loss is the IWAE loss, not the ELBO's: K = 3 trains on a higher bound than K = 1 would
    torch.manual_seed(0)
    elbo_run = fast.fit_fast(VAE(10, hidden_sizes=(128,)), train_x[:3000], epochs=1, batch_size=100, lr=2e-3, seed=0,
                             max_steps=30, progress=False, verbose=False)
    assert fst["train_loss"][0] < elbo_run["train_loss"][0]


def test_iwae_with_k1_trains_exactly_like_the_elbo_with_autograd(mnist_small):
    runs = {}
    for objective in ("elbo", "iwae"):
        torch.manual_seed(1)
        model = VAE(4, hidden_sizes=(32,))
        h = fast.fit_fast(model, mnist_small[0][:1000], mnist_small[2][:300], epochs=1, batch_size=64, seed=3,
                          objective=objective, iwae_k=1, backward="autograd", progress=False, verbose=False)
        runs[objective] = (h, model.decoder[-1].weight.detach().clone())
    (he, we), (hi, wi) = runs["elbo"], runs["iwae"]
    assert he["train_loss"] == hi["train_loss"] and he["test_neg_elbo"] == hi["test_neg_elbo"]
    assert torch.equal(we, wi)


@pytest.mark.parametrize(("settings", "message"), [
    ({"objective": "iwa"}, "objective must be one of"),
    ({"objective": "iwae", "beta": 4.0}, "beta must be 1"),
    ({"objective": "iwae", "iwae_k": 0}, "iwae_k must be an integer >= 1"),
    ({"objective": "iwae", "iwae_k": -2}, "iwae_k must be an integer >= 1"),
    ({"objective": "iwae", "iwae_k": 2.0}, "iwae_k must be an integer >= 1"),
    ({"objective": "iwae", "iwae_k": True}, "iwae_k must be an integer >= 1"),
])
def test_both_engines_refuse_the_same_iwae_settings(settings, message):
    images = torch.zeros(50, 784, dtype=torch.uint8)
    for engine in ("reference", "fast"):
        with pytest.raises(ValueError, match=message):
            train_with(engine, VAE(2, hidden_sizes=(8,)), images, None, progress=False, verbose=False, **settings)


def test_iwae_has_no_written_out_backward_pass():
    images = torch.zeros(50, 784, dtype=torch.uint8)
    with pytest.raises(ValueError, match="backward='manual' has no written-out backward pass for objective='iwae'"):
        fast.fit_fast(VAE(2, hidden_sizes=(8,)), images, objective="iwae", backward="manual", progress=False)
    assert fast.pick_backward(VAE(2, hidden_sizes=(8,)), "auto", "iwae") is False
    assert fast.pick_backward(VAE(2, hidden_sizes=(8,)), "auto") is True


def test_iwae_trains_in_bfloat16_and_compiled(mnist_small, monkeypatch):
    """bf16 and compile work for the IWAE as for the autograd ELBO: the compiled loss is the IWAE's
    (compiled once: the short last batch runs eagerly), and the run follows the eager bfloat16 run."""
    import torch._dynamo

    from vaelib.speed import trainer

    compiled_fns = []
    real = trainer.compiled
    monkeypatch.setattr(trainer, "compiled", lambda fn: compiled_fns.append(fn) or real(fn))
    train_x, _, test_x, _ = mnist_small
    torch._dynamo.reset()
    runs = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = TunedVAE(8, hidden_sizes=(64, 32), activation="gelu", norm="layer", center_input=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            runs[compile] = fast.fit_fast(model, train_x[:330], test_x[:200], epochs=1, batch_size=64, lr=3e-3,
                                          seed=0, objective="iwae", iwae_k=4, bf16=True, compile=compile,
                                          progress=False, verbose=False)
    assert compiled_fns == [fast.iwae_loss_given_eps]
    assert runs[True]["steps"] == [6]
    assert runs[True]["train_loss"] == pytest.approx(runs[False]["train_loss"], rel=1e-3)
    assert runs[True]["test_neg_elbo"] == pytest.approx(runs[False]["test_neg_elbo"], rel=1e-3)
    torch._dynamo.reset()


def test_command_line_trains_the_iwae_with_the_fast_engine(tmp_path, mnist_dir, monkeypatch):
    from vaelib.checkpoints import load_checkpoint

    seen = []
    real = fast.fit_fast
    monkeypatch.setattr(cli, "fit_fast", lambda *a, **k: seen.append((k["objective"], k["iwae_k"])) or real(*a, **k))
    out = tmp_path / "iw.pt"
    record = cli.main(["--latent-dim", "4", "--hidden", "32", "--epochs", "1", "--max-steps", "20", "--engine",
                       "fast", "--objective", "iwae", "--k", "3", "--train-limit", "3000", "--out", str(out),
                       "--no-progress", "--data-dir", str(mnist_dir)])
    assert seen == [("iwae", 3)]
    saved = json.loads(out.with_suffix(".json").read_text())
    for r in (record, saved):
        assert (r["settings"]["objective"], r["settings"]["k"], r["settings"]["engine"]) == ("iwae", 3, "fast")
        assert r["history"]["steps"] == [20] and r["history"]["engine"] == "fast"
    assert load_checkpoint(out).latent_dim == 4
