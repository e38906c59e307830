"""The speed recipe's model options: LayerNorm, a centered input and a data-dependent start.

``benchmarks/recipe_ablation.py`` measures what each buys in the first epochs of training.
``norm="layer"`` puts a layer normalization (Ba, Kiros & Hinton, 2016) after every hidden linear
layer, before its activation (a different architecture); ``center_input=True`` makes the encoder
subtract a stored image (an :class:`InputShift`) before its first layer, which the first layer's
bias could absorb, so only the optimization sees the difference; :meth:`TunedVAE.init_from_data`
sets that image to the training mean, starts the decoder's output at the mean image and the
posterior variances small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data import IMAGE_SIZE, to_float
from ..models import ACTIVATIONS, MODEL_KINDS, VAE

NORMS = (None, "layer")


class InputShift(nn.Module):
    """x ↦ x − offset, with ``offset`` a stored buffer (zeros until set, e.g. to the mean image)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.offset

    def extra_repr(self) -> str:
        return f"size={self.offset.numel()}"


def normed_mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """:func:`vaelib.models.mlp` with a LayerNorm after each hidden linear layer, before its activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-2])


class TunedVAE(VAE):
    """:class:`vaelib.models.VAE` with the recipe's options ``norm`` (None or "layer") and ``center_input``."""

    kind = "tuned_vae"

    def __init__(self, latent_dim: int, hidden_sizes: Sequence[int] = (512, 512), activation: str = "relu",
                 likelihood: str = "bernoulli", sigma: float = 1.0, input_dim: int = IMAGE_SIZE, norm: str | None = None,
                 center_input: bool = False) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be None or 'layer', got {norm!r}")
        # with norm="layer" the plain layers built here are replaced below: build them without drawing from the
        # global generator, so that under one seed the linear layers get the weights a plain VAE's get (and that
        # VAE(..., norm="layer") gave them before the option moved here)
        with torch.random.fork_rng(devices=[], enabled=norm == "layer"):
            super().__init__(latent_dim, hidden_sizes, activation, likelihood, sigma, input_dim)
        self.norm, self.center_input = norm, bool(center_input)
        if norm == "layer":
            self.encoder = normed_mlp((self.input_dim, *self.hidden_sizes, 2 * latent_dim), activation)
            self.decoder = normed_mlp((latent_dim, *reversed(self.hidden_sizes), self.input_dim), activation)
        if self.center_input:
            self.encoder = nn.Sequential(InputShift(self.input_dim), *self.encoder)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "norm": self.norm, "center_input": self.center_input}

    @torch.no_grad()
    def init_output_bias(self, images: torch.Tensor) -> "TunedVAE":
        """Start the decoder at the mean image of ``images`` (uint8, or floats in [0, 1]).

        Each pixel's output bias becomes logit(m) for its mean m, clipped to [0.001, 0.999]: the
        decoder starts where a model that ignores z would end up, not at grey 0.5. With
        ``center_input``, the mean image also becomes the encoder's :class:`InputShift`.
        """
        x = to_float(images, flatten=images.dim() >= 3)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch (N, {self.input_dim}), got {tuple(x.shape)}")
        mean = x.double().mean(0)
        p = mean.clamp(1e-3, 1 - 1e-3)
        self.decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))
        if self.center_input:
            self.encoder[0].offset.copy_(mean)
        return self

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, logvar: float = -6.0) -> "TunedVAE":
        """:meth:`init_output_bias`, and the encoder's log-variances start near ``logvar``.

        With the default start every σ is near 1, so z is mostly noise and the decoder first learns
        to ignore it; σ ≈ e^{−3} = 0.05 lets the codes carry information from the first step. The KL
        term then pulls unused coordinates back to σ = 1.
        """
        if not math.isfinite(logvar):
            raise ValueError(f"logvar must be a finite number, got {logvar!r}")
        self.init_output_bias(images)
        self.encoder[-1].bias[self.latent_dim :] = logvar
        return self


MODEL_KINDS["tuned_vae"] = TunedVAE  # so that vaelib.checkpoints can rebuild one from its config
