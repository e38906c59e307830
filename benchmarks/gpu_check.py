"""One prepared check of the course on a CUDA GPU, written into one JSON report.

    python benchmarks/gpu_check.py --data data/mnist --out gpu_report.json        # a GPU machine: under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --data DIR --out r.json   # a dry run on the CPU: seconds

Run it from the project folder of a fresh copy, with torch installed and the four MNIST files in a
folder of the checkout that git ignores (``data/``, see docs/gpu.md). It needs no network. Its steps,
each in its own process with its own time limit, so that one that fails, hangs or crashes the GPU
is recorded and the next one still runs:

1. ``cuda_tests``: ``python -m pytest tests/test_cuda.py`` (pytest's own options only, so that the
   project's nbval options need not be installed there); the report lists what passed, failed and
   was skipped, with the reasons.
2. ``train_speed_compiled`` and ``train_speed_eager``: ``benchmarks/train_speed.py --device cuda``
   with its step compiled (its default) and with ``--no-compile``; the report keeps the lines it
   printed (throughput ratio, seconds to 100 nats) and its closing JSON.
3. ``latent50``: a latent-50 VAE, ``VAE(50)`` with hidden layers (512, 512), ReLU and a Bernoulli
   decoder (the network the course shipped before its modern recipe), trained with the fast engine
   (``vaelib.speed.fit_fast``, compiled) on the full training set with plain Adam (batch 128, 1e-3,
   cosine schedule, seed 0, dynamic binarization, up to 150 epochs), as many epochs as the time
   budget holds. It measures a step and a k = 5000 evaluation first, plans the epochs from them, and
   scores the test set with ``vaelib.evaluate.test_scores`` (k = 5000, the test set binarized with
   seed 1, TF32 off) at a few points of the schedule, keeping the best −log p(x). The shipped
   ``vae_latent50``'s own score, read from its record, is in the report beside it; it was trained
   with the modern recipe (``vaelib.shipped.MODERN``), so the two are not like for like. This plain
   recipe was kept because the evaluations in between need the live weights, and the modern
   recipe's moving average lives inside ``fit_fast``.

The whole fits ``--total-seconds`` (default 465): a step gets its own limit or what is left after
the steps still to come have their minimum, whichever is less, and the latent-50 budget is what is
left at its turn, at most ``--latent-seconds``. The report is rewritten after every step, so it
holds what was done even if the script itself is stopped. ``--quick`` (for ``--device cpu``) runs
every step in small: the CUDA tests skip, ``train_speed.py`` runs a few steps uncompiled (the
compiled run is skipped: compiling the CPU step takes minutes), and the latent-50 run trains 8 steps
on 512 images and scores 100 test images with k = 10; ``tests/test_gpu_check.py`` runs it so that
this script does not rot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("cuda_tests", "train_speed_compiled", "train_speed_eager", "latent50")
REPORT_FORMAT = 1
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TAIL_CHARS = 4000  # of each step's output kept in the report

#: Per-step limits in seconds (full run, quick run), and the least a later step keeps for itself.
LIMITS = {"cuda_tests": (100, 60), "train_speed_compiled": (100, 60), "train_speed_eager": (50, 60)}
MINIMUM = {"cuda_tests": 40, "train_speed_compiled": 40, "train_speed_eager": 20, "latent50": 90}
QUICK_MINIMUM = {step: 10 for step in STEPS}

#: train_speed.py in quick mode: a few uncompiled steps, a target reached at the first evaluation.
QUICK_SPEED_ARGS = ["--steps", "2", "--rounds", "1", "--warmup", "1", "--epochs", "0.02", "--eval-every", "2",
                    "--target", "1000", "--bf16", "off"]
SPEED_LINE_PREFIXES = ("device:", "bfloat16:", "fast trainer's first warm-up", "throughput, median", "bound:",
                       "fast trainer:", "baseline:")
SPEED_FIGURES = ("speedup", "baseline_images_per_s", "fast_images_per_s", "fast_first_warmup_seconds",
                 "matmul_gflop_per_s", "fast_bf16", "fast_seconds_to_100_nats", "fast_steps_to_target",
                 "fast_last_test_neg_elbo", "baseline_seconds_to_100_nats")

#: The latent-50 run: the shipped model's architecture and recipe (vaelib/pretrained/vae_latent50.json).
LATENT50 = {"latent_dim": 50, "hidden_sizes": (512, 512), "activation": "relu", "likelihood": "bernoulli",
            "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "seed": 0, "binarize": "dynamic", "max_epochs": 150}


# --------------------------------------------------------------------------- small helpers
def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: never half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
    os.replace(tmp, path)


def tail(text: str, n: int = TAIL_CHARS) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def last_error_line(output: str) -> str:
    """The line of a traceback that names the error (else the last non-empty line of the output)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Failed|Interrupt|Exit)\b.*", line) or line.startswith("E   "):
            return line[:500]
    return lines[-1][:500] if lines else "(no output)"


