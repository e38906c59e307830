"""Training a VAE (or the plain autoencoder) on MNIST: the loop of notebook 06.

:func:`fit` keeps the training set on the device as uint8 and draws batches by index; each batch
is binarized afresh (dynamic binarization) for the Bernoulli decoder. The test set is binarized
once (:func:`vaelib.data.binarized_test_set`), so test numbers compare from epoch to epoch. The
fast engine, :func:`vaelib.speed.fit_fast`, trains the same objective with less overhead.

Command line (:mod:`vaelib.cli`)::

    python -m vaelib.train --latent-dim 2 --epochs 10 --out runs/vae2.pt
"""

from __future__ import annotations

import math
import time
import torch

from .bounds import iwae_loss
from .data import binarize_dynamic, to_float
from .errors import TrainingDiverged
from .training import (
    OBJECTIVES,  # noqa: F401  (the command line's choices)
    check_fit_arguments,
    check_objective,
    describe_device,  # noqa: F401  (notebooks reach it as vaelib.train.describe_device)
    end_epoch,
    evaluate,  # noqa: F401
    make_optimizer,
    make_scheduler,
    new_history,
    pick_device,
    progress_bar,
    static_training_set,
    training_images,
)



def fit(model, train, test=None, *, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, beta: float = 1.0,
        device=None, seed: int = 0, binarize: str = "dynamic", max_steps: int | None = None, progress: bool = True,
        schedule: str = "constant", verbose: bool = True, objective: str = "elbo", iwae_k: int = 5,
        ema: float | None = None, weight_decay: float = 0.0, betas=(0.9, 0.999), eval_batch_size: int = 2000):
    """Train ``model`` with Adam on ``train``; evaluate on ``test`` after every epoch. Returns the history.

    ``train``/``test``: uint8 images (N, 28, 28) or (N, 784) as :func:`vaelib.data.load_mnist`
    gives them, floats in [0, 1], or (images, labels) pairs; ``test`` may be None. ``binarize``:
    "dynamic" (a fresh draw per batch), "static" (one draw with ``seed``) or "none" (grey levels).
    ``seed`` seeds the batch order, the binarization and z. ``schedule``: "constant", "cosine" (to
    lr/20) or "warmup-linear". ``objective="iwae"``: minus the ``iwae_k``-sample bound (notebook 08).
    ``ema``: evaluate, and end with, a moving average of the weights with this decay.
    ``weight_decay`` > 0 gives AdamW. More in docs/training.md.

    The history holds per-epoch lists ``epoch``, ``steps``, ``train_loss``, ``test_loss``,
    ``test_neg_elbo``, ``test_kl``, ``seconds`` (training time, evaluation excluded) and ``lr``.
    Raises :class:`~vaelib.errors.TrainingDiverged` when the loss becomes NaN or infinite.
    """
    check_fit_arguments(binarize=binarize, epochs=epochs, batch_size=batch_size, schedule=schedule, ema=ema,
                        max_steps=max_steps, beta=beta)
    check_objective(model, objective, iwae_k, beta)
    dev = pick_device(device)
    model.to(dev)
    dynamic = model.likelihood == "bernoulli" and binarize == "dynamic"
    train_x = static_training_set(training_images(train), model.likelihood, binarize, seed).to(dev)
    test_x = training_images(test) if test is not None else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = make_optimizer(model.parameters(), lr, weight_decay, betas)
    steps_per_epoch = math.ceil(train_x.shape[0] / batch_size)
    planned = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    scheduler = make_scheduler(optimizer, schedule, planned)
    average = None if ema is None else torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema))
    history, step = new_history(dev), 0

    for epoch in range(1, epochs + 1):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        order = torch.randperm(train_x.shape[0], generator=gen, device=dev)
        bar = progress_bar(steps_per_epoch, f"epoch {epoch}/{epochs}", progress)
        for batch in order.split(batch_size):
            if step == planned:
                break
            x = binarize_dynamic.unchecked(train_x[batch], gen) if dynamic else to_float.unchecked(train_x[batch])
            # The training set was checked once, above: the step skips the per-batch input check.
            if objective == "iwae":
                loss = iwae_loss.unchecked(model, x, iwae_k, generator=gen)
            else:
                loss = model.loss.unchecked(x, beta=beta, generator=gen)
            value = _finite_or_raise(loss, epoch, step, lr, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if average is not None:
                average.update_parameters(model)
            total, count, step = total + value * x.shape[0], count + x.shape[0], step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.2f}", refresh=False)
        bar.close()
        if count == 0:
            break
        end_epoch(history, model if average is None else average.module, epoch=epoch, step=step,
                  train_loss=total / count, seconds=_seconds_since(start, dev), lr=optimizer.param_groups[0]["lr"],
                  test_x=test_x, beta=beta, eval_batch_size=eval_batch_size, seed=seed, binarize=binarize,
                  verbose=verbose)
        if step == planned:
            break
    if average is not None and step > 0:
        model.load_state_dict(average.module.state_dict())
    return history


def _finite_or_raise(loss: torch.Tensor, epoch: int, step: int, lr: float, beta: float) -> float:
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"the training loss became {value} at epoch {epoch}, step {step + 1} (lr={lr}, "
                               f"beta={beta}); stopping. Try a smaller learning rate; check the inputs for NaN.")
    return value


def _seconds_since(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU works asynchronously: wait for it before reading the clock
    return time.perf_counter() - start


if __name__ == "__main__":  # python -m vaelib.train: the command line, which sits above both trainers
    from vaelib.cli import main

    main()
