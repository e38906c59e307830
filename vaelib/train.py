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
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import data as mnist_data
from ._helpers import NonFiniteError, check_beta, check_positive_int, positive_int_arg
from .bounds import iwae_loss
from .checkpoints import save_checkpoint
from .models import VAE, Autoencoder, evaluating

BINARIZATIONS = ("dynamic", "static", "none")
SCHEDULES = ("constant", "cosine", "warmup-linear")
WARMUP_FRACTION = 0.1  # of the planned steps, for schedule="warmup-linear"
ENGINES = ("reference", "fast")
OBJECTIVES = ("elbo", "iwae")


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
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''}, {platform.machine() or 'unknown'})"


def _as_images(split: Any) -> torch.Tensor:
    """Accept an image tensor or an (images, labels) pair; return images as (N, 784), uint8 or float."""
    if isinstance(split, (tuple, list)):
        split = split[0]
    if not isinstance(split, torch.Tensor):
        raise TypeError(f"expected an image tensor or (images, labels), got {type(split).__name__}")
    if split.dim() < 2 or split.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty set of images, (N, 784) or (N, 28, 28) with N >= 1, got shape {tuple(split.shape)}"
        )
    if split.dtype != torch.uint8:
        split = split.float()
        if split.numel() and not (torch.isfinite(split).all() and split.min() >= 0 and split.max() <= 1):
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


def check_binarize(binarize: str) -> None:
    """``binarize`` is one of :data:`BINARIZATIONS`."""
    if binarize not in BINARIZATIONS:
        raise ValueError(f"binarize must be one of {BINARIZATIONS}, got {binarize!r}")


#: How a training record's test numbers binarize the test set (its ``data.test_binarization``).
TEST_BINARIZATION = ("one fixed Bernoulli sample of the test set drawn on the CPU with seed + 1 "
                     "(vaelib.train.binarized_test_set)")

#: How many images :func:`binarized_test_set` binarizes with one call, to bound its memory on the
#: training set. The CPU generator gives the same draw in chunks as in one piece (tested).
BINARIZATION_CHUNK = 10_000


