"""Training a VAE (or the plain autoencoder) on MNIST, and the command line (notebook 05).

``fit`` keeps the data set on the training device as uint8, draws minibatches by index and
binarizes each batch freshly (dynamic binarization) for the Bernoulli decoder; the test set is
binarized once with a fixed seed so that test numbers are comparable from epoch to epoch.
All losses are in nats per image: summed over pixels and latent dimensions, averaged over images.

Command line::

    python -m vaelib.train --latent-dim 2 --epochs 10 --out runs/vae2.pt

writes the checkpoint, its sha256 manifest, and a JSON record of the settings, the device,
the time per epoch and the per-epoch train/test numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import data as mnist_data
from ._validate import NonFiniteError
from .checkpoints import save_checkpoint
from .models import VAE, Autoencoder, evaluating

BINARIZATIONS = ("dynamic", "static", "none")
SCHEDULES = ("constant", "cosine")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU; ``device`` ("cpu", "cuda", "cuda:1", or "auto"/None) overrides."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


def describe_device(device: torch.device) -> str:
    """A readable name for the device, e.g. 'cuda (NVIDIA H100 80GB HBM3)' or 'cpu (2 threads, x86_64)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine() or 'unknown'})"


def _as_images(split: Any) -> torch.Tensor:
    """Accept an image tensor or an (images, labels) pair; return images as (N, 784), uint8 or float."""
    if isinstance(split, (tuple, list)):
        split = split[0]
    if not isinstance(split, torch.Tensor):
        raise TypeError(f"expected an image tensor or (images, labels), got {type(split).__name__}")
    if split.dtype != torch.uint8:
        split = split.float()
        if split.numel() and (split.min() < 0 or split.max() > 1):
            raise ValueError("float images must lie in [0, 1] (or pass uint8 grey levels 0..255)")
    return split.reshape(split.shape[0], -1) if split.dim() == 3 else split


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0 if batch.dtype == torch.uint8 else batch


def prepare_batch(batch: torch.Tensor, likelihood: str, binarize: str, generator: torch.Generator | None) -> torch.Tensor:
    """Turn a batch of stored images into the model's input: binarized for Bernoulli, grey levels otherwise."""
    x = _to_unit(batch)
    if likelihood == "bernoulli" and binarize == "dynamic":
        return torch.bernoulli(x, generator=generator)
    return x


