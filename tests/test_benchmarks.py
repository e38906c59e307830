"""The training-speed benchmark runs end to end and reports what it promises (a few steps only)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_benchmark_reports_throughput_and_a_missed_target(train_speed, mnist_dir, capsys):
    # a budget of 0.02 epochs (9 steps) cannot reach 100 nats: both times are reported as missing
    result = train_speed.main(["--device", "cpu", "--steps", "4", "--warmup", "1", "--epochs", "0.02", "--rounds", "3",
                               "--no-compile", "--data-dir", str(mnist_dir)])
    printed = last_json_line(capsys)
    assert printed == json.loads(json.dumps(result))
    for key in ("device", "baseline_images_per_s", "fast_images_per_s", "speedup", "fast_seconds_to_100_nats"):
        assert key in printed, key
    assert printed["device"].startswith("cpu")
    assert printed["speedup"] == pytest.approx(printed["fast_images_per_s"] / printed["baseline_images_per_s"], rel=1e-2)
    # three rounds each, and the reported speeds are their medians
    for loop in ("baseline", "fast"):
        rounds = printed[f"{loop}_images_per_s_rounds"]
        assert len(rounds) == 3 and all(v > 0 for v in rounds)
        assert printed[f"{loop}_images_per_s"] == pytest.approx(sorted(rounds)[1], abs=0.1)
    assert printed["fast_seconds_to_100_nats"] is None and printed["baseline_seconds_to_100_nats"] is None
    # the bound: the tuned recipe's layers 784-512-256-100 and 50-256-512-784 make 2 * 1,103,360 FLOP forward;
    # a step is three times that less the first layer's input gradient (2 * 784 * 512): 5,817,344 FLOP per image
    assert printed["matmul_bound_images_per_s"] == pytest.approx(
        printed["matmul_gflop_per_s"] * 1e9 / 5_817_344, rel=1e-2)
    assert 100 < printed["fast_last_test_neg_elbo"] < 543.0  # evaluated after the last step; trained a little
    assert printed["settings"]["compile"] is False and printed["fast_first_warmup_seconds"] > 0
    assert train_speed.parse_args([]).compile is True  # compiled unless --no-compile


def test_benchmark_times_a_reachable_target(train_speed, mnist_dir, capsys):
    # 400 nats is reached within 9 steps of the tuned recipe; the evaluation after the last step finds it.
    # With --compile (the default) the fast trainer's step is compiled during the first warm-up, which is reported
    # apart (in float32, so that the result does not depend on the machine's bfloat16 speed)
    train_speed.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--epochs", "0.02", "--target", "400",
                      "--compile", "--bf16", "off", "--data-dir", str(mnist_dir)])
    out = capsys.readouterr().out
    assert "warm-up (1 steps, compiling the step)" in out
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["settings"]["compile"] is True and printed["fast_first_warmup_seconds"] > 0
    assert printed["fast_steps_to_target"] == 9
    assert 0 < printed["fast_seconds_to_400_nats"] < 60 and 0 < printed["baseline_seconds_to_400_nats"] < 60
    assert math.isfinite(printed["fast_last_test_neg_elbo"]) and printed["fast_last_test_neg_elbo"] <= 400


def test_benchmark_evaluates_the_moving_average_with_ema(train_speed, mnist_dir, capsys):
    # over 9 steps from the start the loss falls fast, so an average of the weights with decay 0.9 lags
    # behind the weights: its test -ELBO after the last step must be clearly worse
    last = {}
    for ema in ("off", "0.9"):
        argv = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--epochs", "0.02", "--target", "1",
                "--skip-baseline-target", "--ema", ema, "--no-compile", "--data-dir", str(mnist_dir)]
        printed = train_speed.main(argv)
        assert printed["settings"]["ema"] == (None if ema == "off" else 0.9)
        # the margin follows: the training loss runs further above the average's test -ELBO
        assert printed["settings"]["eval_margin"] == (2.0 if ema == "off" else 4.0)
        last[ema] = printed["fast_last_test_neg_elbo"]
    assert "moving average of the weights (decay 0.9)" in capsys.readouterr().out
    assert last["0.9"] > last["off"] + 1, last
    for bad in ("1", "often"):
        with pytest.raises(SystemExit):
            train_speed.main(["--ema", bad, "--data-dir", str(mnist_dir)])
    assert "expected a decay in [0, 1) or off, got 'often'" in capsys.readouterr().err


def test_benchmark_recipes_choose_the_moving_average_and_its_margin(train_speed):
    # the tuned recipe evaluates a moving average (decay 0.99) with a 4-nat margin, the plain one its weights
    # with 2 nats; options given on the command line win
    for argv, ema, margin in ((["--recipe", "tuned"], 0.99, 4.0), (["--recipe", "plain"], None, 2.0),
                              (["--ema", "off"], None, 2.0), (["--ema", "0.9", "--eval-margin", "3"], 0.9, 3.0),
                              (["--recipe", "plain", "--ema", "0.95"], 0.95, 4.0)):
        args = train_speed.parse_args(argv)
        assert (args.ema, args.eval_margin) == (ema, margin), argv


def record_fit_fast_argument(train_speed, monkeypatch, name: str) -> list:
    """Make the benchmark's calls to fit_fast note their keyword ``name`` on the returned list."""
    seen = []
    real = train_speed.fit_fast

    def recording(*args, **kwargs):
        seen.append(kwargs[name])
        return real(*args, **kwargs)

    monkeypatch.setattr(train_speed, "fit_fast", recording)
    return seen