def binarized_test_set(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli sample of ``images`` (uint8 or floats in [0, 1]) drawn on the CPU with ``seed``.

    The draw depends on the images and the seed only: not on the model, the batch size or the
    device. :func:`evaluate` (the test numbers of training records) and ``python -m
    vaelib.evaluate`` (the importance-weighted log-likelihood) both score this sample, so their
    numbers for the same seed are on the same binary images. Returned on the CPU, as float32 0/1.
    """
    images = _as_images(images).cpu()  # uint8 stays uint8: only one chunk at a time becomes float
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.bernoulli(_to_unit(images[s : s + BINARIZATION_CHUNK]), generator=gen)
                      for s in range(0, images.shape[0], BINARIZATION_CHUNK)])


def evaluation_set(model, images: torch.Tensor, binarize: str, seed: int) -> torch.Tensor:
    """The images as :func:`evaluate` feeds them to ``model``: :func:`binarized_test_set` with ``seed``
    (on the CPU) for a Bernoulli decoder (unless ``binarize="none"``), grey levels in [0, 1] otherwise."""
    if getattr(model, "likelihood", None) == "bernoulli" and binarize in ("dynamic", "static"):
        return binarized_test_set(images, seed)
    return _to_unit(_as_images(images))


@torch.no_grad()
def evaluate(
    model,
    images: torch.Tensor,
    beta: float = 1.0,
    batch_size: int = 1000,
    seed: int = 0,
    binarize: str = "dynamic",
) -> dict[str, float]:
    """Average loss terms over a data set (nats per image), with a fixed seed for the binarization and z.

    For a VAE returns ``{"loss", "neg_elbo", "reconstruction", "kl"}`` where ``loss`` is the
    training objective with weight β on the KL and ``neg_elbo`` is −ELBO (β = 1) from one z per
    image; for an autoencoder ``{"loss", "reconstruction"}``.

    The images are binarized once with ``seed`` (:func:`binarized_test_set`: the same binary
    images for every model, batch size and device) and z is drawn batch by batch from a generator
    on the model's device seeded with ``seed + 1``.
    """
    from .bounds import elbo

    batch_size = check_positive_int(batch_size, "batch_size")
    check_binarize(binarize)
    beta = check_beta(beta)
    device = next(model.parameters()).device
    x = evaluation_set(model, images, binarize, seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    sums = {"reconstruction": 0.0, "kl": 0.0}
    n = x.shape[0]
    with evaluating(model):
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device)
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


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), **kwargs) -> torch.optim.Optimizer:
    """Adam with moment decay rates ``betas``, or AdamW when ``weight_decay`` > 0 (decoupled decay:
    each step shrinks the weights by lr·decay)."""
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def check_fit_arguments(
    *, binarize: str, epochs: int, batch_size: int, schedule: str, ema: float | None, max_steps: int | None = None,
    beta: float = 1.0,
) -> None:
    """The argument checks both training engines share."""
    check_binarize(binarize)
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if max_steps is not None:
        check_positive_int(max_steps, "max_steps", minimum=0)
    check_beta(beta)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    check_ema(ema)


def check_ema(ema: float | None) -> None:
    """``ema`` (the decay of the weights' moving average) is None or a number in [0, 1)."""
    if ema is None:
        return
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0:
        raise ValueError(f"ema, the decay of the weights' moving average, must be None or in [0, 1), got {ema!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, planned_steps: int):
    """The learning-rate schedule over ``planned_steps`` optimizer steps, as a multiplier of lr.

    None for "constant". "cosine": a half cosine from lr down to lr / 20. "warmup-linear": a
    linear rise from lr / w to lr over the first w = 10% of the steps, then a straight line down
    to 0 at the last step; for a fixed budget of steps this reaches a lower loss at the end than
    a constant rate does.
    """
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, planned_steps) / max(1, planned_steps))),
        )
    if schedule == "warmup-linear":
        warm = max(1, round(WARMUP_FRACTION * planned_steps))

        def factor(t: int) -> float:
            if t < warm:
                return (t + 1) / warm
            return max(0.0, (planned_steps - t) / max(1, planned_steps - warm))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def new_history(device: torch.device, **extra: Any) -> dict[str, Any]:
    """An empty training history: the per-epoch lists both training engines fill, plus ``extra``."""
    return {
        "epoch": [], "steps": [], "train_loss": [], "test_loss": [], "test_neg_elbo": [], "test_kl": [],
        "seconds": [], "lr": [], "device": describe_device(device), **extra,
    }