def run_command(cmd: list[str], limit: float, env: dict | None = None, echo: bool = True) -> dict:
    """Run ``cmd`` in the project folder for at most ``limit`` seconds, its output copied to stderr as it comes.

    It runs in a process group of its own, which is killed whole at the limit (torch.compile's worker
    processes with it). Returns returncode, timed_out, seconds and the whole output.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    chunks: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            chunks.append(line)
            if echo:
                sys.stderr.write("    " + line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, and nothing else
        except ProcessLookupError:
            pass
        proc.wait()
    reader.join(timeout=10)
    return {"returncode": proc.returncode, "timed_out": timed_out, "seconds": round(time.perf_counter() - start, 2),
            "output": "".join(chunks)}


def child_env(data: Path, device: str) -> dict:
    env = dict(os.environ)
    env["VAELIB_DATA"] = str(data)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    if device == "cpu":  # the steps see no GPU, so the CUDA tests skip, also on a machine that has one
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.pop("VAELIB_CUDA_STAND_IN", None)
    return env


def missing_mnist(data: Path) -> list[str]:
    return [n for n in MNIST_FILES if not (data / n).is_file() and not (data / (n + ".gz")).is_file()]


def environment(args, data: Path) -> dict:
    """Where the check ran: device, torch, CUDA, driver, Python, the commit."""
    env: dict = {"device": args.device, "python": platform.python_version(), "platform": platform.platform(),
                 "cpu_count": os.cpu_count(), "data": str(args.data), "mnist_missing": missing_mnist(data)}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_build"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                       device_memory_gib=round(props.total_memory / 1024**3, 2),
                       compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        else:
            env["device_name"] = platform.processor() or platform.machine()
    except Exception as e:  # noqa: BLE001 - the report says what went wrong, and the steps still run
        env["torch_error"] = f"{type(e).__name__}: {e}"
    for key, cmd in (("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                     ("git_commit", ["git", "rev-parse", "HEAD"])):
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
            env[key] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            env[key] = None
    return env


# --------------------------------------------------------------------------- step 1: the CUDA tests
def parse_junit(path: Path) -> dict:
    """Counts, the failed tests with their messages, and the skipped ones grouped by reason, from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            skipped.setdefault((outcome.get("message") or "").strip()[:400], []).append(name)
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failed.append({"test": name, "kind": outcome.tag, "message": (outcome.get("message") or "").strip()[:800]})
    return {"counts": counts, "failed": failed,
            "skipped": [{"reason": reason, "tests": tests} for reason, tests in skipped.items()]}


