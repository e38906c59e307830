"""benchmarks/gpu_check.py, the prepared GPU check: its dry run on the CPU, and how it records failures.

The dry run (``--device cpu --quick``) runs every step of the check in small, so that the script is
known to work before anyone spends GPU time on it; the CUDA tests skip there, with their reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


@pytest.fixture(scope="module")
def dry_run(mnist_dir, tmp_path_factory):
    """The dry run's report, its exit status and its duration."""
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--data", str(mnist_dir),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert out.is_file(), f"no report; the script printed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc, seconds


def test_dry_run_succeeds_and_reports_where_it_ran(dry_run):
    report, proc, seconds = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["ok"] is True and report["failures"] == [], report["failures"]
    assert report["format"] == gpu_check.REPORT_FORMAT and report["quick"] is True
    assert list(report["steps"]) == list(gpu_check.STEPS)
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["mnist_missing"] == []
    assert env["cuda_available"] == torch.cuda.is_available()
    assert 0 < report["wall_seconds"] <= seconds
    assert report["wall_seconds"] < report["time_limit_seconds"]
    for name, step in report["steps"].items():
        assert step["status"] in ("passed", "skipped"), (name, step)


def test_dry_run_ran_the_cuda_tests(dry_run):
    step = dry_run[0]["steps"]["cuda_tests"]
    assert "tests/test_cuda.py" in step["command"] and "-o addopts=" in step["command"]
    counts = step["counts"]  # --device cpu hides any GPU from the steps: every CUDA test skips
    assert counts["failed"] == counts["errors"] == counts["passed"] == 0 and counts["skipped"] >= 15
    assert step["status"] == "skipped" and "error" not in step
    assert all(group["reason"].startswith("needs a CUDA GPU") for group in step["skipped"]), step["skipped"]
    assert sum(len(group["tests"]) for group in step["skipped"]) == counts["skipped"]


def test_dry_run_ran_train_speed(dry_run):
    steps = dry_run[0]["steps"]
    assert steps["train_speed_compiled"]["status"] == "skipped"
    assert "quick mode" in steps["train_speed_compiled"]["reason"]
    step = steps["train_speed_eager"]
    assert step["status"] == "passed" and step["returncode"] == 0 and "--no-compile" in step["command"]
    assert step["result"]["settings"]["compile"] is False and step["result"]["device"].startswith("cpu")
    figures = step["figures"]
    assert figures["speedup"] > 0 and figures["fast_images_per_s"] > 0
    assert figures["fast_steps_to_target"] is not None  # the dry run's target is reached at once
    assert any(line.startswith("throughput, median") for line in step["lines"])
    assert any(line.startswith("fast trainer:") for line in step["lines"])


def test_dry_run_trained_and_scored_the_latent50_model(dry_run):
    step = dry_run[0]["steps"]["latent50"]
    assert step["status"] == "passed", step.get("error")
    recipe = step["recipe"]
    assert (recipe["latent_dim"], recipe["hidden_sizes"], recipe["schedule"]) == (50, [512, 512], "cosine")
    assert recipe["k"] == 10 and recipe["compile"] is False
    assert step["plan"]["epochs"] >= 1 and step["plan"]["k_eval_at_steps"][-1] == step["plan"]["steps"]
    evaluations = step["evaluations"]
    assert 1 <= len(evaluations) <= 3
    for e in evaluations:
        assert math.isfinite(e["nll"]) and e["k"] == 10 and e["images"] == 100
    assert step["best"]["nll"] == min(e["nll"] for e in evaluations)
    assert step["best"]["nll"] < 784 * math.log(2)  # below an untrained model's
    assert step["phases"]["step_ms"] > 0 and step["phases"]["k_eval_seconds_estimate"] > 0
    shipped = json.loads((ROOT / "vaelib" / "pretrained" / "vae_latent50.json").read_text())
    assert step["shipped_reference"]["nll"] == shipped["test_log_likelihood"]["nll"]
    assert step["test_neg_elbo_curve"]


# --------------------------------------------------------------------------- failures are recorded, the check goes on
def test_run_command_stops_a_step_at_its_limit_and_keeps_its_output():
    start = time.perf_counter()
    run = gpu_check.run_command([sys.executable, "-c", "import time; print('begun', flush=True); time.sleep(60)"],
                                limit=2, echo=False)
    assert time.perf_counter() - start < 20
    assert run["timed_out"] is True and "begun" in run["output"]
    run = gpu_check.run_command([sys.executable, "-c", "raise ValueError('broken')"], limit=30, echo=False)
    assert run["returncode"] == 1 and not run["timed_out"]
    assert gpu_check.last_error_line(run["output"]) == "ValueError: broken"