@torch.no_grad()
def evaluate(
    model,
    images: torch.Tensor,
    beta: float = 1.0,
    batch_size: int = 1000,
    seed: int = 0,
    binarize: str = "dynamic",
) -> dict[str, float]:
    """Average loss terms over a data set (nats per image), with a fixed seed for z and binarization.

    For a VAE returns ``{"loss", "neg_elbo", "reconstruction", "kl"}`` where ``loss`` is the
    training objective with weight β on the KL and ``neg_elbo`` is −ELBO (β = 1) from one z per
    image; for an autoencoder ``{"loss", "reconstruction"}``.
    """
    from .bounds import elbo

    device = next(model.parameters()).device
    images = _as_images(images)
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"reconstruction": 0.0, "kl": 0.0}
    n = images.shape[0]
    with evaluating(model):
        for start in range(0, n, batch_size):
            xb = images[start : start + batch_size].to(device)
            if getattr(model, "likelihood", None) == "bernoulli" and binarize in ("dynamic", "static"):
                xb = torch.bernoulli(_to_unit(xb), generator=gen)
            else:
                xb = _to_unit(xb)
            if isinstance(model, VAE):
                terms = elbo(model, xb, generator=gen, return_terms=True)
                sums["reconstruction"] += -terms.reconstruction.sum().item()
                sums["kl"] += terms.kl.sum().item()
            else:
                sums["reconstruction"] += model.loss(xb).item() * xb.shape[0]
    rec, kl = sums["reconstruction"] / n, sums["kl"] / n
    if isinstance(model, VAE):
        return {"loss": rec + beta * kl, "neg_elbo": rec + kl, "reconstruction": rec, "kl": kl}
    return {"loss": rec, "reconstruction": rec}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def fit(
    model,
    train,
    test=None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    beta: float = 1.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    binarize: str = "dynamic",
    max_steps: int | None = None,
    progress: bool = True,
    eval_batch_size: int = 1000,
    schedule: str = "constant",
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``model`` with Adam on ``train`` and evaluate on ``test`` after every epoch.

    Args:
        model: a :class:`~vaelib.models.VAE` or :class:`~vaelib.models.Autoencoder`; moved to the device.
        train, test: uint8 images (N, 28, 28) / (N, 784) as returned by ``load_mnist``, float
            images in [0, 1], or (images, labels) pairs. ``test`` may be None.
        epochs: passes over the training set.
        batch_size, lr: minibatch size and Adam's learning rate.
        beta: weight of the KL term (β-VAE); 1 gives the ELBO.
        device: "auto"/None (CUDA when present, else CPU), "cpu" or "cuda".
        seed: seeds the batch order, the binarization and z; the model's initial weights are
            seeded by whoever builds it (the command line does ``torch.manual_seed(seed)``).
        binarize: "dynamic" (a fresh Bernoulli sample of every batch), "static" (binarize once
            with ``seed``) or "none" (grey levels; a Gaussian decoder always sees grey levels).
        max_steps: stop after this many optimizer steps in total (for short runs).
        progress: show a progress bar (works in a terminal and in Jupyter).
        verbose: print one line per epoch with the train and test loss and the time.
        schedule: "constant" learning rate, or "cosine": decays from ``lr`` to ``lr / 20`` along a
            half cosine over the planned steps (all epochs, or ``max_steps`` if smaller).

    Returns a history dict: per-epoch lists ``epoch``, ``steps``, ``train_loss`` (the training
    objective averaged over the epoch's batches), ``test_loss``, ``test_neg_elbo`` (β = 1),
    ``test_kl``, ``seconds`` (training time of the epoch, evaluation excluded), ``lr`` (the
    learning rate at the epoch's end), and ``device``.
    Raises :class:`TrainingDiverged` if the loss becomes NaN or infinite.
    """
    if binarize not in BINARIZATIONS:
        raise ValueError(f"binarize must be one of {BINARIZATIONS}, got {binarize!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    dev = pick_device(device)
    model.to(dev)
    likelihood = getattr(model, "likelihood", "bernoulli")
    train_x = _as_images(train)
    if likelihood == "bernoulli" and binarize == "static":
        train_x = mnist_data.binarize_static(_to_unit(train_x), seed=seed)
    train_x = train_x.to(dev)
    test_x = _as_images(test) if test is not None else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    planned = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    scheduler = None
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, planned) / planned))
        )
    history: dict[str, Any] = {
        "epoch": [], "steps": [], "train_loss": [], "test_loss": [], "test_neg_elbo": [], "test_kl": [],
        "seconds": [], "lr": [], "device": describe_device(dev),
    }
    step = 0
    is_vae = isinstance(model, VAE)
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=dev)
        total, count = 0.0, 0
        bar = _progress(steps_per_epoch, f"epoch {epoch}/{epochs}", progress)
        try:
            for b in range(steps_per_epoch):
                if max_steps is not None and step >= max_steps:
                    break
                idx = perm[b * batch_size : (b + 1) * batch_size]
                x = prepare_batch(train_x[idx], likelihood, binarize, gen)
                try:
                    loss = model.loss(x, beta=beta, generator=gen) if is_vae else model.loss(x)
                    value = loss.item()
                except NonFiniteError as e:  # the decoder's output already held NaN
                    value, cause = math.nan, e
                else:
                    cause = None
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the training loss became {value} at epoch {epoch}, step {step + 1} (lr={lr}, beta={beta}); "
                        "stopping. Try a smaller learning rate; check the inputs for NaN."
                    ) from cause
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += value * x.shape[0]
                count += x.shape[0]
                step += 1
                bar.update(1)
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{value:.2f}")
        finally:
            bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        if count == 0:
            break
        history["epoch"].append(epoch)
        history["steps"].append(step)
        history["train_loss"].append(total / count)
        history["seconds"].append(seconds)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        if test_x is not None:
            ev = evaluate(model, test_x, beta=beta, batch_size=eval_batch_size, seed=seed + 1, binarize=binarize)
            history["test_loss"].append(ev["loss"])
            history["test_neg_elbo"].append(ev.get("neg_elbo", ev["loss"]))
            history["test_kl"].append(ev.get("kl", 0.0))
        if verbose:
            msg = f"epoch {epoch}: train loss {total / count:.2f}"
            if test_x is not None:
                msg += f", test loss {history['test_loss'][-1]:.2f}"
            print(msg + f" ({seconds:.1f} s)", file=sys.stderr if not _in_notebook() else sys.stdout, flush=True)
        if max_steps is not None and step >= max_steps:
            break
    return history


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vaelib.train",
        description="Train a VAE on MNIST and write a checkpoint, its sha256 manifest and a JSON training record.",
    )
    p.add_argument("--latent-dim", type=int, required=True, help="size of the latent code z")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path, e.g. runs/vae2.pt (record goes to runs/vae2.json)")
    p.add_argument("--model", choices=("vae", "autoencoder"), default="vae")
    p.add_argument("--paper", action="store_true", help="the original paper's model: one hidden layer of 500 tanh units")
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="hidden layer widths (default: 512 512)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian decoder's standard deviation")
    p.add_argument("--binarize", choices=BINARIZATIONS, default="dynamic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the user cache)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    hidden, activation = ([500], "tanh") if args.paper else (args.hidden, args.activation)
    torch.manual_seed(args.seed)
    cls = VAE if args.model == "vae" else Autoencoder
    model = cls(args.latent_dim, hidden_sizes=hidden, activation=activation, likelihood=args.likelihood, sigma=args.sigma)
    train_x, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_x, _ = mnist_data.load_mnist("test", root=args.data_dir)
    if args.train_limit is not None:
        train_x = train_x[: args.train_limit]
    device = pick_device(args.device)
    print(f"training {model.config} on {describe_device(device)}", flush=True)
    wall = time.perf_counter()
    history = fit(
        model, train_x, test_x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
        device=device, seed=args.seed, binarize=args.binarize, max_steps=args.max_steps, progress=not args.no_progress,
        schedule=args.schedule,
    )
    wall = time.perf_counter() - wall
    final = {"train_loss": history["train_loss"][-1], "test_loss": history["test_loss"][-1]}
    if args.model == "vae":
        final["test_neg_elbo"] = history["test_neg_elbo"][-1]
        final["test_kl"] = history["test_kl"][-1]
    record = {
        "command": "python -m vaelib.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": model.config,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "train_images": int(train_x.shape[0]),
            "test_images": int(test_x.shape[0]),
            "binarization": args.binarize if args.likelihood == "bernoulli" else "none (grey levels)",
            "test_binarization": "one fixed Bernoulli sample of the test set (seed + 1)",
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
    save_checkpoint(model.cpu(), args.out, record=record)
    print(json.dumps({"checkpoint": str(args.out), **final, "mean_seconds_per_epoch": record["mean_seconds_per_epoch"]}))
    return record


if __name__ == "__main__":
    main()