def test_benchmark_passes_its_backward_choice_to_the_fast_trainer(train_speed, mnist_dir, monkeypatch, capsys):
    seen = record_fit_fast_argument(train_speed, monkeypatch, "backward")
    last = {}
    for how in ("manual", "autograd"):
        seen.clear()
        printed = train_speed.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--epochs",
                                    "0.02", "--target", "1", "--skip-baseline-target", "--backward", how,
                                    "--bf16", "off", "--no-compile", "--data-dir", str(mnist_dir)])
        assert seen == [how] * 3, seen  # warm-up, throughput, time to target
        assert printed["settings"]["backward"] == how
        last[how] = printed["fast_last_test_neg_elbo"]
    # the same training either way, up to float32 rounding
    assert last["manual"] == pytest.approx(last["autograd"], rel=1e-4)
    with pytest.raises(SystemExit):
        train_speed.main(["--backward", "by hand", "--data-dir", str(mnist_dir)])
    assert "invalid choice: 'by hand'" in capsys.readouterr().err


def test_benchmark_multiplies_in_bfloat16_where_that_measures_faster(train_speed, mnist_dir, monkeypatch):
    # auto follows the measured speeds of the two products; on and off do what they say
    gain = train_speed.BF16_MIN_GAIN
    assert train_speed.choose_bf16("auto", 100e9, gain * 100e9) is True
    assert train_speed.choose_bf16("auto", 100e9, 0.99 * gain * 100e9) is False
    assert train_speed.choose_bf16("auto", 100e9, None) is False
    assert train_speed.choose_bf16("on", 100e9, 1e9) is True and train_speed.choose_bf16("off", 1e9, 100e9) is False
    assert train_speed.parse_args([]).bf16 == "auto"

    seen = record_fit_fast_argument(train_speed, monkeypatch, "bf16")
    for setting in ("auto", "on", "off"):
        seen.clear()
        printed = train_speed.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--epochs",
                                    "0.02", "--target", "1", "--skip-baseline-target", "--bf16", setting,
                                    "--no-compile", "--data-dir", str(mnist_dir)])
        measured = printed["bf16_matmul_gflop_per_s"]
        assert (measured is None) == (setting == "off")
        want = {"on": True, "off": False}.get(setting)
        if want is None:  # auto: this machine's measured speeds decide
            want = measured >= gain * printed["matmul_gflop_per_s"]
        assert printed["fast_bf16"] is want and seen == [want] * 3, (setting, printed["fast_bf16"], seen)


def test_benchmark_says_what_to_do_when_compiling_fails(train_speed, mnist_dir, monkeypatch):
    # where torch.compile cannot compile the step (tests/test_fast.py makes it fail for real), the benchmark stops
    # with fit_fast's message, which says to use --no-compile, rather than a traceback
    from vaelib.speed import CompileFailed

    def failing(*args, **kwargs):
        assert kwargs["compile"] is True
        raise CompileFailed("torch.compile could not compile the training step (no compiler) ... --no-compile ...")

    monkeypatch.setattr(train_speed, "fit_fast", failing)
    with pytest.raises(SystemExit, match="could not compile the training step \\(no compiler\\).*--no-compile"):
        train_speed.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--bf16", "off",
                          "--data-dir", str(mnist_dir)])


def test_recipe_ablation_goes_from_the_plain_recipe_to_the_tuned_one(monkeypatch):
    # the ablation imports the recipes from train_speed, as it does when run as a script from its folder
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("recipe_ablation", BENCH.parent / "recipe_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    recipes = ablation.RECIPES
    first, last = ablation.settings_after(1), ablation.settings_after(len(ablation.STEPS))
    assert {k: v for k, v in first.items() if k != "output_bias"} == recipes["plain"] and not first["output_bias"]
    # the tuned recipe's log-variance start (init_from_data) includes the mean-image start of the decoder
    assert {k: v for k, v in last.items() if k != "output_bias"} == recipes["tuned"] and last["output_bias"]
    # every row changes something
    rows = [ablation.settings_after(i) for i in range(1, len(ablation.STEPS) + 1)]
    assert all(a != b for a, b in zip(rows, rows[1:]))


def test_backward_benchmark_times_both_ways_on_the_same_trajectory(monkeypatch, mnist_dir, capsys):
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("backward_speed", BENCH.parent / "backward_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--steps", "12", "--warmup", "2", "--data-dir", str(mnist_dir)])
    assert last_json_line(capsys) == json.loads(json.dumps(result))
    assert result["device"].startswith("cpu") and result["timed_steps"] == 10
    assert result["manual_ms_per_step"] > 0 and result["autograd_ms_per_step"] > 0 and result["speedup"] > 0
    # both copies took 12 steps of lr up to 5e-3 on the same batches: equal weights up to float32 rounding,
    # while a single step moves a weight by about the learning rate
    assert result["max_weight_difference"] < 1e-4
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5", "--warmup", "5", "--data-dir", str(mnist_dir)])
