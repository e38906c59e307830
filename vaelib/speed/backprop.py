"""The VAE's training loss and its gradients, with the backward pass written out by hand.

:func:`vae_loss_and_grads` computes what ``vaelib.fast.vae_loss_sums`` followed by
``loss.backward()`` computes — the loss (−log p(x|z) + β·KL(q(z|x) ‖ N(0, I))) / m for
z = μ + σ·ε, and its gradient with respect to every weight — without building an autograd graph.
Each layer keeps what its backward step needs (a linear layer its input, a LayerNorm its input,
mean and reciprocal standard deviation, an activation its input and output) on a list as the
forward pass runs; the backward pass walks that list in reverse and calls the same ATen kernels
autograd would call (``mm``, ``native_layer_norm_backward``, ``gelu_backward``, …).

The derivatives of the loss itself are short. With s = sigmoid(logits):

- Bernoulli decoder: d(−log p(x|z))/d logits = s − x;
- Gaussian decoder with standard deviation σ_x: d/d logits = (s − x) · s · (1 − s) / σ_x²;
- d KL/dμ = μ and d KL/d log σ² = (σ² − 1)/2;
- z = μ + σ·ε with σ = exp(log σ² / 2): dz/dμ = 1 and dz/d log σ² = ε·σ/2.

Why bother: on a 2-core CPU, building and walking the autograd graph of this small network
(about thirty nodes per step) costs about 0.5 ms of a 15 to 18 ms step, 3 to 4%
(``benchmarks/backward_speed.py``). ``tests/test_backprop.py`` checks the
gradients against autograd in float64 for every activation, with and without LayerNorm and input
centering, for both decoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models import VAE
from .models import InputShift

aten = torch.ops.aten


# the gradient through each activation at input x with output y, given g at its output
_ACTIVATION_BACKWARDS = {
    nn.ReLU: lambda mod, g, x, y: aten.threshold_backward(g, y, 0),
    nn.GELU: lambda mod, g, x, y: aten.gelu_backward(g, x, approximate=mod.approximate),
    nn.Tanh: lambda mod, g, x, y: aten.tanh_backward(g, y),
    nn.SiLU: lambda mod, g, x, y: aten.silu_backward(g, x),
    nn.Softplus: lambda mod, g, x, y: aten.softplus_backward(g, x, mod.beta, mod.threshold),
    nn.LeakyReLU: lambda mod, g, x, y: aten.leaky_relu_backward(g, x, mod.negative_slope, False),
    nn.ELU: lambda mod, g, x, y: aten.elu_backward(g, mod.alpha, 1, 1, False, x),
}


def unsupported_layers(model: nn.Module) -> list[str]:
    """What in ``model`` :func:`vae_loss_and_grads` cannot train like autograd would (empty when it can):
    layers it has no backward step for (only the exact classes it knows count: a subclass may compute
    something else), linear and LayerNorm layers whose weights are reparametrized, and frozen parameters."""
    if not isinstance(model, VAE):
        return [type(model).__name__]
    bad = []
    for part in ("encoder", "decoder"):
        for i, mod in enumerate(getattr(model, part)):
            if type(mod) in (InputShift, nn.Linear, nn.LayerNorm):
                # the pass reads .weight and .bias directly: a reparametrized weight (weight_norm, say) has its real
                # parameters elsewhere, which would get no gradient and silently stay untrained
                extra = sorted(name for name, _ in mod.named_parameters() if name not in ("weight", "bias"))
                if not extra:
                    continue
                bad.append(f"{part}[{i}] ({type(mod).__name__} with parameters {', '.join(extra)})")
                continue
            if type(mod) in _ACTIVATION_BACKWARDS and not getattr(mod, "inplace", False):
                continue  # the exact class: a subclass may compute something else
            bad.append(f"{part}[{i}] ({type(mod).__name__}{', in place' if getattr(mod, 'inplace', False) else ''})")
    # autograd leaves a frozen weight's .grad empty, so Adam skips it; the written-out pass would set it
    bad += [f"{name} (frozen: requires_grad=False)" for name, p in model.named_parameters() if not p.requires_grad]
    return bad


def _forward(seq: nn.Sequential, h: torch.Tensor, tape: list, low: torch.dtype | None = None) -> torch.Tensor:
    """Run ``seq`` on ``h``, appending to ``tape`` what each layer's backward step needs.

    With ``low`` (torch.bfloat16), each linear layer multiplies in that dtype: its input and weights
    are rounded to it, and so is its output, which the following LayerNorm and activation take as it
    is (LayerNorm computes its statistics in float32 and keeps float32 weights).
    """
    for mod in seq:
        if isinstance(mod, nn.Linear):
            w = mod.weight if low is None else mod.weight.to(low)
            if low is not None:
                h = h.to(low)
            tape.append((mod, h, w))
            bias = mod.bias if low is None or mod.bias is None else mod.bias.to(low)
            h = torch.addmm(bias, h, w.t()) if bias is not None else torch.mm(h, w.t())
        elif isinstance(mod, nn.LayerNorm):
            out, mean, rstd = aten.native_layer_norm(h, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
            tape.append((mod, h, mean, rstd))
            h = out
        elif isinstance(mod, InputShift):
            h = h - mod.offset  # a constant: nothing to keep
        else:
            y = mod(h)
            tape.append((mod, h, y))
            h = y
    return h


def _backward(tape: list, g: torch.Tensor, input_grad: bool) -> torch.Tensor | None:
    """Walk ``tape`` backwards from ``g`` (the gradient at the output), setting each parameter's ``.grad``.

    Returns the gradient at the input when ``input_grad``, else None (the first linear layer then
    skips its input-gradient product).
    """
    for i in range(len(tape) - 1, -1, -1):
        mod = tape[i][0]
        if isinstance(mod, nn.Linear):
            _, x, w = tape[i]
            if g.dtype != x.dtype:  # a low-precision layer: the gradient arriving in float32 is rounded too
                g = g.to(x.dtype)
            mod.weight.grad = torch.mm(g.t(), x).to(mod.weight.dtype)
            if mod.bias is not None:
                mod.bias.grad = g.sum(0, dtype=mod.bias.dtype)
            if i == 0 and not input_grad:
                return None
            g = torch.mm(g, w)
        elif isinstance(mod, nn.LayerNorm):
            _, x, mean, rstd = tape[i]
            g, gw, gb = aten.native_layer_norm_backward(
                g, x, mod.normalized_shape, mean, rstd, mod.weight, mod.bias,
                [True, mod.weight is not None, mod.bias is not None],
            )
            if mod.weight is not None:
                mod.weight.grad = gw
            if mod.bias is not None:
                mod.bias.grad = gb
        else:
            _, x, y = tape[i]
            g = _ACTIVATION_BACKWARDS[type(mod)](mod, g, x, y)
    return g if input_grad else None


def loss_sums(
    model: VAE, x: torch.Tensor, out: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the batch of −log p(x|z) and KL(q(z|x) ‖ N(0, I)), from the decoder's output ``out`` at z
    and the encoder's ``mu``, ``logvar`` and ``std`` = exp(logvar / 2)."""
    if model.likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(out, x, reduction="sum")
    else:
        sigma = model.sigma
        rec = 0.5 * ((x - torch.sigmoid(out)) / sigma).square().sum() + x.numel() * (
            math.log(sigma) + 0.5 * math.log(2 * math.pi)
        )
    kl = 0.5 * (mu.square() + std.square() - 1.0 - logvar).sum()
    return rec, kl


