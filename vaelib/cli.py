"""The command line ``python -m vaelib.train``: train a model, write its checkpoint and record.

    python -m vaelib.train --latent-dim 2 --epochs 10 --out runs/vae2.pt

writes the checkpoint, its sha256 manifest, and a JSON record of the command, the settings, the
device, the time per epoch and the per-epoch train/test numbers. ``--engine fast`` trains with
:func:`vaelib.speed.fit_fast` (docs/training.md lists its options).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import data as mnist_data
from ._helpers import positive_int_arg
from .checkpoints import save_checkpoint
from .models import VAE, Autoencoder
from .speed import CompileFailed, TunedVAE, fit_fast
from .train import OBJECTIVES, fit
from .training import BINARIZATIONS, SCHEDULES, TEST_BINARIZATION, describe_device, pick_device

ENGINES = ("reference", "fast")


def train_with(engine: str, model, train_x, test_x, **settings) -> dict[str, Any]:
    """Train with :func:`vaelib.train.fit` (``engine="reference"``) or :func:`vaelib.speed.fit_fast`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "fast":
        return fit_fast(model, train_x, test_x, **settings)
    for option in ("bf16", "compile"):
        if settings.pop(option, False):
            raise ValueError(f"{option}=True needs engine='fast' (the reference loop runs in the model's dtype, uncompiled)")
    return fit(model, train_x, test_x, **settings)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vaelib.train",
        description="Train a VAE on MNIST and write a checkpoint, its sha256 manifest and a JSON training record.",
    )
    p.add_argument("--latent-dim", type=positive_int_arg, required=True, help="size of the latent code z")
    p.add_argument("--epochs", type=positive_int_arg, default=10)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path, e.g. runs/vae2.pt (record goes to runs/vae2.json)")
    p.add_argument("--model", choices=("vae", "autoencoder"), default="vae")
    p.add_argument("--paper", action="store_true", help="the original paper's model: one hidden layer of 500 tanh units")
    p.add_argument("--hidden", type=positive_int_arg, nargs="+", default=[512, 512], help="hidden layer widths (default: 512 512)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian decoder's standard deviation")
    p.add_argument("--binarize", choices=BINARIZATIONS, default="dynamic")
    p.add_argument("--batch-size", type=positive_int_arg, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the user cache)")
    p.add_argument("--train-limit", type=positive_int_arg, default=None, help="use only the first N training images")
    p.add_argument("--max-steps", type=positive_int_arg, default=None, help="stop after this many optimizer steps")
    p.add_argument("--engine", choices=ENGINES, default="reference",
                   help="reference: the loop of notebook 06; fast: vaelib.speed (the same objectives, ELBO or IWAE, "
                        "with less overhead)")
    p.add_argument("--objective", choices=OBJECTIVES, default="elbo",
                   help="elbo: the ELBO (with --beta); iwae: the importance-weighted bound with --k samples "
                        "(notebook 08), with either engine")
    p.add_argument("--k", type=positive_int_arg, default=5, help="samples per image of the IWAE objective (default 5)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (AdamW); 0: plain Adam")
    p.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], metavar=("B1", "B2"),
                   help="Adam's decay rates (default 0.9 0.999)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="evaluate and save a moving average of the weights with this decay, e.g. 0.99 (default: off)")
    p.add_argument("--norm", choices=("none", "layer"), default="none", help="layer: LayerNorm after each hidden layer")
    p.add_argument("--center-input", action="store_true",
                   help="the encoder subtracts a stored image (the training mean, with --init-from-data) from its input")
    p.add_argument("--init-from-data", action="store_true",
                   help="start the decoder at the mean training image, center the input on it (with --center-input) "
                        "and start the encoder's log-variances at -6 (VAE only)")
    p.add_argument("--bf16", action="store_true",
                   help="with --engine fast: matrix products in bfloat16, the rest in float32 (faster only where the "
                        "hardware has bfloat16 arithmetic, e.g. AVX-512 BF16 or AMX CPUs)")
    p.add_argument("--compile", action="store_true",
                   help="with --engine fast: compile the training step with torch.compile (a few seconds once, "
                        "then faster steps; on the CPU it needs a C++ compiler)")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv) -> argparse.Namespace:
    """The command line's arguments; with ``--paper`` the settings say what the model is (1×500 tanh)."""
    args = build_parser().parse_args(argv)
    if args.paper:
        args.hidden, args.activation = [500], "tanh"
    for flag in ("bf16", "compile"):
        if getattr(args, flag) and args.engine != "fast":
            raise SystemExit(f"--{flag} needs --engine fast")
    return args


