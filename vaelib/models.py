"""The VAE and a plain autoencoder of the same shape (introduced in notebook 05).

Both are multilayer perceptrons on flattened 28×28 images. The encoder of the VAE outputs the
mean and the log-variance of a diagonal Gaussian q(z|x); the decoder outputs, for every pixel,
either the logit of a Bernoulli distribution (``likelihood="bernoulli"``, for binarized images)
or the mean of a Gaussian with a fixed standard deviation ``sigma`` (``likelihood="gaussian"``,
for grey levels in [0, 1]).

The model of Kingma & Welling (2014), one hidden layer of 500 tanh units on each side, is
``VAE(latent_dim, hidden_sizes=(500,), activation="tanh")`` — also available as
:func:`paper_vae`.

Three options make the first epochs of training much faster (``benchmarks/recipe_ablation.py``
measures what each buys): ``norm="layer"`` puts a layer normalization (Ba, Kiros & Hinton, 2016)
after every hidden linear layer, before its activation, which changes the architecture;
``center_input=True`` makes the encoder subtract a fixed image (an :class:`InputShift`) before its
first layer, which the first layer's bias could absorb, so the model can express the same
functions and only the optimization sees the difference; and :meth:`VAE.init_from_data` (a
starting point, not an architecture) sets that image to the training mean, starts the decoder's
output at the same mean, and starts the posterior variances small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import bounds
from ._helpers import (
    evaluating,
    check_finite,
    check_floating,
    check_min_ndim,
    check_nonempty_batch,
    check_positive_int,
)
from .kl import kl_standard_normal

IMAGE_SHAPE = (28, 28)
IMAGE_SIZE = 28 * 28

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}

LIKELIHOODS = ("bernoulli", "gaussian")
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


def _mlp(sizes: Sequence[int], activation: str, norm: str | None = None) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, with ``activation`` between them (not after the last).

    With ``norm="layer"`` each hidden linear layer is followed by a LayerNorm, then the activation.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            if norm == "layer":
                layers.append(nn.LayerNorm(n_out))
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def flatten_images(x: torch.Tensor, input_dim: int = IMAGE_SIZE) -> torch.Tensor:
    """Return images as a float tensor of shape (..., input_dim).

    Accepts (..., 784) or (..., 28, 28). A uint8 tensor (grey levels 0..255) is scaled to [0, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        x = x.float()
    side = int(round(math.sqrt(input_dim)))
    if x.dim() >= 1 and x.shape[-1] == input_dim:
        return x
    if x.dim() >= 2 and side * side == input_dim and tuple(x.shape[-2:]) == (side, side):
        return x.reshape(*x.shape[:-2], input_dim)
    raise ValueError(
        f"images must have shape (N, {input_dim})"
        + (f" or (N, {side}, {side})" if side * side == input_dim else "")
        + f", got {tuple(x.shape)}"
    )


class _MLPCodec(nn.Module):
    """What the VAE and the autoencoder share: settings, the decoder and the likelihood."""

    kind = "base"
    codes_per_latent = 1  # numbers the encoder outputs per latent coordinate

    def __init__(
        self,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (512, 512),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float = 1.0,
        input_dim: int = IMAGE_SIZE,
        norm: str | None = None,
        center_input: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be None or 'layer', got {norm!r}")
        if not (float(sigma) > 0 and math.isfinite(float(sigma))):
            raise ValueError(f"sigma (the Gaussian decoder's standard deviation) must be positive, got {sigma!r}")
        self.latent_dim = latent_dim
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.likelihood = likelihood
        self.sigma = float(sigma)
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.norm = norm
        self.center_input = bool(center_input)
        encoder = _mlp((self.input_dim, *hidden_sizes, self.codes_per_latent * latent_dim), activation, norm)
        shift = [InputShift(self.input_dim)] if self.center_input else []
        self.encoder = nn.Sequential(*shift, *encoder)
        self.decoder = _mlp((latent_dim, *reversed(hidden_sizes), self.input_dim), activation, norm)

    @property
    def config(self) -> dict[str, Any]:
        """The settings that rebuild this architecture (stored in checkpoints).

        ``norm`` and ``center_input`` appear only when set, so configs of models without them read
        as they did before those options existed.
        """
        config = {
            "kind": self.kind,
            "latent_dim": self.latent_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "likelihood": self.likelihood,
            "sigma": self.sigma,
            "input_dim": self.input_dim,
        }
        if self.norm is not None:
            config["norm"] = self.norm
        if self.center_input:
            config["center_input"] = True
        return config

    def extra_repr(self) -> str:
        c = self.config
        return ", ".join(f"{k}={v}" for k, v in c.items() if k != "kind")

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images as (..., 784) on the model's device and dtype (uint8 grey levels scaled to [0, 1])."""
        x = flatten_images(x, self.input_dim)
        check_finite(x, "images")
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def init_output_bias(self, images: torch.Tensor) -> "_MLPCodec":
        """Start the decoder at the mean image of ``images`` (uint8, or floats in [0, 1]).

        Each pixel's output bias becomes logit(m) for that pixel's mean m, clipped to
        [0.001, 0.999]: the decoder then starts where a model that ignores z would end up,
        instead of at grey 0.5 everywhere. With ``center_input``, the mean image also becomes the
        encoder's :class:`InputShift`. Returns the model.
        """
        x = flatten_images(images, self.input_dim)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch (N, {self.input_dim}), got {tuple(x.shape)}")
        mean = x.double().mean(0)
        if not bool(torch.isfinite(mean).all()) or mean.min() < 0 or mean.max() > 1:
            raise ValueError("images must have pixel values in [0, 1] (or be uint8 grey levels)")
        p = mean.clamp(1e-3, 1 - 1e-3)
        self.decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))
        if self.center_input:
            self.encoder[0].offset.copy_(mean)
        return self

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latent codes (..., latent_dim) into logits (Bernoulli) or means in (0, 1) (Gaussian)."""
        check_floating(z, "latent codes z")
        check_min_ndim(z, 1, "latent codes z")
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"latent codes must have last dimension {self.latent_dim}, got shape {tuple(z.shape)}")
        p = next(self.parameters())
        if z.dtype != p.dtype or z.device != p.device:
            raise TypeError(
                f"latent codes z are {z.dtype} on {z.device} but the model's weights are {p.dtype} on "
                f"{p.device}; move one to the other, e.g. z.to(device={str(p.device)!r}, dtype={p.dtype})"
            )
        check_finite(z, "latent codes z")
        out = self.decoder(z)
        return out if self.likelihood == "bernoulli" else torch.sigmoid(out)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image for codes z, pixel values in (0, 1), shape (..., 784)."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px_given_z(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, from the decoder's output for z (broadcast over sample dims)."""
        if self.likelihood == "bernoulli":
            return bounds.bernoulli_log_likelihood(x, decoded)
        return bounds.gaussian_log_likelihood(x, decoded, self.sigma)


