"""How fast does a VAE train? The fast trainer against a loop written the usual tutorial way.

    python benchmarks/train_speed.py [--device cpu|cuda] [--recipe tuned|plain] [--no-compile] [--ema DECAY|off]
                                     [--backward auto|manual|autograd] [--bf16 auto|on|off]

Both loops train the same model from the same initial weights, with the same seed, batch size,
learning-rate schedule and optimizer, on dynamically binarized MNIST, in this one process:

- the baseline: a ``DataLoader`` over float CPU tensors (batch 128, shuffled), each batch
  binarized on the CPU and copied to the device with ``.to(device)``, the loss written out
  and ``loss.item()`` read every step;
- the fast trainer, :func:`vaelib.speed.fit_fast`, which computes its gradients with the backward
  pass written out (``--backward auto``, the default; ``--backward autograd`` measures it with
  ``loss.backward()`` instead), and multiplies in bfloat16 (``fit_fast(bf16=True)``) where the
  device does that natively: ``--bf16 auto``, the default, times a bfloat16 and a float32 product of
  the step's largest shape first and uses bfloat16 if it is at least ``BF16_MIN_GAIN`` (1.5) times
  as fast; ``--bf16 on`` or ``off`` decides without measuring. The baseline always stays in
  float32, and so do all test evaluations.

The model and its training recipe (``--recipe``):

- ``tuned`` (default): latent 50, an encoder with hidden layers of 512 and 256 GELU units and a
  decoder that mirrors it (256, then 512), each hidden layer followed by a LayerNorm; the
  encoder's input centered on the mean training image, the decoder started at that image and the
  encoder's log-variances at −6 (:class:`vaelib.speed.TunedVAE` with ``center_input=True`` and its
  ``init_from_data``); Adam with lr 5e-3 and betas (0.8, 0.99); the learning rate rises over the
  first 10% of a fixed budget of ``--epochs`` epochs and then falls linearly to 0
  (``schedule="warmup-linear"``); an exponential moving average of the weights with decay 0.99,
  which is what gets evaluated (``--ema off`` evaluates the weights themselves);
- ``plain``: two hidden layers of 512 ReLU units in the encoder and in the decoder and nothing
  else, PyTorch's default initialization, Adam with lr 1e-3 at a constant rate, the weights
  evaluated: what a first tutorial does.

It prints images per second for each loop (after a few untimed warm-up steps; the median of
``--rounds`` rounds that time the two loops in turn), their ratio, the
most any loop could reach (a step's matrix-product work at the measured speed of a matrix product
of the step's largest shape), and
for each the wall-clock time, evaluations included, from the start of training until the test
−ELBO (full test set, one fixed binarization, one z per image) first reaches the target (100
nats). The test set is evaluated every ``--eval-every`` steps while the mean training loss over
those steps is within ``--eval-margin`` nats of the target, and after the budget's last step (the
same rule for both loops). With a moving average of the weights (``--ema DECAY``; the tuned
recipe's is 0.99) both loops keep it, the baseline with ``torch.optim.swa_utils.AveragedModel``
and the fast trainer with ``fit_fast(ema=...)``, and evaluate it instead of the weights.

The margin's default is 4 nats with a moving average and 2 without. Measured with the tuned
recipe, seeds 0, 1 and 2, evaluating every 59 steps from step 708 on: the training loss ran 0.5
to 4.6 nats above the average's test −ELBO, and at most 3.8 above it wherever that was below
101.5; without the average (``--ema off``) it ran between 0.4 nats below and 2.2 above the test
−ELBO, and at most 1.8 above it from step 944 on, where the test −ELBO was below 104. So an
evaluation skipped for a training loss above target + margin would have found the test −ELBO
above the target. The fast trainer compiles its step with ``torch.compile`` (``fit_fast(compile=True)``:
on the CPU the whole step, from the batch's binarization to Adam's update and the moving average; on a GPU the
written-out loss and gradients; with ``--backward autograd`` the loss); ``--no-compile`` runs it
uncompiled. Compiling happens once per process, in the first untimed warm-up, whose duration is
printed and reported as ``fast_first_warmup_seconds``; the later runs, the timed ones and the one to
the target, reuse what it compiled.
The last line is one JSON object with the numbers and the device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaelib import data as mnist_data
from vaelib.models import VAE
from vaelib.speed import (
    BACKWARDS,
    CompileFailed,
    TunedVAE,
    check_backward,
    eval_batch_size_for,
    fit_fast,
    matmul_flops_per_s,
)
from vaelib.training import check_ema, describe_device, evaluate, make_optimizer, make_scheduler, pick_device

RECIPES = {
    "tuned": {"hidden": (512, 256), "activation": "gelu", "norm": "layer", "center_input": True, "logvar": -6.0,
              "lr": 5e-3, "betas": (0.8, 0.99), "schedule": "warmup-linear", "ema": 0.99},
    "plain": {"hidden": (512, 512), "activation": "relu", "norm": None, "center_input": False, "logvar": None,
              "lr": 1e-3, "betas": (0.9, 0.999), "schedule": "constant", "ema": None},
}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def new_model(args, dev: torch.device, train_u8: torch.Tensor) -> VAE:
    """The recipe's model: the speed recipe's :class:`vaelib.speed.TunedVAE` where the recipe uses its options
    (LayerNorm, a centered input, the data-based start), else the plain :class:`vaelib.models.VAE`."""
    recipe = RECIPES[args.recipe]
    torch.manual_seed(args.seed)
    settings = dict(hidden_sizes=recipe["hidden"], activation=recipe["activation"])
    if recipe["norm"] is None and not recipe["center_input"] and recipe["logvar"] is None:
        return VAE(args.latent_dim, **settings).to(dev)
    model = TunedVAE(args.latent_dim, **settings, norm=recipe["norm"], center_input=recipe["center_input"])
    if recipe["logvar"] is not None:  # the data-based start, with these log-variances
        model.init_from_data(train_u8, logvar=recipe["logvar"])
    return model.to(dev)


def synchronizer(dev: torch.device):
    """A function that waits for the device's queued work (nothing to wait for on the CPU)."""
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


