"""What both trainers share: the device, the training images, evaluation, optimizer, schedule, history.

:func:`vaelib.train.fit` (the loop of notebook 06) and :func:`vaelib.speed.fit_fast` (the fast
engine) import these, so that the two train the same objective and report the same numbers.
All losses are in nats per image: summed over pixels and latent dimensions, averaged over images.
"""

from __future__ import annotations

import math
import platform
import sys
from typing import Any

import torch

from ._helpers import check_beta, check_positive_int, evaluating
from .bounds import elbo
from .data import binarize_static, binarized_test_set, to_float
from .models import VAE

BINARIZATIONS = ("dynamic", "static", "none")
SCHEDULES = ("constant", "cosine", "warmup-linear")
WARMUP_FRACTION = 0.1  # of the planned steps, for schedule="warmup-linear"

#: How a training record's test numbers binarize the test set (its ``data.test_binarization``).
TEST_BINARIZATION = ("one fixed Bernoulli sample of the test set drawn on the CPU with seed + 1 "
                     "(vaelib.data.binarized_test_set)")


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


def training_images(split: Any) -> torch.Tensor:
    """Images (N, 784), uint8 grey levels or floats in [0, 1], from an image tensor or an (images,
    labels) pair; checked once here, so that the training loops need not check each batch."""
    if isinstance(split, (tuple, list)):
        split = split[0]
    if not isinstance(split, torch.Tensor):
        raise TypeError(f"expected an image tensor or (images, labels), got {type(split).__name__}")
    if split.dim() < 2 or split.shape[0] == 0:
        raise ValueError(f"expected a non-empty set of images, (N, 784) or (N, 28, 28) with N >= 1, "
                         f"got shape {tuple(split.shape)}")
    if split.dtype != torch.uint8:
        split = to_float(split.float())  # raises unless every value lies in [0, 1]
    return split.reshape(split.shape[0], -1) if split.dim() == 3 else split


def check_binarize(binarize: str) -> None:
    if binarize not in BINARIZATIONS:
        raise ValueError(f"binarize must be one of {BINARIZATIONS}, got {binarize!r}")


def check_ema(ema: float | None) -> None:
    """``ema`` (the decay of the weights' moving average) is None or a number in [0, 1)."""
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0):
        raise ValueError(f"ema, the decay of the weights' moving average, must be None or in [0, 1), got {ema!r}")


OBJECTIVES = ("elbo", "iwae")