def training_record(argv, model, train_x, test_x, device, history, wall) -> dict[str, Any]:
    """The JSON record written beside a checkpoint: the command, settings, data, device, timings, numbers."""
    args = parse_args(list(argv))
    final = {"train_loss": history["train_loss"][-1], "test_loss": history["test_loss"][-1]}
    if isinstance(model, VAE):
        final["test_neg_elbo"] = history["test_neg_elbo"][-1]
        final["test_kl"] = history["test_kl"][-1]
    return {
        "command": "python -m vaelib.train " + " ".join(argv),
        "model": model.config,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "train_images": int(train_x.shape[0]),
            "test_images": int(test_x.shape[0]),
            "binarization": args.binarize if args.likelihood == "bernoulli" else "none (grey levels)",
            "test_binarization": TEST_BINARIZATION + ("; z from seed + 2" if isinstance(model, VAE) else ""),
        },
        "units": "nats per image: summed over pixels and latent dims, averaged over images; test -ELBO from one z per image",
        "device": describe_device(device),
        "torch": torch.__version__,
        "seconds_per_epoch": history["seconds"],
        "mean_seconds_per_epoch": sum(history["seconds"]) / len(history["seconds"]),
        "wall_seconds": wall,
        "history": history,
        "final": final,
    }


def build_model(args: argparse.Namespace):
    """The model the command line asks for; with --norm, --center-input or --init-from-data, the speed
    recipe's :class:`vaelib.speed.TunedVAE`."""
    settings = dict(hidden_sizes=args.hidden, activation=args.activation, likelihood=args.likelihood, sigma=args.sigma)
    tuned = args.norm != "none" or args.center_input or args.init_from_data
    if args.model != "vae":
        if tuned:
            raise SystemExit("--norm, --center-input and --init-from-data apply to VAEs only")
        return Autoencoder(args.latent_dim, **settings)
    if tuned:
        return TunedVAE(args.latent_dim, **settings, norm=None if args.norm == "none" else args.norm,
                        center_input=args.center_input)
    return VAE(args.latent_dim, **settings)


def initial_model(args: argparse.Namespace, train_x):
    """The model ``args`` ask for, as training starts: seeded with ``args.seed`` and, with
    ``--init-from-data``, started from the (first ``--train-limit``) training images."""
    torch.manual_seed(args.seed)
    model = build_model(args)
    if args.init_from_data:
        model.init_from_data(train_x[: args.train_limit])
    return model


def train_from_args(args: argparse.Namespace, model, train_x, test_x, *, verbose: bool = True):
    """Train ``model`` (from :func:`initial_model`) on uint8 images as ``args`` say.

    Returns ``(history, device, wall_seconds)``; :func:`main` and :func:`vaelib.shipped.load_or_train`
    both train through here, so they train the same model.
    """
    train_x = train_x[: args.train_limit]
    device = pick_device(args.device)
    if verbose:
        print(f"training {model.config} on {describe_device(device)}", flush=True)
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta, device=device,
                    seed=args.seed, binarize=args.binarize, max_steps=args.max_steps, progress=not args.no_progress,
                    schedule=args.schedule, weight_decay=args.weight_decay, betas=tuple(args.betas), ema=args.ema,
                    objective=args.objective, iwae_k=args.k, verbose=verbose)
    if args.engine == "fast":
        settings.update(bf16=args.bf16, compile=args.compile)
    wall = time.perf_counter()
    try:
        history = train_with(args.engine, model, train_x, test_x, **settings)
    except CompileFailed as e:  # --compile without a working compiler: the advice, not a traceback
        raise SystemExit(str(e)) from e
    return history, device, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    train_x, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_x, _ = mnist_data.load_mnist("test", root=args.data_dir)
    model = initial_model(args, train_x)
    history, device, wall = train_from_args(args, model, train_x, test_x)
    record = training_record(sys.argv[1:] if argv is None else argv, model, train_x[: args.train_limit], test_x,
                             device, history, wall)
    save_checkpoint(model.cpu(), args.out, record=record)
    print(json.dumps({"checkpoint": str(args.out), **record["final"],
                      "mean_seconds_per_epoch": record["mean_seconds_per_epoch"]}))
    return record


if __name__ == "__main__":
    main()