def planned_steps(args, n: int) -> int:
    """The learning-rate schedule's length: ``--epochs`` epochs of ``n`` images."""
    return round(args.epochs * math.ceil(n / args.batch_size))


def baseline(args, dev, train_u8, train_f, test_u8, steps: int, target: float | None):
    """The tutorial loop. Returns (images per second over ``steps`` timed steps, seconds to target or None)."""
    recipe = RECIPES[args.recipe]
    model = new_model(args, dev, train_u8)
    optimizer = make_optimizer(model.parameters(), recipe["lr"], betas=recipe["betas"])
    planned = planned_steps(args, len(train_f))
    scheduler = make_scheduler(optimizer, recipe["schedule"], planned)
    averaged = None  # --ema: the moving average of the weights, kept with torch's AveragedModel
    if args.ema is not None:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
    evaluated = model if averaged is None else averaged.module
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_f), batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sync = synchronizer(dev)
    done, timed_from, images, window = 0, None, 0, []
    start = time.perf_counter()
    while True:
        for (x,) in loader:
            x = torch.bernoulli(x).to(dev)
            mu, logvar = model.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = model.decode(z)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (rec + kl) / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            window.append(loss.item())
            done += 1
            if done == args.warmup:
                sync()
                timed_from = time.perf_counter()
            elif done > args.warmup:
                images += x.shape[0]
            if done == args.warmup + steps and target is None:
                sync()
                return images / (time.perf_counter() - timed_from), None
            if target is not None and (done % args.eval_every == 0 or done == planned):
                recent, window = sum(window) / len(window), []
                if recent <= target + args.eval_margin or done == planned:
                    ev = evaluate(evaluated, test_u8, seed=args.seed + 1, batch_size=eval_batch_size_for(dev))
                    model.train()
                    if ev["neg_elbo"] <= target:
                        return images / (time.perf_counter() - timed_from), time.perf_counter() - start
            if target is not None and done >= planned:
                return images / (time.perf_counter() - timed_from), None


