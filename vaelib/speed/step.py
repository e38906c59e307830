"""The fast trainer's step as ``torch.compile`` compiles it: the batch, the written-out loss and
gradients, Adam's update on the optimizer's own state, and the moving average of the weights.

:func:`binarize_batch` is :func:`vaelib.data.binarize_dynamic` given its uniforms (the compiled
graph cannot draw from a generator); ``tests/test_fast.py`` checks the two draw the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..models import VAE
from ..training import make_optimizer
from .backprop import vae_loss_and_grads


class CompileFailed(RuntimeError):
    """``torch.compile`` could not compile the fast trainer's step (``fit_fast(compile=True)``)."""


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)``, whose failure to compile (on the CPU, most often: no working C++
    compiler) raises :class:`CompileFailed` with what to do instead of a long compiler traceback."""
    step = torch.compile(fn, dynamic=False)

    def call(*args):
        try:
            return step(*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CompileFailed(f"torch.compile could not compile the training step ({reason}); on the CPU it needs a "
                                "working C++ compiler. Train without compiling: compile=False, or leave out --compile "
                                "(--no-compile for benchmarks/train_speed.py)") from e

    return call


def binarize_batch(grey: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Pixel j is on when u_j < g_j / 255 for uint8 grey levels g: :func:`vaelib.data.binarize_dynamic`
    with its uniforms given. Only dtypes are checked, which costs nothing in the training step."""
    if grey.dtype != torch.uint8:
        raise TypeError(f"grey must hold uint8 grey levels 0..255, got dtype {grey.dtype}")
    if not uniforms.is_floating_point():
        raise TypeError(f"uniforms must be floats in [0, 1), got dtype {uniforms.dtype}")
    return (uniforms < grey.to(uniforms.dtype) / 255.0).to(uniforms.dtype)


def batch_input(grey: torch.Tensor, uniforms: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The model's input for a batch of uint8 grey levels: binarized with ``uniforms`` (:func:`binarize_batch`),
    or without them the grey levels scaled to [0, 1] in ``dtype``."""
    return grey.to(dtype) / 255.0 if uniforms is None else binarize_batch(grey, uniforms)


def fused_adam(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """The fast trainer's optimizer: :func:`vaelib.train.make_optimizer` with torch's fused kernel,
    or its multi-tensor one where this device or torch version has no fused kernel."""
    params = list(params)
    try:
        return make_optimizer(params, lr, weight_decay, betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch version
        return make_optimizer(params, lr, weight_decay, betas, foreach=True)


def adam_states(optimizer: torch.optim.Optimizer) -> tuple[list[tuple[torch.Tensor, ...]], dict[str, Any]]:
    """The state tensors (exp_avg, exp_avg_sq, step) of every parameter of a one-group Adam or AdamW that has
    taken a step, and its settings: what :func:`adam_update_` takes to continue where ``optimizer.step()``
    left off. It updates these tensors in place, so the optimizer's own ``step()`` can take over again at any
    step."""
    group = optimizer.param_groups[0]
    decoupled = isinstance(optimizer, torch.optim.AdamW)
    if (len(optimizer.param_groups) != 1 or not isinstance(optimizer, torch.optim.Adam) and not decoupled
            or group["amsgrad"] or group["maximize"] or group["weight_decay"] and not decoupled):
        raise ValueError("adam_update_ follows torch.optim.Adam without weight decay and torch.optim.AdamW, with one "
                         "parameter group and neither amsgrad nor maximize")
    missing = [i for i, p in enumerate(group["params"]) if "exp_avg" not in optimizer.state[p]]
    if missing:
        raise ValueError(f"the optimizer has no state yet for parameters {missing}: let it take one step first")
    states = [(s["exp_avg"], s["exp_avg_sq"], s["step"]) for s in (optimizer.state[p] for p in group["params"])]
    return states, {"betas": tuple(group["betas"]), "eps": group["eps"], "weight_decay": group["weight_decay"]}


def adam_scalars(optimizer: torch.optim.Optimizer, step: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What :func:`adam_update_` needs to know of the schedule at optimizer step ``step`` (counted from 1), as
    one tensor: the step size lr / (1 − β₁ᵗ), √(1 − β₂ᵗ) and lr, computed in double precision like torch's
    fused Adam kernel computes them, then rounded to ``dtype`` (the weights')."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2) = float(group["lr"]), group["betas"]
    return torch.tensor([lr / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step), lr], dtype=dtype)


def adam_update_(
    params: list[torch.Tensor],
    states: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scalars: torch.Tensor,
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
    averaged: list[torch.Tensor] | None = None,
    ema: float | None = None,
) -> None:
    """One step of :class:`torch.optim.Adam` (of :class:`torch.optim.AdamW` when ``weight_decay`` > 0) on
    ``params``, whose gradients are in ``.grad``, with the optimizer's state tensors (:func:`adam_states`);
    then ``averaged`` moves 1 − ``ema`` of the way to the new weights. Clears every ``.grad``.

    The same arithmetic as torch's own update, written as tensor expressions so that ``torch.compile`` can
    fuse it, for each parameter, into one loop with the moving average, inside the compiled training step
    (``fit_fast(compile=True)``): on a 2-core CPU with AVX-512 BF16 (the benchmark's model in bfloat16, the
    two variants trained side by side in blocks of 100 steps) that made a step about 15% faster than calling
    the optimizer's fused kernel and the moving average's after the compiled loss and gradients. ``scalars`` is :func:`adam_scalars`'s tensor
    for this step: a tensor, not numbers, so that a new learning rate does not compile the step anew.
    ``tests/test_fast.py`` checks it against ``optimizer.step()`` over many steps and settings.
    """
    beta1, beta2 = betas
    step_size, bias_correction2_sqrt, lr = scalars[0], scalars[1], scalars[2]
    with torch.no_grad():
        for p, (exp_avg, exp_avg_sq, step) in zip(params, states):
            g = p.grad
            step.add_(1)
            if weight_decay:
                p.mul_(1.0 - lr * weight_decay)
            exp_avg.lerp_(g, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            p.sub_(step_size * exp_avg / (exp_avg_sq.sqrt() / bias_correction2_sqrt + eps))
            p.grad = None
        if averaged:
            for a, p in zip(averaged, params):
                a.lerp_(p, 1.0 - ema)


def training_step(
    model: VAE,
    grey: torch.Tensor,
    uniforms: torch.Tensor | None,
    eps: torch.Tensor,
    beta: float,
    low: torch.dtype | None,
    states: list[tuple[torch.Tensor, ...]],
    scalars: torch.Tensor,
    settings: dict[str, Any],
    averaged: list[torch.Tensor] | None = None,
    ema: float | None = None,
) -> torch.Tensor:
    """One whole step of the fast trainer, for ``torch.compile`` to compile in one piece: the batch of uint8
    grey levels ``grey`` binarized (:func:`batch_input`), the loss and gradients of the written-out pass
    (:func:`vaelib.backprop.vae_loss_and_grads`), Adam's update (:func:`adam_update_`, from
    :func:`adam_states` and :func:`adam_scalars`) and the moving average of the weights. Returns the loss."""
    x = batch_input(grey, uniforms, eps.dtype)
    loss = vae_loss_and_grads(model, x, eps, beta, low)
    adam_update_(list(model.parameters()), states, scalars, **settings, averaged=averaged, ema=ema)
    return loss