def end_epoch(history, model, *, epoch, step, train_loss, seconds, lr, test_x, beta, eval_batch_size, seed, binarize,
              verbose) -> None:
    """Record one finished epoch in ``history``: its numbers, the test evaluation, and a printed line."""
    history["epoch"].append(epoch)
    history["steps"].append(step)
    history["train_loss"].append(train_loss)
    history["seconds"].append(seconds)
    history["lr"].append(lr)
    if test_x is not None:
        ev = evaluate(model, test_x, beta=beta, batch_size=eval_batch_size, seed=seed + 1, binarize=binarize)
        history["test_loss"].append(ev["loss"])
        history["test_neg_elbo"].append(ev.get("neg_elbo", ev["loss"]))
        history["test_kl"].append(ev.get("kl", 0.0))
    if verbose:
        msg = f"epoch {epoch}: train loss {train_loss:.2f}"
        if test_x is not None:
            msg += f", test loss {history['test_loss'][-1]:.2f}"
        print(msg + f" ({seconds:.1f} s)", file=sys.stderr if not _in_notebook() else sys.stdout, flush=True)


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
    engine: str = "reference",
    objective: str = "elbo",
    iwae_k: int = 5,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    ema: float | None = None,
    bf16: bool = False,
    compile: bool = False,
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
        schedule: "constant" learning rate; "cosine": decays from ``lr`` to ``lr / 20`` along a
            half cosine over the planned steps (all epochs, or ``max_steps`` if smaller);
            "warmup-linear": rises linearly over the first 10% of them, then falls linearly to 0.
        engine: "reference" (this loop: every tensor checked, one step at a time) or "fast"
            (:func:`vaelib.fast.fit_fast`: the same objective with the data on the device and no
            per-step synchronization; VAEs only).
        objective: "elbo" (the default: −ELBO with weight β on the KL) or "iwae": minus the
            importance-weighted bound with ``iwae_k`` samples per image
            (:func:`vaelib.bounds.iwae_loss`, notebook 07; VAEs only, β must be 1, reference
            engine only). ``train_loss`` is then that objective; the test numbers stay −ELBO.
        iwae_k: samples per image of the IWAE objective (ignored for "elbo"); 1 gives the ELBO.
        weight_decay: decoupled weight decay (AdamW) per unit learning rate; 0 gives plain Adam.
        betas: Adam's decay rates for its running means of the gradient and its square.
        ema: None (the default), or the decay d of an exponential moving average of the
            weights: after the first step the average is the weights; after each later step it
            becomes d · average + (1 − d) · weights (:class:`torch.optim.swa_utils.AveragedModel`).
            The test evaluations then use the average, and ``model`` ends training holding it
            (the last raw weights are dropped). With the tuned recipe of
            ``benchmarks/train_speed.py``, whose d is 0.99, the average reached a test −ELBO of
            100 nats at step 1,180 where the weights needed 1,298, and was no better once the
            learning rate had decayed to 0 (README, "Training from the command line").
        bf16: with the fast engine only, run the matrix products in bfloat16 and everything else in
            float32 (:func:`vaelib.fast.fit_fast`); faster only on hardware with native bfloat16
            arithmetic, and not the same numbers as float32 (close: README, "Training speed").
        compile: with the fast engine only, compile its step with ``torch.compile``
            (:func:`vaelib.fast.fit_fast`): on the CPU the whole step, Adam's update included. The
            first call compiles for a few seconds (up to about 22 on a 2-core CPU); after that a
            step of the benchmark's model takes 4 to 6 ms instead of 6 to 8 in bfloat16 on such a
            CPU (README, "Training speed").

    Returns a history dict: per-epoch lists ``epoch``, ``steps``, ``train_loss`` (the training
    objective averaged over the epoch's batches), ``test_loss``, ``test_neg_elbo`` (β = 1),
    ``test_kl``, ``seconds`` (training time of the epoch, evaluation excluded), ``lr`` (the
    learning rate at the epoch's end), and ``device``.
    Raises :class:`TrainingDiverged` if the loss becomes NaN or infinite.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "iwae":
        if engine == "fast":
            raise ValueError("the fast engine trains the ELBO only; use engine='reference' for objective='iwae'")
        if not isinstance(model, VAE):
            raise ValueError(f"objective='iwae' needs a VAE, got {type(model).__name__}")
        if beta != 1.0:
            raise ValueError(f"objective='iwae' has no KL weight: beta must be 1, got {beta}")
        if isinstance(iwae_k, bool) or not isinstance(iwae_k, int) or iwae_k < 1:
            raise ValueError(f"iwae_k must be an integer >= 1, got {iwae_k!r}")
    if bf16 and engine != "fast":
        raise ValueError("bf16=True needs engine='fast' (the reference loop computes in the model's dtype)")
    if compile and engine != "fast":
        raise ValueError("compile=True needs engine='fast' (the reference loop runs uncompiled)")
    if engine == "fast":
        from .fast import fit_fast

        return fit_fast(
            model, train, test, epochs=epochs, batch_size=batch_size, lr=lr, beta=beta, device=device, seed=seed,
            binarize=binarize, max_steps=max_steps, progress=progress, eval_batch_size=eval_batch_size,
            schedule=schedule, verbose=verbose, weight_decay=weight_decay, betas=betas, ema=ema, bf16=bf16,
            compile=compile,
        )
    check_fit_arguments(binarize=binarize, epochs=epochs, batch_size=batch_size, schedule=schedule, ema=ema,
                        max_steps=max_steps, beta=beta)
    dev = pick_device(device)
    model.to(dev)
    likelihood = getattr(model, "likelihood", "bernoulli")
    train_x = _as_images(train)
    if likelihood == "bernoulli" and binarize == "static":
        train_x = mnist_data.binarize_static(_to_unit(train_x), seed=seed)
    train_x = train_x.to(dev)
    test_x = _as_images(test) if test is not None else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = make_optimizer(model.parameters(), lr, weight_decay, betas)
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    planned = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    scheduler = make_scheduler(optimizer, schedule, planned)
    averaged = None
    if ema is not None:
        averaged = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema))
    evaluated = averaged.module if averaged is not None else model  # what the test evaluations see
    history = new_history(dev)
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
                    if objective == "iwae":
                        loss = iwae_loss(model, x, iwae_k, generator=gen)
                    else:
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
                if averaged is not None:
                    averaged.update_parameters(model)
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
        end_epoch(history, evaluated, epoch=epoch, step=step, train_loss=total / count, seconds=seconds,
                  lr=optimizer.param_groups[0]["lr"], test_x=test_x, beta=beta, eval_batch_size=eval_batch_size,
                  seed=seed, binarize=binarize, verbose=verbose)
        if max_steps is not None and step >= max_steps:
            break
    if averaged is not None and step > 0:
        model.load_state_dict(averaged.module.state_dict())
    return history


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


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
                   help="reference: the checked loop of notebook 05; fast: vaelib.fast (same objective, less overhead)")
    p.add_argument("--objective", choices=OBJECTIVES, default="elbo",
                   help="elbo: the ELBO (with --beta); iwae: the importance-weighted bound with --k samples (notebook 07)")
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