def fast_settings(args, dev, n: int) -> tuple[dict, int, int]:
    """The fast trainer's keyword arguments for this recipe, the planned steps, and the epochs that hold them."""
    recipe = RECIPES[args.recipe]
    planned = planned_steps(args, n)
    common = dict(batch_size=args.batch_size, lr=recipe["lr"], betas=recipe["betas"], schedule=recipe["schedule"],
                  ema=args.ema, device=dev, seed=args.seed, progress=False, verbose=False,
                  compile=args.compile, backward=args.backward,
                  bf16=args.use_bf16)  # evaluation batches: eval_batch_size_for
    return common, planned, math.ceil(planned * args.batch_size / n)


def fast_throughput(args, dev, train_u8, steps: int) -> tuple[float, float]:
    """Images per second of the fast trainer over ``steps`` steps, after an untimed warm-up run, and
    the warm-up's seconds (with ``--compile`` the first one includes compiling the step).

    The learning-rate schedule then spans these steps only; it does not change the cost of a step.
    """
    common, _, epochs = fast_settings(args, dev, len(train_u8))
    sync = synchronizer(dev)
    start = time.perf_counter()
    fit_fast(new_model(args, dev, train_u8), train_u8, epochs=1, max_steps=args.warmup, **common)
    sync()
    warmup = time.perf_counter() - start
    h = fit_fast(new_model(args, dev, train_u8), train_u8, epochs=epochs, max_steps=steps, **common)
    return steps * args.batch_size / sum(h["seconds"]), warmup


def fast_to_target(args, dev, train_u8, test_u8, target: float) -> tuple[float | None, int | None, float]:
    """Train over the budget until the test -ELBO reaches ``target``.

    Returns (seconds from the start of training, evaluations included, or None; the step; the last test -ELBO).
    """
    common, planned, epochs = fast_settings(args, dev, len(train_u8))
    h = fit_fast(new_model(args, dev, train_u8), train_u8, test_u8, epochs=epochs, max_steps=planned,
                 eval_every=args.eval_every, on_eval=lambda entry: entry["neg_elbo"] <= target,
                 eval_below=target + args.eval_margin, **common)
    last = h["evals"][-1]
    if last["neg_elbo"] <= target:
        return last["seconds"], last["step"], last["neg_elbo"]
    return None, None, last["neg_elbo"]


def step_flops_per_image(model: VAE) -> float:
    """Floating-point operations of one training step per image in the linear layers.

    Forward: 2·in·out per layer. Backward: the same again for the weight gradients, and again for
    the input gradients of every layer but the first (the data needs none).
    """
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(2 * i * o for i, o in sizes)
    first = 2 * sizes[0][0] * sizes[0][1]
    return 3 * forward - first


# --bf16 auto multiplies in bfloat16 where that is at least this many times as fast as float32. Where the
# hardware has no bfloat16 arithmetic the product is emulated and slower; on the AVX-512 BF16 CPU of
# benchmarks/README.md (CPU B) it was 2.0 to 2.6 times as fast.
BF16_MIN_GAIN = 1.5


def choose_bf16(setting: str, fp32_flops: float, bf16_flops: float | None) -> bool:
    """Whether the fast trainer multiplies in bfloat16: ``--bf16`` on/off, or for auto whether the measured
    bfloat16 product is at least :data:`BF16_MIN_GAIN` times as fast as the float32 one."""
    if setting != "auto":
        return setting == "on"
    return bf16_flops is not None and bf16_flops >= BF16_MIN_GAIN * fp32_flops


def describe_recipe(args) -> str:
    r = RECIPES[args.recipe]
    parts = [f"VAE latent {args.latent_dim}, hidden layers of {' and '.join(map(str, r['hidden']))} "
             f"{r['activation'].upper()} units"
             + (" with LayerNorm" if r["norm"] else "") + ", Bernoulli decoder"
             + ("; input centered on the mean training image" if r["center_input"] else "")
             + (f"; decoder started at the mean image, log-variances at {r['logvar']:g}" if r["logvar"] is not None
                else ""),
             f"Adam lr {r['lr']:g}, betas {r['betas']}, schedule {r['schedule']} over {args.epochs:g} epochs, "
             f"batch {args.batch_size}, seed {args.seed}; dynamic binarization"
             + (f"; evaluated with a moving average of the weights (decay {args.ema:g})" if args.ema is not None
                else "")]
    return f"{args.recipe} recipe: " + "; ".join(parts)


