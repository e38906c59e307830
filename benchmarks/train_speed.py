"""How fast does a VAE train? The fast trainer against a loop written the usual tutorial way.

    python benchmarks/train_speed.py [--device cpu|cuda]

Both loops train the same model (latent 50, encoder and decoder with two hidden layers of 512
ReLU units, Bernoulli decoder) from the same initial weights, with the same seed, batch size,
learning rate and optimizer (Adam), on dynamically binarized MNIST, in this one process:

- the baseline: a ``DataLoader`` over float CPU tensors (batch 128, shuffled), each batch
  binarized on the CPU and copied to the device with ``.to(device)``, the loss written out
  and ``loss.item()`` read every step;
- the fast trainer, :func:`vaelib.fast.fit_fast`.

It prints images per second for each (after a few untimed warm-up steps), their ratio, and for
each the wall-clock time, evaluations included, from the start of training until the test −ELBO
(full test set, one fixed binarization, one z per image) first reaches the target (100 nats).
The last line is one JSON object with the numbers and the device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from vaelib import data as mnist_data
from vaelib.fast import fit_fast
from vaelib.models import VAE
from vaelib.train import describe_device, evaluate, pick_device


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


def new_model(args, dev: torch.device) -> VAE:
    torch.manual_seed(args.seed)
    return VAE(args.latent_dim, hidden_sizes=(512, 512)).to(dev)


def baseline(args, dev, train_f, test_u8, steps: int, target: float | None):
    """The tutorial loop. Returns (images per second over ``steps`` timed steps, seconds to target or None)."""
    model = new_model(args, dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_f), batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    done, timed_from, images = 0, None, 0
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
            loss.item()
            done += 1
            if done == args.warmup:
                sync()
                timed_from = time.perf_counter()
            elif done > args.warmup:
                images += x.shape[0]
            if done == args.warmup + steps and target is None:
                sync()
                return images / (time.perf_counter() - timed_from), None
            if target is not None and done % args.eval_every == 0:
                ev = evaluate(model, test_u8, seed=args.seed + 1)
                model.train()
                if ev["neg_elbo"] <= target:
                    return images / (time.perf_counter() - timed_from), time.perf_counter() - start
                if done >= args.max_steps:
                    return images / (time.perf_counter() - timed_from), None


def fast(args, dev, train_u8, test_u8, steps: int, target: float | None):
    """The fast trainer. Returns (images per second, seconds to target or None, step reached)."""
    common = dict(batch_size=args.batch_size, lr=args.lr, device=dev, seed=args.seed, progress=False, verbose=False)
    if target is None:
        warm = fit_fast(new_model(args, dev), train_u8, epochs=1, max_steps=args.warmup, **common)
        h = fit_fast(new_model(args, dev), train_u8, epochs=math.ceil(steps * args.batch_size / len(train_u8)) + 1,
                     max_steps=steps, **common)
        del warm
        return steps * args.batch_size / sum(h["seconds"]), None, None
    hit = {}
    start = time.perf_counter()

    def on_eval(entry):
        if entry["neg_elbo"] <= target:
            hit["seconds"] = time.perf_counter() - start
            hit["step"] = entry["step"]
            return True
        return False

    epochs = math.ceil(args.max_steps * args.batch_size / len(train_u8))
    fit_fast(new_model(args, dev), train_u8, test_u8, epochs=epochs, max_steps=args.max_steps,
             eval_every=args.eval_every, on_eval=on_eval, **common)
    return None, hit.get("seconds"), hit.get("step")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300, help="timed steps for the throughput of each loop")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--target", type=float, default=100.0, help="test -ELBO to reach (nats)")
    p.add_argument("--eval-every", type=int, default=117, help="steps between test evaluations (a quarter epoch)")
    p.add_argument("--max-steps", type=int, default=20 * 469, help="give up on the target after this many steps")
    p.add_argument("--skip-baseline-target", action="store_true", help="time only the fast trainer to the target")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the cache)")
    args = p.parse_args(argv)

    dev = pick_device(args.device)
    train_u8, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_u8, _ = mnist_data.load_mnist("test", root=args.data_dir)
    train_f = train_u8.reshape(-1, 784).float() / 255
    print(f"device: {describe_device(dev)}; {device_name(dev)}; torch {torch.__version__}", flush=True)
    print(f"model: VAE latent {args.latent_dim}, 2 x 512 ReLU, Bernoulli; Adam lr {args.lr}, batch {args.batch_size}, "
          f"seed {args.seed}; dynamic binarization", flush=True)

    base_ips, _ = baseline(args, dev, train_f, test_u8, args.steps, None)
    fast_ips, _, _ = fast(args, dev, train_u8, test_u8, args.steps, None)
    print(f"throughput over {args.steps} steps: baseline {base_ips:,.0f} images/s, fast {fast_ips:,.0f} images/s, "
          f"ratio {fast_ips / base_ips:.2f}", flush=True)

    _, fast_s, fast_step = fast(args, dev, train_u8, test_u8, args.steps, args.target)
    say = (lambda s, step: f"{s:.1f} s (step {step})" if s is not None else f"not within {args.max_steps} steps")
    print(f"fast trainer: test -ELBO <= {args.target:g} nats after {say(fast_s, fast_step)}", flush=True)
    base_s = None
    if not args.skip_baseline_target:
        _, base_s = baseline(args, dev, train_f, test_u8, args.steps, args.target)
        print(f"baseline: test -ELBO <= {args.target:g} nats after "
              + (f"{base_s:.1f} s" if base_s is not None else f"not within {args.max_steps} steps"), flush=True)

    result = {
        "device": describe_device(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "baseline_images_per_s": round(base_ips, 1),
        "fast_images_per_s": round(fast_ips, 1),
        "speedup": round(fast_ips / base_ips, 3),
        "fast_seconds_to_100_nats" if args.target == 100 else f"fast_seconds_to_{args.target:g}_nats":
            None if fast_s is None else round(fast_s, 2),
        "fast_steps_to_target": fast_step,
        "baseline_seconds_to_target": None if base_s is None else round(base_s, 2),
        "settings": {k: v for k, v in vars(args).items() if k != "data_dir"},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