def vae_loss_and_grads(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0, low: torch.dtype | None = None
) -> torch.Tensor:
    """The loss (−log p(x|z) + β·KL) / m for a batch of m images, z = μ + σ·eps; sets every parameter's ``.grad``.

    The same loss and gradients as ``(rec + beta * kl) / m`` from ``vaelib.fast.vae_loss_sums`` with
    ``loss.backward()`` on zeroed gradients (up to rounding). Assumes :func:`unsupported_layers` is empty.
    Returns the loss as a 0-dimensional tensor, without waiting for the device.

    ``low=torch.bfloat16`` runs every matrix product in bfloat16, forward and backward (see
    :func:`_forward`); the encoder's and decoder's outputs go back to the weights' dtype before the
    loss, and so does each weight's gradient. That is what ``torch.autocast`` does to these layers,
    written out (the CPU keeps LayerNorm's weights in float32; ``vaelib.fast.fit_fast(bf16=True)``).
    """
    m = x.shape[0]
    with torch.no_grad():
        enc_tape: list = []
        dec_tape: list = []
        full = eps.dtype  # the weights' dtype: the loss and everything after the matrix products are computed in it
        mu, logvar = _forward(model.encoder, x, enc_tape, low).to(full).chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar)
        out = _forward(model.decoder, torch.addcmul(mu, std, eps), dec_tape, low).to(full)
        rec, kl = loss_sums(model, x, out, mu, logvar, std)
        s = torch.sigmoid(out)
        if model.likelihood == "bernoulli":
            g_out = (s - x) / m
        else:
            g_out = (s - x) * s * (1.0 - s) / (model.sigma**2 * m)
        g_z = _backward(dec_tape, g_out, input_grad=True).to(full)
        g_mu = g_z + mu * (beta / m)
        g_logvar = g_z * eps * std * 0.5 + (std.square() - 1.0) * (0.5 * beta / m)
        _backward(enc_tape, torch.cat([g_mu, g_logvar], dim=-1), input_grad=False)
        return (rec + beta * kl) / m