def ema_arg(text: str) -> float | str:
    """``--ema``: a decay, or "off" (no moving average, whatever the recipe says)."""
    if text == "off":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1) or off, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the recipe's defaults filled in (``--ema``, ``--eval-margin``, ``--epochs``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tuned", help="model and training recipe (see above)")
    p.add_argument("--epochs", type=float, default=None,
                   help="training budget in epochs: the schedule's length and when to give up on the target "
                        "(default: 3 for tuned, 20 for plain)")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300, help="timed steps for the throughput of each loop")
    p.add_argument("--rounds", type=int, default=3,
                   help="throughput rounds, each timing both loops in turn; the medians are reported")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--target", type=float, default=100.0, help="test -ELBO to reach (nats)")
    p.add_argument("--eval-every", type=int, default=59, help="steps between test evaluations (default: an eighth of an epoch)")
    p.add_argument("--eval-margin", type=float, default=None,
                   help="evaluate only when the recent training loss is within this many nats of the target "
                        "(default: 4 with a moving average of the weights, else 2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="the fast trainer compiles its step with torch.compile (fit_fast(compile=True); the "
                        "default); compiling happens in the untimed first warm-up, whose time is printed. "
                        "--no-compile runs it uncompiled")
    p.add_argument("--backward", choices=BACKWARDS, default="auto",
                   help="the fast trainer's gradients: written-out backward pass (manual), loss.backward() "
                        "(autograd), or auto (manual where the model allows); see fit_fast(backward=...)")
    p.add_argument("--ema", type=ema_arg, default=None, metavar="DECAY|off",
                   help="both loops keep a moving average of the weights with this decay and evaluate it; off: "
                        "they evaluate the weights (default: the recipe's, 0.99 for tuned, off for plain)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="the fast trainer multiplies in bfloat16 (fit_fast(bf16=True)); auto: where a bfloat16 "
                        f"product of the step's largest shape measures at least {BF16_MIN_GAIN:g} times as fast as "
                        "float32 (default)")
    p.add_argument("--skip-baseline-target", action="store_true", help="time only the fast trainer to the target")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the cache)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    if args.ema is None:
        args.ema = RECIPES[args.recipe]["ema"]
    elif args.ema == "off":
        args.ema = None
    try:
        check_ema(args.ema)
    except ValueError as e:
        p.error(f"--ema: {e}")
    if args.eval_margin is None:
        args.eval_margin = 2.0 if args.ema is None else 4.0
    try:
        check_backward(args.backward)
    except ValueError as e:
        p.error(f"--backward: {e}")
    if args.epochs is None:
        args.epochs = 3.0 if args.recipe == "tuned" else 20.0
    args.use_bf16 = args.bf16 == "on"  # main() decides for auto, once it has measured both products
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = pick_device(args.device)
    train_u8, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_u8, _ = mnist_data.load_mnist("test", root=args.data_dir)
    train_f = train_u8.reshape(-1, 784).float() / 255
    print(f"device: {describe_device(dev)}; {device_name(dev)}; torch {torch.__version__}", flush=True)
    print(describe_recipe(args), flush=True)
    flops = step_flops_per_image(new_model(args, dev, train_u8))
    matmul = matmul_flops_per_s(dev, args.batch_size, seconds=1.0)
    matmul_bf16 = (matmul_flops_per_s(dev, args.batch_size, torch.bfloat16, seconds=1.0) if args.bf16 != "off"
                   else None)
    args.use_bf16 = choose_bf16(args.bf16, matmul, matmul_bf16)
    if matmul_bf16 is not None:
        print(f"bfloat16: a {args.batch_size} x 784 by 784 x 512 product runs at {matmul_bf16 / 1e9:.0f} GFLOP/s, "
              f"{matmul_bf16 / matmul:.2f} times float32's {matmul / 1e9:.0f}: the fast trainer multiplies in "
              + ("bfloat16" if args.use_bf16 else "float32") + f" (--bf16 {args.bf16})", flush=True)

    base_rounds, fast_rounds = [], []
    for r in range(args.rounds):  # alternated, so that a slow minute of the machine hits both loops
        base_rounds.append(baseline(args, dev, train_u8, train_f, test_u8, args.steps, None)[0])
        try:
            ips, warmup = fast_throughput(args, dev, train_u8, args.steps)
        except CompileFailed as e:  # on the CPU torch.compile needs a C++ compiler
            sys.exit(str(e))
        fast_rounds.append(ips)
        if r == 0:
            first_warmup = warmup
            print(f"fast trainer's first warm-up ({args.warmup} steps"
                  + (", compiling the step" if args.compile else "") + f"): {warmup:.1f} s, not counted below",
                  flush=True)
        print(f"throughput, round {r + 1} of {args.rounds}, {args.steps} steps: baseline {base_rounds[-1]:,.0f} "
              f"images/s, fast {fast_rounds[-1]:,.0f} images/s, ratio {fast_rounds[-1] / base_rounds[-1]:.2f}",
              flush=True)
    base_ips, fast_ips = statistics.median(base_rounds), statistics.median(fast_rounds)
    print(f"throughput, median of {args.rounds} rounds: baseline {base_ips:,.0f} images/s, fast {fast_ips:,.0f} "
          f"images/s, ratio {fast_ips / base_ips:.2f}", flush=True)
    bound = matmul / flops
    print(f"bound: a step costs {flops / 1e6:.2f} MFLOP per image in its matrix products; at the measured "
          f"{matmul / 1e9:.0f} GFLOP/s of a {args.batch_size} x 784 by 784 x 512 product that is at most "
          f"{bound:,.0f} images/s" + (f" in float32, {matmul_bf16 / flops:,.0f} in bfloat16" if args.use_bf16 else ""),
          flush=True)

    budget = f"not within the budget of {args.epochs:g} epochs"
    fast_s, fast_step, fast_last = fast_to_target(args, dev, train_u8, test_u8, args.target)
    print(f"fast trainer: test -ELBO <= {args.target:g} nats after "
          + (f"{fast_s:.1f} s (step {fast_step})" if fast_s is not None
             else f"{budget} (test -ELBO after the last step: {fast_last:.2f})"), flush=True)
    base_s = None
    if not args.skip_baseline_target:
        _, base_s = baseline(args, dev, train_u8, train_f, test_u8, args.steps, args.target)
        print(f"baseline: test -ELBO <= {args.target:g} nats after "
              + (f"{base_s:.1f} s" if base_s is not None else budget), flush=True)

    key = "100_nats" if args.target == 100 else f"{args.target:g}_nats"
    result = {
        "device": describe_device(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "recipe": args.recipe,
        "baseline_images_per_s": round(base_ips, 1),
        "fast_images_per_s": round(fast_ips, 1),
        "speedup": round(fast_ips / base_ips, 3),
        "baseline_images_per_s_rounds": [round(v, 1) for v in base_rounds],
        "fast_images_per_s_rounds": [round(v, 1) for v in fast_rounds],
        "fast_first_warmup_seconds": round(first_warmup, 2),
        "matmul_gflop_per_s": round(matmul / 1e9, 1),
        "matmul_bound_images_per_s": round(bound, 1),
        "fast_bf16": args.use_bf16,
        "bf16_matmul_gflop_per_s": None if matmul_bf16 is None else round(matmul_bf16 / 1e9, 1),
        f"fast_seconds_to_{key}": None if fast_s is None else round(fast_s, 2),
        "fast_steps_to_target": fast_step,
        "fast_last_test_neg_elbo": round(fast_last, 3),
        f"baseline_seconds_to_{key}": None if base_s is None else round(base_s, 2),
        "settings": {k: v for k, v in vars(args).items() if k != "data_dir"},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
