"""The fast trainer: the same objective and optimizer as the reference loop, with less overhead.

:func:`vaelib.train.fit` is the readable loop that notebook 06 walks through. :func:`fit_fast`
(``python -m vaelib.train --engine fast``) trains the
same model on the same loss, −ELBO_β with one z per image or, with ``objective="iwae"``, minus the
importance-weighted bound with K z per image, with Adam and the same learning-rate schedule, but:

- the training set stays on the device as uint8 (a quarter of the float32 size), and each batch
  is drawn by index on the device from a permutation made on the device: no DataLoader, no
  per-batch host-to-device copy;
- dynamic binarization happens per batch on the device (:func:`binarize_batch`: the draw of
  :func:`vaelib.data.binarize_dynamic`, from uniforms drawn outside the compiled step);
- the loss is one fused expression (binary cross-entropy with logits, the closed-form KL) with
  no input checks and no host synchronization per step: the running loss is summed on the device
  and checked for NaN every ``check_every`` steps and at the end of each epoch;
- the gradients come from the backward pass written out layer by layer
  (:func:`vaelib.speed.backprop.vae_loss_and_grads`: the ATen kernels autograd would call, without
  building a graph each step), ``backward="autograd"`` to use ``loss.backward()`` instead; the
  IWAE objective always takes its gradients from autograd (no backward pass is written out for it);
- Adam runs its fused kernel where torch has one (CPU and CUDA), unless the step is compiled on
  the CPU (below), which then includes Adam's update;
- on CUDA it allows TF32 matrix products while it trains (``tf32``, on by default there), and
  gives the caller's setting back when it returns (:func:`tf32_matmuls`);
- with ``bf16=True`` (opt-in) it runs the matrix products in bfloat16 and keeps everything else
  in float32, which pays on CPUs with native bfloat16 instructions without changing the step at
  which the benchmark's model reaches its target (benchmarks/README.md);
- with ``ema`` it keeps an exponential moving average of the weights with one fused update per
  step (``torch._foreach_lerp_``), the same average the reference loop keeps with
  :class:`torch.optim.swa_utils.AveragedModel`;
- it can compile with ``torch.compile`` (``compile=True``, opt-in). On the CPU it compiles the
  whole step (:func:`training_step`): the batch's binarization, the written-out loss and
  gradients, Adam's update (:func:`adam_update_`, the arithmetic of torch's Adam on the optimizer's
  own state tensors) and the moving average, so that each weight's update and average are one
  loop with nothing in between handed back to Python. On other devices it compiles the written-out
  loss and gradients, and with autograd the loss alone. Compiling leaves the matrix products as
  they are and fuses what lies around them, so it pays where that weighs: on a 2-core CPU with
  bfloat16 products the benchmark's fast/tutorial speed ratio went from 1.67-2.02 uncompiled to
  2.08-2.68 with the whole step compiled (benchmarks/README.md). It has not been measured on a GPU yet.

The random numbers are drawn in the same order as in the reference loop (one uniform per pixel,
then the noise for z), so on the CPU the two engines give the same numbers up to rounding (in
float32: ``bf16=True`` rounds more, see above); on
other devices they may differ sample by sample, never in distribution. ``python -m vaelib.train
--engine fast`` uses it, and ``benchmarks/train_speed.py`` measures it against a tutorial loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .._helpers import evaluating
from ..bounds import gaussian_log_likelihood, iwae_bound
from ..data import binarize_static
from ..errors import TrainingDiverged
from ..models import VAE
from ..training import (
    check_fit_arguments,
    check_objective,
    end_epoch,
    evaluation_set,
    make_scheduler,
    new_history,
    pick_device,
    progress_bar,
    training_images,
)
from .backprop import loss_sums, unsupported_layers, vae_loss_and_grads
from .step import (
    adam_scalars,
    adam_states,
    batch_input,
    compiled,
    fused_adam,
    training_step,
)
from .hardware import bf16_matmul_speedup, tf32_matmuls


def vae_loss_sums(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the batch of −log p(x|z) and KL(q(z|x) ‖ N(0, I)), for z = μ + σ·eps.

    The same quantities as :func:`vaelib.bounds.elbo` with ``return_terms=True`` (summed, and
    with the noise passed in), computed without input checks so that nothing waits for the device.
    """
    mu, logvar = model.encoder(x).to(eps.dtype).chunk(2, dim=-1)  # under autocast: back from bfloat16
    std = torch.exp(0.5 * logvar)
    out = model.decoder(torch.addcmul(mu, std, eps)).to(eps.dtype)
    return loss_sums(model, x, out, mu, logvar, std)