def _training_record(argv, model, train_x, test_x, device, history, wall) -> dict[str, Any]:
    """The JSON record written beside a checkpoint: the command, settings, data, device, timings, numbers."""
    args = build_parser().parse_args(list(argv))
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for flag in ("bf16", "compile"):
        if getattr(args, flag) and args.engine != "fast":
            raise SystemExit(f"--{flag} needs --engine fast")
    hidden, activation = ([500], "tanh") if args.paper else (args.hidden, args.activation)
    torch.manual_seed(args.seed)
    cls = VAE if args.model == "vae" else Autoencoder
    model = cls(args.latent_dim, hidden_sizes=hidden, activation=activation, likelihood=args.likelihood, sigma=args.sigma,
                norm=None if args.norm == "none" else args.norm, center_input=args.center_input)
    train_x, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_x, _ = mnist_data.load_mnist("test", root=args.data_dir)
    if args.train_limit is not None:
        train_x = train_x[: args.train_limit]
    if args.init_from_data:
        if not isinstance(model, VAE):
            raise SystemExit("--init-from-data applies to VAEs only")
        model.init_from_data(train_x)
    device = pick_device(args.device)
    print(f"training {model.config} on {describe_device(device)}", flush=True)
    from .fast import CompileFailed

    wall = time.perf_counter()
    try:
        history = fit(
            model, train_x, test_x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
            device=device, seed=args.seed, binarize=args.binarize, max_steps=args.max_steps,
            progress=not args.no_progress, schedule=args.schedule, engine=args.engine, weight_decay=args.weight_decay,
            objective=args.objective, iwae_k=args.k, betas=tuple(args.betas), ema=args.ema, bf16=args.bf16,
            compile=args.compile,
        )
    except CompileFailed as e:  # --compile without a working compiler: the advice, not a traceback
        raise SystemExit(str(e)) from e
    wall = time.perf_counter() - wall
    record = _training_record(sys.argv[1:] if argv is None else argv, model, train_x, test_x, device, history, wall)
    final = record["final"]
    save_checkpoint(model.cpu(), args.out, record=record)
    print(json.dumps({"checkpoint": str(args.out), **final, "mean_seconds_per_epoch": record["mean_seconds_per_epoch"]}))
    return record


# --------------------------------------------------------------------------- load or train (notebook 05)

#: How each checkpoint shipped in ``vaelib/pretrained/`` was trained: the command line
#: ``python -m vaelib.train`` with these settings (and the defaults for the rest: batch 128,
#: learning rate 1e-3, seed 0, dynamic binarization, Bernoulli decoder). :func:`load_or_train`
#: uses them to train a model that is not shipped; when the checkpoint is there, the settings
#: stored in its JSON record take precedence.
SHIPPED_SETTINGS: dict[str, dict[str, Any]] = {
    "vae_latent2": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 150, "schedule": "cosine"},
    "vae_latent3": {"hidden_sizes": (500,), "activation": "tanh", "epochs": 250, "schedule": "cosine", "batch_size": 256,
                    "lr": 2e-3, "engine": "fast"},
    "vae_latent20": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 120, "schedule": "cosine"},
    "vae_latent50": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 150, "schedule": "cosine"},
    "autoencoder_latent20": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
    "vae_latent20_beta4": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
    "vae_latent20_beta0.5": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
}