def check_objective(model, objective: str, iwae_k: int, beta: float) -> None:
    """What both trainers refuse of the training objective: an unknown name, and for the IWAE bound a
    model that is not a VAE, a KL weight (β ≠ 1: the bound has no separate KL term) or K < 1."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "iwae":
        if not isinstance(model, VAE):
            raise ValueError(f"objective='iwae' needs a VAE, got {type(model).__name__}")
        if beta != 1.0:
            raise ValueError(f"objective='iwae' has no KL weight: beta must be 1, got {beta}")
        if isinstance(iwae_k, bool) or not isinstance(iwae_k, int) or iwae_k < 1:
            raise ValueError(f"iwae_k must be an integer >= 1, got {iwae_k!r}")


def check_fit_arguments(*, binarize, epochs, batch_size, schedule, ema, max_steps=None, beta=1.0) -> None:
    """The argument checks both trainers share."""
    check_binarize(binarize)
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if max_steps is not None:
        check_positive_int(max_steps, "max_steps", minimum=0)
    check_beta(beta)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    check_ema(ema)


def static_training_set(images: torch.Tensor, likelihood: str, binarize: str, seed: int) -> torch.Tensor:
    """The training images once binarized with ``seed`` for binarize="static" (Bernoulli decoder)."""
    if likelihood == "bernoulli" and binarize == "static":
        return binarize_static(images, seed)
    return images


def evaluation_set(model, images: torch.Tensor, binarize: str, seed: int) -> torch.Tensor:
    """The images as :func:`evaluate` feeds them to ``model``: :func:`vaelib.data.binarized_test_set`
    with ``seed`` for a Bernoulli decoder (unless ``binarize="none"``), grey levels in [0, 1] otherwise."""
    if getattr(model, "likelihood", None) == "bernoulli" and binarize in ("dynamic", "static"):
        return binarized_test_set(training_images(images), seed)
    return to_float(training_images(images))


@torch.no_grad()
def evaluate(model, images, beta: float = 1.0, batch_size: int = 2000, seed: int = 0, binarize: str = "dynamic"):
    """Loss terms averaged over a data set (nats per image), with fixed random numbers.

    For a VAE: ``{"loss", "neg_elbo", "reconstruction", "kl"}``, where ``loss`` weighs the KL by β
    and ``neg_elbo`` is −ELBO (β = 1) from one z per image; for an autoencoder ``{"loss",
    "reconstruction"}``. The images are binarized once with ``seed`` (:func:`evaluation_set`: the
    same binary images for every model, batch size and device); z is drawn batch by batch from a
    generator on the model's device seeded with ``seed + 1``. The default batch of 2,000 is the fast
    engine's on a CPU, so both engines' records are reproduced draw for draw (torch draws normal
    numbers on the CPU in blocks of 16, so the draws depend on the batch size unless it times the
    latent size is a multiple of 16).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    check_binarize(binarize)
    beta = check_beta(beta)
    device = next(model.parameters()).device
    x = evaluation_set(model, images, binarize, seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    is_vae = getattr(model, "kind", None) != "autoencoder"
    rec = kl = 0.0
    with evaluating(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            if is_vae:
                terms = elbo(model, xb, generator=gen, return_terms=True)
                rec, kl = rec - terms.reconstruction.sum().item(), kl + terms.kl.sum().item()
            else:
                rec += model.loss(xb).item() * xb.shape[0]
    rec, kl = rec / x.shape[0], kl / x.shape[0]
    if is_vae:
        return {"loss": rec + beta * kl, "neg_elbo": rec + kl, "reconstruction": rec, "kl": kl}
    return {"loss": rec, "reconstruction": rec}


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), **kwargs) -> torch.optim.Optimizer:
    """Adam with decay rates ``betas``, or AdamW when ``weight_decay`` > 0 (each step shrinks the
    weights by lr·decay)."""
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, planned_steps: int):
    """The learning-rate schedule over ``planned_steps`` steps, as a multiplier of lr.

    None for "constant". "cosine": a half cosine from lr down to lr / 20. "warmup-linear": a linear
    rise from lr / w to lr over the first w = 10% of the steps, then a straight line down to 0.
    """
    if schedule == "cosine":
        def factor(t: int) -> float:
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, planned_steps) / max(1, planned_steps)))
    elif schedule == "warmup-linear":
        warm = max(1, round(WARMUP_FRACTION * planned_steps))

        def factor(t: int) -> float:
            return (t + 1) / warm if t < warm else max(0.0, (planned_steps - t) / max(1, planned_steps - warm))
    else:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm progress bar that works in a terminal and in Jupyter."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def new_history(device: torch.device, **extra: Any) -> dict[str, Any]:
    """An empty training history: the per-epoch lists both trainers fill, plus ``extra``."""
    keys = ("epoch", "steps", "train_loss", "test_loss", "test_neg_elbo", "test_kl", "seconds", "lr")
    return {**{k: [] for k in keys}, "device": describe_device(device), **extra}


def end_epoch(history, model, *, epoch, step, train_loss, seconds, lr, test_x, beta, eval_batch_size, seed, binarize,
              verbose) -> None:
    """Record a finished epoch in ``history``: its numbers, the test evaluation, and a printed line."""
    for key, value in (("epoch", epoch), ("steps", step), ("train_loss", train_loss), ("seconds", seconds), ("lr", lr)):
        history[key].append(value)
    msg = f"epoch {epoch}: train loss {train_loss:.2f}"
    if test_x is not None:
        ev = evaluate(model, test_x, beta=beta, batch_size=eval_batch_size, seed=seed + 1, binarize=binarize)
        history["test_loss"].append(ev["loss"])
        history["test_neg_elbo"].append(ev.get("neg_elbo", ev["loss"]))
        history["test_kl"].append(ev.get("kl", 0.0))
        msg += f", test loss {ev['loss']:.2f}"
    if verbose:
        print(msg + f" ({seconds:.1f} s)", file=sys.stdout if "ipykernel" in sys.modules else sys.stderr, flush=True)