def iwae_log_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log wₖ = log p(x|zₖ) + log p(zₖ) − log q(zₖ|x) for zₖ = μ + σ·epsₖ, ``eps`` (K, m, d): shape (K, m).

    What :func:`vaelib.bounds.log_weights` computes, with the noise passed in (a compiled loss cannot draw it)
    and without input checks. Under autocast the encoder's and decoder's outputs go back to eps's dtype first,
    so that the log weights, which the bound exponentiates, are computed in float32.
    """
    mu, logvar = model.encoder(x).to(eps.dtype).chunk(2, dim=-1)
    std = torch.exp(0.5 * logvar)
    z = torch.addcmul(mu, std, eps)  # (K, m, d): the decoder sees K·m codes, the encoder only m images
    out = model.decoder(z).to(eps.dtype)
    decoded = out if model.likelihood == "bernoulli" else torch.sigmoid(out)  # what model.decode(z) gives
    log_pz = gaussian_log_likelihood.unchecked(z, torch.zeros_like(z))
    log_qz = gaussian_log_likelihood.unchecked(z, mu, std)
    return model.log_px_given_z(x, decoded) + log_pz - log_qz


def iwae_loss_given_eps(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """:func:`vaelib.bounds.iwae_loss` (minus the K-sample bound, averaged over the batch) for the noise
    ``eps`` of shape (K, m, d). As there, K = 1 is the ELBO loss with its KL in closed form."""
    if eps.shape[0] == 1:
        rec, kl = vae_loss_sums(model, x, eps[0])
        return (rec + kl) / x.shape[0]
    return -iwae_bound.unchecked(iwae_log_weights(model, x, eps), dim=0).mean()


def iwae_loss_and_grads(model: VAE, x: torch.Tensor, eps: torch.Tensor,
                        loss_fn: Callable = iwae_loss_given_eps) -> torch.Tensor:
    """The IWAE loss from ``loss_fn`` (:func:`iwae_loss_given_eps` or a compiled copy), every ``.grad`` set to
    its gradient by ``loss.backward()``."""
    loss = loss_fn(model, x, eps)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def frozen_test_draws(
    model: VAE, images: torch.Tensor, batch_size: int, seed: int, binarize: str = "dynamic"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The random numbers :func:`vaelib.training.evaluate` uses on ``images``, drawn once: a list of
    (model input, ε) per batch.

    ``evaluate`` binarizes the images once with ``seed`` (:func:`vaelib.training.evaluation_set`) and
    then draws, batch by batch from one generator on the device seeded with ``seed + 1``, one ε
    per image for z = μ + σ·ε. Neither depends on the weights, so a trainer that evaluates the
    same test set many times can draw them once before training and then pay for the forward pass
    alone (:func:`evaluate_frozen`).
    """
    p = next(model.parameters())
    x_all = evaluation_set(model, images, binarize, seed)
    gen = torch.Generator(device=p.device).manual_seed(seed + 1)
    draws = []
    for start in range(0, x_all.shape[0], batch_size):
        x = model.prepare_input(x_all[start : start + batch_size].to(p.device))
        eps = torch.randn((1, x.shape[0], model.latent_dim), generator=gen, device=p.device, dtype=p.dtype)
        draws.append((x, eps[0]))
    return draws


@torch.no_grad()
def evaluate_frozen(model: VAE, draws: list[tuple[torch.Tensor, torch.Tensor]], beta: float = 1.0) -> dict[str, float]:
    """What :func:`vaelib.training.evaluate` returns, from the draws of :func:`frozen_test_draws`
    (the same numbers up to rounding)."""
    rec = kl = 0.0
    n = 0
    with evaluating(model):
        for x, eps in draws:
            r, k = vae_loss_sums(model, x, eps)
            rec, kl, n = rec + r, kl + k, n + x.shape[0]
    rec, kl = float(rec) / n, float(kl) / n
    return {"loss": rec + beta * kl, "neg_elbo": rec + kl, "reconstruction": rec, "kl": kl}


def eval_batch_size_for(device: torch.device) -> int:
    """Test images per evaluation batch that :func:`fit_fast` uses by default on ``device``."""
    return 10_000 if device.type == "cuda" else 2_000


BACKWARDS = ("auto", "manual", "autograd")


