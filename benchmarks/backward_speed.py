"""What does the written-out backward pass save? The fast trainer's step with its hand-written
backward pass (:func:`vaelib.speed.backprop.vae_loss_and_grads`) against the same step with autograd.

    python benchmarks/backward_speed.py [--device cpu|cuda] [--steps 800] [--recipe tuned|plain]
                                        [--dtype float32|float64]

``benchmarks/train_speed.py`` times the whole fast trainer against a tutorial loop; this script
isolates this one choice, whose effect is smaller than the drift of a single run's speed there.

Two copies of the same model (the recipe's, as in ``train_speed.py``) train side by side from the
same initial weights on the same batches, with the same uniforms for the binarization and the
same noise: at every step one copy takes a step with the written-out backward pass, the other
with ``loss.backward()``, in alternating order, so that a slow minute of the machine hits both.
Each timed step covers the binarization, the loss, the gradients, Adam and the learning-rate
schedule. It prints the median time of a step for each (after ``--warmup`` untimed steps), the
median of the per-step ratios, each copy's mean training loss over the timed steps, and how far
apart the two copies' weights ended. The two compute the same gradients up to rounding
(``tests/test_backprop.py`` checks them against autograd in float64), but float32 rounding
differences grow as training goes on, much faster without LayerNorm: with ``--recipe plain
--steps 300`` the weights ended 0.24 apart, and with ``--dtype float64`` added 6e-14 apart (2-core
AMD EPYC CPU, torch 2.13.0). The mean losses should still agree closely. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from train_speed import (  # this folder's training-speed benchmark
    RECIPES,
    device_name,
    new_model,
    synchronizer,
)

from vaelib import data as mnist_data
from vaelib.speed import autograd_loss_and_grads, binarize_batch, fused_adam
from vaelib.speed.backprop import vae_loss_and_grads
from vaelib.training import describe_device, make_scheduler, pick_device

WAYS = ("manual", "autograd")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tuned")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=800, help="steps of each copy, the untimed warm-up included")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps at the start")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the models' and random numbers' precision (float64 shows how far apart rounding alone takes them)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the cache)")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be at least 0 and less than --steps")

    dev = pick_device(args.device)
    train_u8, _ = mnist_data.load_mnist("train", root=args.data_dir)
    grey = train_u8.reshape(-1, 784).to(dev)
    recipe = RECIPES[args.recipe]
    dtype = getattr(torch, args.dtype)
    models = {way: new_model(args, dev, train_u8).to(dtype) for way in WAYS}
    optimizers = {way: fused_adam(models[way].parameters(), recipe["lr"], 0.0, recipe["betas"]) for way in WAYS}
    schedulers = {way: make_scheduler(optimizers[way], recipe["schedule"], args.steps) for way in WAYS}
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    sync = synchronizer(dev)
    m = args.batch_size
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    losses: dict[str, list[torch.Tensor]] = {way: [] for way in WAYS}
    print(f"device: {describe_device(dev)}; {device_name(dev)}; torch {torch.__version__}", flush=True)
    for step in range(args.steps):
        grey_batch = grey[torch.randint(0, grey.shape[0], (m,), generator=gen, device=dev)]
        u = torch.rand(grey_batch.shape, generator=gen, device=dev, dtype=dtype)
        eps = torch.randn((m, args.latent_dim), generator=gen, device=dev, dtype=dtype)
        for way in WAYS if step % 2 == 0 else reversed(WAYS):
            model, optimizer = models[way], optimizers[way]
            sync()
            start = time.perf_counter()
            x = binarize_batch(grey_batch, u)
            loss = (vae_loss_and_grads if way == "manual" else autograd_loss_and_grads)(model, x, eps)
            optimizer.step()
            if schedulers[way] is not None:  # None: a constant rate
                schedulers[way].step()
            sync()
            if step >= args.warmup:
                times[way].append(time.perf_counter() - start)
                losses[way].append(loss.detach())

    median = {way: statistics.median(times[way]) for way in WAYS}
    ratio = statistics.median(a / b for a, b in zip(times["autograd"], times["manual"]))
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(models["manual"].parameters(),
                                                              models["autograd"].parameters()))
    mean_loss = {way: float(torch.stack(losses[way]).double().mean()) for way in WAYS}
    timed = args.steps - args.warmup
    print(f"{timed} timed steps each: written-out backward {median['manual'] * 1e3:.2f} ms, autograd "
          f"{median['autograd'] * 1e3:.2f} ms (medians); median per-step ratio autograd / written-out {ratio:.3f}; "
          f"mean training loss over those steps {mean_loss['manual']:.3f} and {mean_loss['autograd']:.3f}; largest "
          f"weight difference at the end {diff:.2e}", flush=True)
    result = {
        "device": describe_device(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "recipe": args.recipe,
        "dtype": args.dtype,
        "timed_steps": timed,
        "manual_ms_per_step": round(median["manual"] * 1e3, 3),
        "autograd_ms_per_step": round(median["autograd"] * 1e3, 3),
        "speedup": round(ratio, 4),
        "manual_mean_train_loss": round(mean_loss["manual"], 4),
        "autograd_mean_train_loss": round(mean_loss["autograd"], 4),
        "max_weight_difference": diff,
        "settings": {k: v for k, v in vars(args).items() if k != "data_dir"},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