def test_a_step_that_breaks_is_recorded_and_the_next_ones_still_run(tmp_path, monkeypatch, mnist_dir):
    def broken(*args, **kwargs):
        raise RuntimeError("the GPU fell off the bus")

    def passed(args, data, limit, compile=None):
        return {"status": "passed", "limit_seconds": limit}

    monkeypatch.setattr(gpu_check, "step_cuda_tests", broken)
    monkeypatch.setattr(gpu_check, "step_train_speed", passed)
    monkeypatch.setattr(gpu_check, "step_latent50", lambda args, data, budget: {"status": "timeout", "error": "late"})
    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--data", str(mnist_dir), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert steps["cuda_tests"]["status"] == "error" and "fell off the bus" in steps["cuda_tests"]["error"]
    assert "Traceback" in steps["cuda_tests"]["traceback"]
    assert steps["train_speed_compiled"]["status"] == steps["train_speed_eager"]["status"] == "passed"
    assert steps["train_speed_eager"]["limit_seconds"] == pytest.approx(steps["train_speed_compiled"]["limit_seconds"] / 2)
    assert [(f["step"], f["status"]) for f in report["failures"]] == [("cuda_tests", "error"), ("latent50", "timeout")]
    assert report["ok"] is False


def test_steps_without_time_left_are_skipped_as_failures(tmp_path, mnist_dir):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--data", str(mnist_dir), "--out", str(out),
                           "--total-seconds", "1", "--only", "train_speed_eager", "--only", "latent50"]) == 1
    report = json.loads(out.read_text())
    assert list(report["steps"]) == ["train_speed_eager", "latent50"]
    for step in report["steps"].values():
        assert step["status"] == "skipped" and step["error"].startswith("no time left")
    assert len(report["failures"]) == 2


def test_missing_mnist_files_fail_the_data_steps_without_a_download(tmp_path):
    out = tmp_path / "report.json"
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    assert gpu_check.main(["--device", "cpu", "--quick", "--data", str(empty), "--out", str(out),
                           "--only", "train_speed_eager", "--only", "latent50"]) == 1
    report = json.loads(out.read_text())
    assert len(report["environment"]["mnist_missing"]) == 4
    for step in report["steps"].values():
        assert step["status"] == "failed" and "MNIST" in step["error"]
    assert report["failures"][0]["step"] == "setup"


# --------------------------------------------------------------------------- reading what the steps print
def test_parse_train_speed_reads_its_json_or_what_it_printed_before_stopping():
    full = "\n".join(["device: cuda (NVIDIA H100)", "throughput, round 1 of 3, 300 steps: baseline 9 images/s, fast 20 "
                      "images/s, ratio 2.22", "fast trainer: test -ELBO <= 100 nats after 12.5 s (step 700)",
                      json.dumps({"speedup": 2.3, "fast_seconds_to_100_nats": 12.5, "other": 1})])
    parsed = gpu_check.parse_train_speed(full)
    assert parsed["figures"] == {"speedup": 2.3, "fast_seconds_to_100_nats": 12.5}
    assert parsed["result"]["other"] == 1 and len(parsed["lines"]) == 2
    stopped = "\n".join(full.splitlines()[:3] + ["baseline: test -ELBO <= 100 nats after 40.0 s"])
    parsed = gpu_check.parse_train_speed(stopped)
    assert "result" not in parsed
    assert parsed["figures"] == {"speedup": 2.22, "fast_seconds_to_target": 12.5, "baseline_seconds_to_target": 40.0}


def test_parse_junit_counts_and_groups_the_skips(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" />'
        '<testcase classname="tests.test_cuda" name="test_b"><failure message="assert 1 == 2">tb</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c"><skipped message="needs ipywidgets" /></testcase>'
        '<testcase classname="tests.test_cuda" name="test_d"><skipped message="needs ipywidgets" /></testcase>'
        '<testcase classname="tests.test_cuda" name="test_e"><error message="fixture broke" /></testcase>'
        "</testsuite></testsuites>"
    )
    parsed = gpu_check.parse_junit(xml)
    assert parsed["counts"] == {"passed": 1, "failed": 1, "errors": 1, "skipped": 2}
    assert [f["test"] for f in parsed["failed"]] == ["tests.test_cuda::test_b", "tests.test_cuda::test_e"]
    assert parsed["skipped"] == [{"reason": "needs ipywidgets",
                                  "tests": ["tests.test_cuda::test_c", "tests.test_cuda::test_d"]}]