class VAE(_MLPCodec):
    """A variational autoencoder with a diagonal Gaussian encoder and prior N(0, I).

    Args:
        latent_dim: size of z.
        hidden_sizes: widths of the encoder's hidden layers; the decoder mirrors them.
        activation: one of ``vaelib.models.ACTIVATIONS``.
        likelihood: ``"bernoulli"`` (decoder outputs logits; use binarized data) or
            ``"gaussian"`` (decoder outputs means in (0, 1) with standard deviation ``sigma``).
        sigma: the Gaussian decoder's standard deviation (ignored for Bernoulli).
    """

    kind = "vae"
    codes_per_latent = 2  # a mean and a log-variance

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, logvar) of q(z|x), each (..., latent_dim); x is (..., 784) or (..., 28, 28)."""
        h = self.encoder(self.prepare_input(x))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Encode, draw one z with the reparameterization trick, decode. Returns (decoded, mu, logvar, z)."""
        from .reparam import reparameterize

        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator=generator)
        return self.decode(z), mu, logvar, z

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, logvar: float = -6.0) -> "VAE":
        """Start training from a better place: the decoder outputs the mean image, the encoder's
        input is centered on it when the model has ``center_input`` (:meth:`init_output_bias`),
        and the encoder's log-variances start near ``logvar``.

        With the default initialization every σ starts near 1, so z is mostly noise and the
        decoder first learns to ignore it; σ ≈ e^{−3} = 0.05 lets the codes carry information from
        the first step. The KL term then pulls unused coordinates back to σ = 1. Returns the model.
        """
        if not math.isfinite(logvar):
            raise ValueError(f"logvar must be a finite number, got {logvar!r}")
        self.init_output_bias(images)
        self.encoder[-1].bias[self.latent_dim :] = logvar
        return self

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) ‖ N(0, I)) per data point."""
        return kl_standard_normal(mu, logvar)

    def loss(
        self,
        x: torch.Tensor,
        beta: float = 1.0,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training loss: −ELBO (with β·KL) averaged over the batch, in nats per image."""
        check_nonempty_batch(x, "x")
        return -bounds.elbo(self, x, beta=beta, n_samples=n_samples, generator=generator).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n codes from the prior N(0, I) and return the decoder's mean images (n, 784)."""
        n = check_positive_int(n, "n", minimum=0)
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.decode_mean(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: the mean image for z = mu(x), shape (..., 784)."""
        mu, _ = self.encode(x)
        return self.decode_mean(mu)


class Autoencoder(_MLPCodec):
    """A plain (deterministic) autoencoder with the same layers as :class:`VAE`.

    Its loss is the reconstruction term alone, −log p(x | z = encoder(x)); nothing shapes the
    codes into a known distribution, which is why decoding random codes gives poor digits.
    """

    kind = "autoencoder"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code (..., latent_dim)."""
        return self.encoder(self.prepare_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        """Reconstruction loss −log p(x|z) averaged over the batch (nats per image)."""
        check_nonempty_batch(x, "x")
        return -self.log_px_given_z(self.prepare_input(x), self(x)).mean()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_mean(self.encode(x))


MODEL_KINDS = {"vae": VAE, "autoencoder": Autoencoder}


def build_model(config: dict[str, Any]) -> _MLPCodec:
    """Rebuild a model from its :attr:`config` (as stored in a checkpoint)."""
    config = dict(config)
    kind = config.pop("kind", "vae")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**config)


def paper_vae(latent_dim: int, likelihood: str = "bernoulli") -> VAE:
    """The model of Kingma & Welling (2014): one hidden layer of 500 tanh units on each side."""
    return VAE(latent_dim, hidden_sizes=(500,), activation="tanh", likelihood=likelihood)