def check_backward(backward: str) -> None:
    """``backward`` is one of :data:`BACKWARDS`."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")


def pick_backward(model: VAE, backward: str, objective: str = "elbo") -> bool:
    """Whether :func:`fit_fast` computes the gradients by hand (True) or with autograd (False); see its ``backward``."""
    check_backward(backward)
    if objective == "iwae":  # the written-out pass is the ELBO's gradient; the IWAE's comes from autograd
        if backward == "manual":
            raise ValueError("backward='manual' has no written-out backward pass for objective='iwae' (only for the "
                             "ELBO); use backward='auto' or 'autograd'")
        return False
    if backward == "autograd":
        return False
    missing = unsupported_layers(model)
    if backward == "manual" and missing:
        raise ValueError(f"backward='manual': no hand-written backward step for {', '.join(missing)}; "
                         "use backward='autograd'")
    return not missing


def autograd_loss_and_grads(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0, loss_fn: Callable = vae_loss_sums
) -> torch.Tensor:
    """What :func:`vaelib.speed.backprop.vae_loss_and_grads` does, with ``loss.backward()``: the loss
    (−log p(x|z) + β·KL) / m from ``loss_fn`` (:func:`vae_loss_sums` or a compiled copy), every
    ``.grad`` set to its gradient."""
    rec, kl = loss_fn(model, x, eps)
    loss = (rec + beta * kl) / x.shape[0]
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def fit_fast(
    model: VAE,
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
    eval_batch_size: int | None = None,
    schedule: str = "constant",
    verbose: bool = True,
    compile: bool = False,
    tf32: bool | None = None,
    check_every: int = 100,
    eval_every: int | None = None,
    on_eval: Callable[[dict[str, Any]], bool] | None = None,
    eval_below: float | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    ema: float | None = None,
    backward: str = "auto",
    bf16: bool = False,
    objective: str = "elbo",
    iwae_k: int = 5,
) -> dict[str, Any]:
    """Train a VAE like :func:`vaelib.train.fit` does, faster; returns the same history dict.

    Arguments as for :func:`vaelib.train.fit`, ``objective="iwae"`` with ``iwae_k`` samples per image included
    (its loss from :func:`iwae_loss_given_eps`, its gradients from autograd; the test numbers are −ELBO, as
    ``fit`` records them), plus:

    - ``compile``: compile with ``torch.compile`` (default off), for full batches, on the CPU the whole
      step (:func:`training_step`: batch, written-out loss and gradients, Adam's update, moving
      average), on other devices the written-out loss and gradients
      (:func:`vaelib.speed.backprop.vae_loss_and_grads`), with ``backward="autograd"`` the loss. The first
      step (where the optimizer's own ``step()`` creates its state) and an epoch's shorter last batch
      run uncompiled, so that the latter does not trigger a second compilation. Where compiling fails
      (on the CPU: no working C++ compiler) the first compiled step (on the CPU the second step of
      training) raises :class:`CompileFailed`;
    - ``tf32``: TF32 matrix products on CUDA while training (default: on for CUDA); the
      caller's setting is restored on return (:func:`tf32_matmuls`);
    - ``check_every``: steps between NaN checks;
    - ``eval_every``: also evaluate on ``test`` every this many steps and after the last planned
      step (for a benchmark). The end-of-epoch test evaluation is then left out, so the
      per-epoch ``test_*`` lists stay empty; ``history["evals"]`` holds these evaluations. They
      give what :func:`vaelib.training.evaluate` gives, from its random numbers drawn once as
      training starts (:func:`frozen_test_draws`), so each costs only the forward pass;
    - ``on_eval``: called after each of those evaluations with a dict of ``step``, ``epoch``,
      ``seconds`` (wall-clock time since training began, evaluations and the test draws included),
      ``recent_train_loss`` (the mean training loss since the previous evaluation point) and the
      keys of :func:`vaelib.training.evaluate`; training stops when it returns True;
    - ``backward``: how the gradients are computed: ``"manual"`` with the backward pass written out
      (:func:`vaelib.speed.backprop.vae_loss_and_grads`, no autograd graph), ``"autograd"`` with
      ``loss.backward()``, or ``"auto"`` (default): manual unless the model has a layer with no
      hand-written backward step, or with ``objective="iwae"`` (``"manual"`` is refused there);
    - ``bf16``: run the matrix products in bfloat16, forward and backward (default off). The
      weights, Adam's state, LayerNorm's statistics, the loss and the test evaluations stay float32;
      what gets rounded is each linear layer's input, weights and output, and each weight's gradient,
      which Adam then takes in float32. The written-out backward pass does this on the CPU
      (:func:`vaelib.speed.backprop.vae_loss_and_grads` with ``low``), ``torch.autocast`` on other
      devices and with ``backward="autograd"``. It pays only where the hardware multiplies
      bfloat16 natively (AVX-512 BF16 or AMX on x86 CPUs, tensor cores on GPUs); elsewhere it is
      slower, far slower on a CPU without AVX-512 (:func:`bf16_matmul_speedup`, which
      ``fit_fast`` runs first, warning when bfloat16 measures slower than float32);
    - ``eval_below``: skip those evaluations (except the one after the last step) while the mean
      training loss since the previous evaluation point is above this, so that a benchmark
      waiting for a test loss does not pay for evaluations long before it can be reached.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"the fast trainer trains VAEs; got {type(model).__name__} (use engine='reference')")
    check_fit_arguments(binarize=binarize, epochs=epochs, batch_size=batch_size, schedule=schedule, ema=ema,
                        max_steps=max_steps, beta=beta)
    check_objective(model, objective, iwae_k, beta)
    iwae = objective == "iwae"
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1, got {check_every}")
    manual = pick_backward(model, backward, objective)
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    if not isinstance(bf16, bool):
        raise TypeError(f"bf16 must be True or False, got {bf16!r}")
    if bf16:
        dtype = next(model.parameters()).dtype
        if dtype != torch.float32:
            raise ValueError(f"bf16=True rounds float32 matrix products to bfloat16; this model's weights are {dtype}")
        if manual and dev.type != "cpu":  # the written-out pass relies on the CPU's LayerNorm taking bfloat16 inputs
            if backward == "manual":
                raise ValueError(f"backward='manual' with bf16=True runs on the CPU only; on {dev.type} use 'auto'")
            manual = False
        gain = bf16_matmul_speedup(dev)
        if gain < 1.0:
            warnings.warn(f"bf16=True: a bfloat16 matrix product runs {1 / gain:.1f} times slower than a float32 one "
                          f"on this {dev.type} (no native bfloat16 arithmetic?), so training will be slower too; "
                          "bf16=False avoids that", RuntimeWarning, stacklevel=2)
    tf32 = cuda if tf32 is None else bool(tf32)
    with tf32_matmuls(tf32) if cuda else contextlib.nullcontext():
        model.to(dev).train()
        dtype = next(model.parameters()).dtype

        grey = training_images(train)
        if grey.dtype != torch.uint8:  # floats in [0, 1]: back to grey levels (exact for MNIST's 256 levels)
            grey = torch.round(grey.clamp(0, 1) * 255).to(torch.uint8)
        grey = grey.reshape(grey.shape[0], -1)
        if grey.shape[1] != model.input_dim:
            raise ValueError(
                f"the training images have {grey.shape[1]} pixels each (shape {tuple(grey.shape)} once flattened) "
                f"but the model takes {model.input_dim}: give (N, {model.input_dim}) or (N, 28, 28) images"
            )
        gen = torch.Generator(device=dev).manual_seed(seed)
        dynamic = model.likelihood == "bernoulli" and binarize == "dynamic"
        if model.likelihood == "bernoulli" and binarize == "static":
            grey = (binarize_static(grey, seed) * 255).to(torch.uint8)
        grey = grey.to(dev)
        test_x = training_images(test).to(dev) if test is not None else None
        if eval_batch_size is None:
            eval_batch_size = eval_batch_size_for(dev)

        low = torch.bfloat16 if bf16 else None
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        eager_fn = iwae_loss_given_eps if iwae else vae_loss_sums  # the loss autograd differentiates
        loss_fn = eager_fn
        step_fn = vae_loss_and_grads
        whole_step = None  # compiled on the CPU: the whole step, Adam's update included (training_step)
        if compile:  # the written-out step (on the CPU with Adam and the moving average), or with autograd the loss
            if manual and dev.type == "cpu":
                whole_step = compiled(training_step)
            elif manual:
                step_fn = compiled(vae_loss_and_grads)
            else:
                loss_fn = compiled(eager_fn)

        optimizer = fused_adam(model.parameters(), lr, weight_decay, betas)
        live = list(model.parameters())
        averaged = copy.deepcopy(model).requires_grad_(False) if ema is not None else None
        averaged_params = list(averaged.parameters()) if averaged is not None else []
        evaluated = averaged if averaged is not None else model  # what the test evaluations see
        n, n_pixels = grey.shape
        d = model.latent_dim
        adam_state = adam_settings = None  # the optimizer's state and settings, for the compiled step
        steps_per_epoch = math.ceil(n / batch_size)
        planned = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
        scheduler = make_scheduler(optimizer, schedule, planned)
        history = new_history(dev, engine="fast", evals=[])

        def sync():
            if cuda:
                torch.cuda.synchronize(dev)

        def check(total: torch.Tensor, epoch: int, step: int) -> None:
            value = total.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the training loss became {value} by epoch {epoch}, step {step} (lr={lr}, beta={beta}); "
                    "stopping. Try a smaller learning rate; check the inputs for NaN."
                )

        step, stop = 0, False
        began = time.perf_counter()  # the clock of history["evals"]; it includes drawing the test set's numbers
        frozen = frozen_test_draws(model, test_x, eval_batch_size, seed + 1, binarize) if eval_every and test_x is not None else None
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.perf_counter()
            eval_in_epoch = 0.0
            perm = torch.randperm(n, generator=gen, device=dev)
            total = torch.zeros((), device=dev, dtype=torch.float64)
            count = 0
            window = (0.0, 0)  # (total, count) at the last evaluation point
            bar = progress_bar(steps_per_epoch, f"epoch {epoch}/{epochs}", progress)
            try:
                for b in range(steps_per_epoch):
                    if max_steps is not None and step >= max_steps:
                        break
                    xb = grey[perm[b * batch_size : (b + 1) * batch_size]]  # gathered here: the compiled step then
                    m = xb.shape[0]  # does not depend on the training set's size
                    uniforms = torch.rand((m, n_pixels), generator=gen, device=dev, dtype=dtype) if dynamic else None
                    # K draws per image for the IWAE, shaped (K, m, d) as vaelib.bounds.log_weights draws them
                    eps = torch.randn((iwae_k, m, d) if iwae else (m, d), generator=gen, device=dev, dtype=dtype)
                    # a compiled step or loss is specialized to the batch's shape: an epoch's short last batch runs
                    # eagerly rather than paying for a second compilation. The first step runs eagerly too: the
                    # optimizer's own step() creates its state, which the compiled step then updates in place
                    if whole_step is not None and m == batch_size and step > 0:
                        if adam_state is None:
                            adam_state, adam_settings = adam_states(optimizer)
                        loss = whole_step(model, xb, uniforms, eps, beta, low, adam_state,
                                          adam_scalars(optimizer, step + 1, dtype), adam_settings, averaged_params, ema)
                    else:
                        x = batch_input(xb, uniforms, dtype)
                        if manual:
                            loss = (step_fn if m == batch_size else vae_loss_and_grads)(model, x, eps, beta, low)
                        else:
                            fn = loss_fn if m == batch_size else eager_fn
                            with autocast:
                                if iwae:
                                    loss = iwae_loss_and_grads(model, x, eps, fn)
                                else:
                                    loss = autograd_loss_and_grads(model, x, eps, beta, fn)
                        optimizer.step()
                        if averaged is not None:  # the first step copies the weights, later ones move 1 - ema of the way
                            torch._foreach_lerp_(averaged_params, live, 1.0 if step == 0 else 1.0 - ema)
                    if scheduler is not None:
                        scheduler.step()
                    total += loss.detach() * m
                    count += m
                    step += 1
                    bar.update(1)
                    if step % check_every == 0:
                        check(total, epoch, step)
                    if eval_every and test_x is not None and (step % eval_every == 0 or step == planned):
                        now = total.item()
                        recent = (now - window[0]) / max(1, count - window[1])
                        window = (now, count)
                        if eval_below is not None and recent > eval_below and step != planned:
                            continue
                        sync()
                        t0 = time.perf_counter()
                        ev = evaluate_frozen(evaluated, frozen, beta)
                        eval_in_epoch += time.perf_counter() - t0
                        entry = {"step": step, "epoch": epoch, "seconds": time.perf_counter() - began,
                                 "recent_train_loss": recent, **ev}
                        history["evals"].append(entry)
                        if on_eval is not None and on_eval(entry):
                            stop = True
                            break
            finally:
                bar.close()
            sync()
            if count == 0:
                break
            check(total, epoch, step)
            seconds = time.perf_counter() - start - eval_in_epoch
            end_epoch(history, evaluated, epoch=epoch, step=step, train_loss=total.item() / count, seconds=seconds,
                      lr=optimizer.param_groups[0]["lr"], test_x=None if eval_every else test_x, beta=beta,
                      eval_batch_size=eval_batch_size, seed=seed, binarize=binarize, verbose=verbose)
            if stop or (max_steps is not None and step >= max_steps):
                break
        if averaged is not None and step > 0:
            with torch.no_grad():
                torch._foreach_copy_(live, averaged_params)
        return history