#: Settings for a model with no entry in :data:`SHIPPED_SETTINGS` (the command line's defaults).
DEFAULT_SETTINGS: dict[str, Any] = {
    "hidden_sizes": (512, 512), "activation": "relu", "likelihood": "bernoulli", "sigma": 1.0, "epochs": 10,
    "batch_size": 128, "lr": 1e-3, "schedule": "constant", "seed": 0, "binarize": "dynamic", "engine": "reference",
}


class LoadedOrTrained(NamedTuple):
    """What :func:`load_or_train` returns: the model (eval mode), its training record, and its source.

    ``source`` is ``"shipped"`` (loaded from ``vaelib/pretrained/``, checksum verified) or
    ``"trained"`` (trained just now). The record has the layout of the JSON record written by
    ``python -m vaelib.train``: ``settings``, ``model``, ``device``, ``seconds_per_epoch``,
    ``history`` (per-epoch numbers), ``final``...
    """

    model: Any
    record: dict[str, Any]
    source: str


def training_settings(latent_dim: int, kind: str = "vae", beta: float = 1.0, **overrides: Any) -> dict[str, Any]:
    """The settings that (re)train the shipped model named by ``latent_dim``, ``kind`` and ``beta``.

    Taken from the shipped checkpoint's JSON record when it is present, else from
    :data:`SHIPPED_SETTINGS`, else :data:`DEFAULT_SETTINGS`; ``overrides`` (any key of
    :data:`DEFAULT_SETTINGS`) replace them. Returns a dict with every key of
    :data:`DEFAULT_SETTINGS` plus ``latent_dim``, ``kind`` and ``beta``.
    """
    from . import checkpoints

    unknown = set(overrides) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
    name = checkpoints.pretrained_name(latent_dim, kind, beta)
    settings = {**DEFAULT_SETTINGS, **SHIPPED_SETTINGS.get(name, {})}
    path = checkpoints.pretrained_path(latent_dim, kind, beta)
    if checkpoints.record_path(path).is_file():
        record = checkpoints.load_record(path)
        model_cfg, given = record.get("model", {}), record.get("settings", {})
        for key in ("hidden_sizes", "activation", "likelihood", "sigma"):
            if key in model_cfg:
                settings[key] = model_cfg[key]
        for key in ("epochs", "batch_size", "lr", "schedule", "seed", "binarize", "engine"):
            if key in given:
                settings[key] = given[key]
        settings["schedule"] = given.get("schedule", "constant")  # records older than the schedule option
    settings.update(overrides)
    settings["hidden_sizes"] = tuple(int(h) for h in settings["hidden_sizes"])
    return {"latent_dim": int(latent_dim), "kind": kind, "beta": float(beta), **settings}


def _command_line(settings: dict[str, Any], max_steps: int | None) -> list[str]:
    """The ``python -m vaelib.train`` arguments that train the same model with the same settings."""
    s = settings
    argv = ["--latent-dim", str(s["latent_dim"]), "--epochs", str(s["epochs"])]
    if s["kind"] != "vae":
        argv += ["--model", s["kind"]]
    if tuple(s["hidden_sizes"]) == (500,) and s["activation"] == "tanh":
        argv += ["--paper"]
    else:
        argv += ["--hidden", *map(str, s["hidden_sizes"]), "--activation", s["activation"]]
    if s["likelihood"] != "bernoulli":
        argv += ["--likelihood", s["likelihood"], "--sigma", f"{s['sigma']:g}"]
    for flag, key in (("--binarize", "binarize"), ("--batch-size", "batch_size"), ("--lr", "lr"),
                      ("--schedule", "schedule"), ("--beta", "beta"), ("--seed", "seed")):
        argv += [flag, f"{s[key]:g}" if isinstance(s[key], float) else str(s[key])]
    if s["engine"] != "reference":
        argv += ["--engine", s["engine"]]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    return argv