def step_cuda_tests(args, data: Path, limit: float) -> dict:
    import importlib.util

    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
           "tests/test_cuda.py"]
    result: dict = {"command": "python " + " ".join(cmd[1:]), "limit_seconds": round(limit)}
    if importlib.util.find_spec("pytest") is None:
        return {**result, "status": "failed", "error": "pytest is not installed for this Python"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        run = run_command(cmd + ["--junitxml", str(junit)], limit, child_env(data, args.device))
        result.update(returncode=run["returncode"], seconds=run["seconds"], output_tail=tail(run["output"]))
        summary = [line.strip("= \n") for line in run["output"].splitlines()
                   if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran)\b", line) and " in " in line]
        result["summary"] = summary[-1] if summary else None
        if junit.is_file():
            try:
                result.update(parse_junit(junit))
            except Exception as e:  # noqa: BLE001
                result["junit_error"] = f"{type(e).__name__}: {e}"
    counts = result.get("counts", {})
    if run["timed_out"]:
        result.update(status="timeout", error=f"the CUDA tests ran past their limit of {limit:.0f} s")
    elif counts.get("failed") or counts.get("errors") or run["returncode"] not in (0, 5) or not counts:
        names = ", ".join(f["test"].rsplit("::", 1)[-1] for f in result.get("failed", [])[:5])
        result.update(status="failed", error=(f"{counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors"
                                              + (f": {names}" if names else "") if counts
                                              else last_error_line(run["output"])))
    elif counts.get("passed", 0) == 0:
        reasons = [group["reason"] for group in result.get("skipped", [])]
        result.update(status="skipped", reason="; ".join(reasons) or "no test ran")
        if args.device == "cuda":
            result["error"] = "no CUDA test ran: " + result["reason"]
    else:
        result["status"] = "passed"
    return result


# --------------------------------------------------------------------------- step 2: train_speed.py
def parse_train_speed(output: str) -> dict:
    """The lines worth keeping from train_speed.py's output, its closing JSON, and the main figures."""
    lines = [line.strip() for line in output.splitlines()]
    parsed: dict = {"lines": [line for line in lines if line.startswith(SPEED_LINE_PREFIXES)]}
    result = None
    for line in reversed(lines):
        if line.startswith("{") and line.endswith("}"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    figures: dict = {}
    if result is not None:
        parsed["result"] = result
        figures = {k: result[k] for k in SPEED_FIGURES if k in result}
    else:  # stopped early: what the printed lines say
        ratios = [re.search(r"ratio ([0-9.]+)", line) for line in lines if line.startswith("throughput")]
        ratios = [float(m.group(1)) for m in ratios if m]
        if ratios:
            figures["speedup"] = ratios[-1]
        for line in lines:
            m = re.match(r"(fast trainer|baseline): test -ELBO <= \S+ nats after ([0-9.]+) s", line)
            if m:
                figures[("fast" if m.group(1) == "fast trainer" else "baseline") + "_seconds_to_target"] = float(m.group(2))
    parsed["figures"] = figures
    return parsed


def step_train_speed(args, data: Path, limit: float, compile: bool) -> dict:
    cmd = [sys.executable, "benchmarks/train_speed.py", "--device", args.device, "--data-dir", str(data)]
    if not compile:
        cmd.append("--no-compile")
    if args.quick:
        cmd += QUICK_SPEED_ARGS
    result: dict = {"command": "python " + " ".join(cmd[1:]), "limit_seconds": round(limit), "compile": compile}
    run = run_command(cmd, limit, child_env(data, args.device))
    result.update(returncode=run["returncode"], seconds=run["seconds"], **parse_train_speed(run["output"]))
    result["output_tail"] = tail(run["output"], 1500)
    if run["timed_out"]:
        result.update(status="timeout", error=f"train_speed.py ran past its limit of {limit:.0f} s "
                                              "(the lines it printed before are kept)")
    elif run["returncode"] != 0 or "result" not in result:
        result.update(status="failed", error=last_error_line(run["output"]))
    else:
        result["status"] = "passed"
    return result


# --------------------------------------------------------------------------- step 3: the latent-50 run
def shipped_latent50() -> dict | None:
    try:
        record = json.loads((ROOT / "vaelib" / "pretrained" / "vae_latent50.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    scores = record.get("test_log_likelihood", {})
    return {"nll": scores.get("nll"), "neg_elbo": scores.get("neg_elbo"), "k": scores.get("k"),
            "nll_standard_error": scores.get("nll_standard_error"), "epochs": record.get("settings", {}).get("epochs"),
            "device": record.get("device"), "command": record.get("command")}


def step_latent50(args, data: Path, budget: float) -> dict:
    """Run :func:`latent50_main` in a process of its own, killed at the budget plus a grace period."""
    result: dict = {"budget_seconds": round(budget)}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        partial = Path(tmp) / "latent50.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-step", "latent50", "--step-json", str(partial),
               "--device", args.device, "--data", str(data), "--latent-seconds", f"{budget:.1f}",
               "--latent-k", str(args.latent_k), "--latent-evals", str(args.latent_evals),
               "--latent-max-epochs", str(args.latent_max_epochs)]
        if args.quick:
            cmd.append("--quick")
        if not args.latent_compile:
            cmd.append("--no-latent-compile")
        if args.checkpoint:
            cmd += ["--checkpoint", str(Path(args.checkpoint).resolve())]
        grace = 20
        run = run_command(cmd, budget + grace, child_env(data, args.device))
        if partial.is_file():
            try:
                result.update(json.loads(partial.read_text()))
            except json.JSONDecodeError as e:
                result["partial_error"] = f"the step's own record could not be read: {e}"
    result.update(command="python " + " ".join([str(Path(cmd[1]).relative_to(ROOT)), *cmd[2:]]),
                  returncode=run["returncode"], seconds=run["seconds"], output_tail=tail(run["output"], 2000))
    result["shipped_reference"] = shipped_latent50()
    if run["timed_out"]:
        result.update(status="timeout", error=f"the latent-50 run ran past its budget of {budget:.0f} s plus {grace} s "
                                              "(the evaluations it finished are kept)")
    elif run["returncode"] != 0 or result.get("error"):
        result.update(status="failed", error=result.get("error") or last_error_line(run["output"]))
    elif not result.get("best"):
        result.update(status="failed", error="the run ended without a k-sample evaluation")
    else:
        result["status"] = "passed"
    return result


def latent50_main(args) -> int:
    """The latent-50 run itself (``--run-step latent50``): writes its record to ``--step-json`` as it goes."""
    began = time.perf_counter()
    deadline = began + args.latent_seconds
    out = Path(args.step_json)
    rec: dict = {"model": "VAE(50), hidden layers (512, 512), ReLU, Bernoulli decoder (plain Adam; not the shipped "
                          "vae_latent50's recipe)", "engine": "vaelib.speed.fit_fast",
                 "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in LATENT50.items()},
                 "evaluations": [], "best": None, "phases": {}}
    quick = args.quick
    try:
        import torch

        from vaelib.data import load_mnist
        from vaelib.evaluate import test_scores
        from vaelib.models import VAE
        from vaelib.speed import fit_fast, tf32_matmuls
        from vaelib.training import describe_device, pick_device

        dev = pick_device(args.device)
        rec["device"] = describe_device(dev)
        t = time.perf_counter()
        train_u8, _ = load_mnist("train", root=args.data, download=False)
        test_u8, _ = load_mnist("test", root=args.data, download=False)
        if quick:
            train_u8, test_u8 = train_u8[:512], test_u8[:100]
        rec["data"] = {"train_images": len(train_u8), "test_images": len(test_u8),
                       "test_binarization": "vaelib.data.binarized_test_set with seed 1, as the shipped record"}
        rec["phases"]["load_seconds"] = round(time.perf_counter() - t, 2)
        k = args.latent_k
        rec["recipe"]["k"] = k
        compile = args.latent_compile
        settings = dict(batch_size=LATENT50["batch_size"], lr=LATENT50["lr"], schedule=LATENT50["schedule"],
                        seed=LATENT50["seed"], binarize=LATENT50["binarize"], device=dev, progress=False,
                        verbose=False)

        def new_model():
            torch.manual_seed(LATENT50["seed"])
            return VAE(LATENT50["latent_dim"], hidden_sizes=LATENT50["hidden_sizes"],
                       activation=LATENT50["activation"], likelihood=LATENT50["likelihood"])

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        def score(model, images):
            # the k-sample bound in full float32: fit_fast allows TF32 while it trains on CUDA
            with torch.no_grad(), (tf32_matmuls(False) if dev.type == "cuda" else contextlib.nullcontext()):
                return test_scores(model, images, k=k, seed=1, batch_size=100)

        # 1. the first steps, where torch.compile compiles the step; eager if compiling fails
        warm, probe = (1, 4) if quick else (30, 200)
        t = time.perf_counter()
        try:
            fit_fast(new_model(), train_u8, epochs=1, max_steps=warm, compile=compile, **settings)
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on uncompiled
            if not compile:
                raise
            rec["compile_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            compile = False
            fit_fast(new_model(), train_u8, epochs=1, max_steps=warm, compile=False, **settings)
        sync()
        rec["recipe"]["compile"] = compile
        rec["phases"]["first_steps_seconds"] = round(time.perf_counter() - t, 2)
        # 2. what a step costs (two runs of different lengths: what they share, a recompilation say, cancels
        # out), and a k-sample evaluation per image
        short_run = sum(fit_fast(new_model(), train_u8, epochs=1, max_steps=probe // 4, compile=compile,
                                 **settings)["seconds"])
        probe_model = new_model()
        long_run = sum(fit_fast(probe_model, train_u8, epochs=1, max_steps=probe, compile=compile, **settings)["seconds"])
        step_seconds = (long_run - short_run) / (probe - probe // 4)
        if not step_seconds > 0:
            step_seconds = long_run / probe
        n_probe = min(len(test_u8), 20 if quick else 300)
        t = time.perf_counter()
        score(probe_model, test_u8[:n_probe])
        sync()
        eval_seconds = (time.perf_counter() - t) / n_probe * len(test_u8)
        rec["phases"].update(step_ms=round(1000 * step_seconds, 3),
                             images_per_second=round(LATENT50["batch_size"] / step_seconds),
                             k_eval_seconds_estimate=round(eval_seconds, 2))
        write_json(out, rec)
        # 3. the plan: as many epochs of the schedule as the budget holds, with room for the evaluations
        n_evals = max(1, args.latent_evals)
        steps_per_epoch = math.ceil(len(train_u8) / LATENT50["batch_size"])
        margin = 2.0 if quick else 10.0
        left = deadline - time.perf_counter() - n_evals * eval_seconds * 1.2 - margin
        max_epochs = 2 if quick else args.latent_max_epochs
        rec["recipe"]["max_epochs"] = max_epochs
        epochs = max(1, min(max_epochs, int(left / (1.15 * steps_per_epoch * step_seconds))))
        planned = epochs * steps_per_epoch
        eval_points = sorted({max(1, round(planned * (i + 1) / n_evals)) for i in range(n_evals)})
        rec["plan"] = {"epochs": epochs, "steps": planned, "steps_per_epoch": steps_per_epoch,
                       "k_eval_at_steps": eval_points, "limited_by": "budget" if epochs < max_epochs else "recipe"}
        rec["test_neg_elbo_curve_note"] = "[step, test -ELBO with one z per image on the first 1,000 test images]"
        rec["test_neg_elbo_curve"] = []
        write_json(out, rec)
        # 4. train, scoring the test set with k samples at the planned points, and when time runs short
        model = new_model()
        pending = list(eval_points)
        state = {"best_state": None}

        def on_eval(entry: dict) -> bool:
            step = entry["step"]
            rec["test_neg_elbo_curve"].append([step, round(entry["neg_elbo"], 3)])
            short = time.perf_counter() + 1.5 * eval_seconds + margin > deadline
            due = bool(pending) and step >= pending[0]
            if not (due or short or step == planned):
                return False
            while pending and step >= pending[0]:
                pending.pop(0)
            t0 = time.perf_counter()
            s = score(model, test_u8)
            entry_out = {"step": step, "epoch": entry["epoch"], "seconds_since_start": round(entry["seconds"], 2),
                         "nll": round(s["nll"], 4), "neg_elbo": round(s["neg_elbo"], 4),
                         "nll_standard_error": round(s["nll_standard_error"], 4), "k": s["k"],
                         "images": s["images"], "eval_seconds": round(time.perf_counter() - t0, 2)}
            rec["evaluations"].append(entry_out)
            if rec["best"] is None or entry_out["nll"] < rec["best"]["nll"]:
                rec["best"] = dict(entry_out)
                if args.checkpoint:
                    state["best_state"] = {n: v.detach().cpu().clone() for n, v in model.state_dict().items()}
            write_json(out, rec)
            if short and step < planned:
                rec["stopped_early"] = f"at step {step} of {planned}: the budget had no room for another evaluation"
                return True
            return False

        t = time.perf_counter()
        # fit_fast calls on_eval every `every` steps, after its own one-z test -ELBO on the first 1,000 test
        # images (the curve in the report; a few milliseconds on a GPU); the k-sample scores use the whole set
        every = max(1, min(steps_per_epoch, planned // (4 * n_evals)))
        history = fit_fast(model, train_u8, test_u8[:1000], epochs=epochs, compile=compile, eval_every=every,
                           on_eval=on_eval, **settings)
        rec["phases"]["train_and_eval_seconds"] = round(time.perf_counter() - t, 2)
        # (fit_fast's per-epoch seconds leave out its own evaluations but not the time spent in on_eval)
        k_eval_total = sum(e["eval_seconds"] for e in rec["evaluations"])
        rec["phases"]["k_eval_seconds_total"] = round(k_eval_total, 2)
        rec["phases"]["train_seconds"] = round(sum(history["seconds"]) - k_eval_total, 2)
        rec["steps_done"] = history["evals"][-1]["step"] if history["evals"] else None
        if dev.type == "cuda":
            rec["phases"]["max_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 1024**3, 3)
        if args.checkpoint and state["best_state"] is not None:
            from vaelib.checkpoints import save_checkpoint

            best = new_model()
            best.load_state_dict(state["best_state"])
            rec["checkpoint"] = str(save_checkpoint(best, args.checkpoint, record={"gpu_check": rec["best"]}))
    except Exception as e:  # noqa: BLE001 - the parent records it and goes on
        rec["error"] = f"{type(e).__name__}: {str(e)[:800]}"
        rec["traceback"] = tail(traceback.format_exc(), 3000)
    rec["phases"]["seconds"] = round(time.perf_counter() - began, 2)
    write_json(out, rec)
    return 1 if "error" in rec else 0


# --------------------------------------------------------------------------- the whole check
def run_step(name: str, args, data: Path, left: float) -> dict:
    """Run one step within ``left`` seconds; a step that breaks this script is recorded like any other failure."""
    try:
        if name == "cuda_tests":
            return step_cuda_tests(args, data, min(args.tests_seconds, left))
        if name == "train_speed_compiled":
            return step_train_speed(args, data, min(args.speed_seconds, left), compile=True)
        if name == "train_speed_eager":
            limit = args.speed_seconds if args.quick else args.speed_seconds / 2
            return step_train_speed(args, data, min(limit, left), compile=False)
        reserve = 5 if args.quick else 25  # the grace period of its process, and writing the report
        return step_latent50(args, data, min(args.latent_seconds, left - reserve))
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc())}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The module docstring says what each step does.")
    p.add_argument("--data", default=os.environ.get("VAELIB_DATA"),
                   help="folder with the four MNIST files, e.g. data/mnist (default: $VAELIB_DATA)")
    p.add_argument("--out", default="gpu_report.json", help="where the JSON report goes (default: gpu_report.json)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="every step in small (a dry run; meant with --device cpu)")
    p.add_argument("--only", action="append", choices=STEPS, help="run only this step (repeatable)")
    p.add_argument("--total-seconds", type=float, default=None,
                   help="time limit of the whole check (default: 465, quick: 150)")
    p.add_argument("--tests-seconds", type=float, default=None, help="limit of the CUDA tests (default 100)")
    p.add_argument("--speed-seconds", type=float, default=None,
                   help="limit of the compiled train_speed.py run (default 100); the uncompiled one gets half")
    p.add_argument("--latent-seconds", type=float, default=None,
                   help="budget of the latent-50 run, its evaluations included (default 300, quick 40)")
    p.add_argument("--latent-k", type=int, default=None,
                   help="importance samples per test image (default 5000, quick 10)")
    p.add_argument("--latent-evals", type=int, default=None,
                   help="k-sample evaluations during training (default 4, quick 2)")
    p.add_argument("--latent-max-epochs", type=int, default=LATENT50["max_epochs"],
                   help="at most this many epochs (default: the shipped recipe's 150)")
    p.add_argument("--latent-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the latent-50 run's step (default: on, off with --quick)")
    p.add_argument("--checkpoint", default=None, help="also save the best latent-50 model there (a .pt path)")
    p.add_argument("--run-step", choices=("latent50",), help=argparse.SUPPRESS)
    p.add_argument("--step-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.data:
        p.error("--data is needed (or set VAELIB_DATA): the folder with the MNIST files, e.g. data/mnist")
    q = args.quick
    if args.total_seconds is None:
        args.total_seconds = 150.0 if q else 465.0
    if args.tests_seconds is None:
        args.tests_seconds = float(LIMITS["cuda_tests"][q])
    if args.speed_seconds is None:
        args.speed_seconds = float(LIMITS["train_speed_compiled"][q])
    if args.latent_seconds is None:
        args.latent_seconds = 40.0 if q else 300.0
    if args.latent_k is None:
        args.latent_k = 10 if q else 5000
    if args.latent_evals is None:
        args.latent_evals = 2 if q else 4
    if args.latent_compile is None:
        args.latent_compile = not q
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_step == "latent50":
        return latent50_main(args)
    started = time.perf_counter()
    deadline = started + args.total_seconds
    data = Path(args.data).expanduser().resolve()
    out = Path(args.out).expanduser().resolve()
    steps = [s for s in STEPS if not args.only or s in args.only]
    minimum = QUICK_MINIMUM if args.quick else MINIMUM
    report = {"report": "vaelib GPU check (benchmarks/gpu_check.py)", "format": REPORT_FORMAT, "ok": None,
              "quick": args.quick, "command": " ".join(["benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
              "started_at": now_iso(), "time_limit_seconds": args.total_seconds,
              "environment": environment(args, data), "steps": {}, "failures": []}

    def record(name: str, result: dict) -> None:
        report["steps"][name] = result
        if result.get("status") in ("failed", "timeout", "error") or result.get("error"):
            report["failures"].append({"step": name, "status": result.get("status"),
                                       "error": result.get("error") or "(no message)"})
        report["wall_seconds"] = round(time.perf_counter() - started, 2)
        write_json(out, report)

    write_json(out, report)
    missing = report["environment"]["mnist_missing"]
    if missing:  # nothing here downloads them: the check needs no network
        report["failures"].append({"step": "setup", "status": "error",
                                   "error": f"{data} lacks the MNIST files {', '.join(missing)} (.gz or not)"})
    if args.device == "cuda" and not report["environment"].get("cuda_available"):
        why = report["environment"].get("torch_error")
        report["failures"].append({"step": "setup", "status": "error",
                                   "error": "--device cuda, but torch sees no CUDA GPU" + (f" ({why})" if why else "")})
    for i, name in enumerate(steps):
        later = sum(minimum[s] for s in steps[i + 1:])
        left = deadline - time.perf_counter() - later
        if args.quick and name == "train_speed_compiled":
            result = {"status": "skipped", "reason": "quick mode: compiling the step on the CPU takes minutes; "
                                                     "train_speed_eager runs the same script uncompiled"}
        elif missing and name != "cuda_tests":  # (the CUDA tests that need no data still run)
            result = {"status": "failed", "error": f"needs the MNIST files, and {data} lacks {', '.join(missing)}"}
        elif left < minimum[name] / 2:
            result = {"status": "skipped", "error": f"no time left: {left:.0f} s of the total {args.total_seconds:.0f} s "
                                                    "at its turn"}
        else:
            sys.stderr.write(f"[gpu_check] {name}: starting, {left:.0f} s left for it\n")
            result = run_step(name, args, data, left)
        sys.stderr.write(f"[gpu_check] {name}: {result.get('status')}"
                         + (f" ({result['error']})" if result.get("error") else "") + "\n")
        record(name, result)
    report["ok"] = not report["failures"]
    report["finished_at"] = now_iso()
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out, report)
    verdict = "no failures" if report["ok"] else f"{len(report['failures'])} failures"
    sys.stderr.write(f"[gpu_check] report: {out} ({verdict}, {report['wall_seconds']:.0f} s)\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