def load_or_train(
    latent_dim: int,
    kind: str = "vae",
    beta: float = 1.0,
    *,
    retrain: bool = False,
    train=None,
    test=None,
    max_steps: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: bool = False,
    out: str | Path | None = None,
    cache: bool | str | Path = False,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> LoadedOrTrained:
    """Load a shipped checkpoint, or train the same model from scratch (the load-or-train pattern).

    Introduced in notebook 05. With ``retrain=False`` and the checkpoint
    ``vaelib/pretrained/<kind>_latent<d>[_beta<b>].pt`` present, loads it (sha256 checked) with its
    JSON training record. Otherwise trains a fresh model with :func:`training_settings` (the
    settings the shipped one was trained with, unless ``overrides`` change them), exactly as
    ``python -m vaelib.train`` would: ``torch.manual_seed(seed)``, build the model, :func:`fit`.

    Args:
        latent_dim, kind, beta: name the model, as for :func:`vaelib.checkpoints.load_pretrained`.
        retrain: train even when the checkpoint is shipped.
        train, test: uint8 MNIST images (or (images, labels) pairs); loaded with
            :func:`vaelib.data.load_mnist` when None and needed.
        max_steps: stop training after this many optimizer steps (a short run; the cosine
            schedule then decays over these steps).
        device: training device, "auto"/None picks CUDA when present.
        progress, verbose: passed to :func:`fit`.
        out: if given, a trained model is saved there with its sha256 manifest and record.
        cache: a folder (``True``: ``~/.cache/vaelib/models``, or ``$VAELIB_CACHE/models``) where a
            model trained here in full (no ``max_steps``) is kept, so that a model that is not
            shipped is trained once: a later call with the same settings loads it from there
            (source ``"cached"``; sha256 checked). Not used with ``retrain=True``.
        map_location: where the returned model lives (CPU by default).
        **overrides: training settings, e.g. ``epochs=5`` or ``hidden_sizes=(64,)``.

    Returns :class:`LoadedOrTrained` ``(model, record, source)``. The record of a model trained
    here has the layout of the command line's record, plus ``initial``: the test numbers of the
    untrained model (same seed as the final ones), so a caller can check that the loss fell.
    """
    from . import checkpoints

    path = checkpoints.pretrained_path(latent_dim, kind, beta)
    if not retrain and path.is_file():
        model = checkpoints.load_checkpoint(path, map_location=map_location)
        return LoadedOrTrained(model, checkpoints.load_record(path), "shipped")

    s = training_settings(latent_dim, kind, beta, **overrides)
    cached = None
    if cache and max_steps is None:
        folder = Path(cache) if not isinstance(cache, bool) else model_cache_dir()
        cached = folder / path.name
        if not retrain and cached.is_file() and _same_settings(checkpoints.load_record(cached), s):
            model = checkpoints.load_checkpoint(cached, map_location=map_location)
            return LoadedOrTrained(model, checkpoints.load_record(cached), "cached")
    argv = _command_line(s, max_steps)
    if device is not None and str(device) != "auto":
        argv += ["--device", str(device)]
    if train is None:
        train = mnist_data.load_mnist("train")[0]
    if test is None:
        test = mnist_data.load_mnist("test")[0]
    train_x, test_x = _as_images(train), _as_images(test)
    dev = pick_device(device)
    torch.manual_seed(s["seed"])
    cls = VAE if kind == "vae" else Autoencoder
    model = cls(int(latent_dim), hidden_sizes=s["hidden_sizes"], activation=s["activation"],
                likelihood=s["likelihood"], sigma=s["sigma"])
    initial = evaluate(model, test_x, beta=s["beta"], seed=s["seed"] + 1, binarize=s["binarize"])
    wall = time.perf_counter()
    history = fit(
        model, train_x, test_x, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], beta=s["beta"],
        device=dev, seed=s["seed"], binarize=s["binarize"], max_steps=max_steps, progress=progress,
        schedule=s["schedule"], verbose=verbose, engine=s["engine"],
    )
    wall = time.perf_counter() - wall
    argv += ["--out", str(out if out is not None else path.name)]
    record = {**_training_record(argv, model, train_x, test_x, dev, history, wall), "initial": initial}
    model = model.to(map_location).eval()
    if out is not None:
        save_checkpoint(model, out, record=record)
    if cached is not None:
        save_checkpoint(model, cached, record={**record, "training_settings": _jsonable(s)})
    return LoadedOrTrained(model, record, "trained")


def model_cache_dir() -> Path:
    """Where :func:`load_or_train` keeps models it trained: ``$VAELIB_CACHE/models`` or ``~/.cache/vaelib/models``."""
    root = os.environ.get("VAELIB_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "vaelib") / "models"


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _same_settings(record: dict[str, Any], settings: dict[str, Any]) -> bool:
    return record.get("training_settings") == _jsonable(settings)


if __name__ == "__main__":
    main()
