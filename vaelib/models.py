"""The VAE and a plain autoencoder of the same shape (notebook 06).

Both are multilayer perceptrons on flattened 28×28 images. The VAE's encoder outputs the mean and
the log-variance of a diagonal Gaussian q(z|x); the decoder outputs, per pixel, the logit of a
Bernoulli distribution (``likelihood="bernoulli"``, for binarized images) or the mean of a Gaussian
with a fixed standard deviation ``sigma`` (``likelihood="gaussian"``, for grey levels in [0, 1]).
The model of Kingma & Welling (2014), one hidden layer of 500 tanh units, is :func:`paper_vae`.

Public methods check their input once (``@checked``: images in [0, 1], codes of the right size);
a training loop that checked its data before the first step calls ``model.loss.unchecked``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._helpers import (
    check_finite,
    check_floating,
    check_min_ndim,
    check_model_settings,
    check_nonempty_batch,
    check_positive_int,
    check_unit_interval,
    checked,
)
from .bounds import bernoulli_log_likelihood, elbo, gaussian_log_likelihood
from .data import IMAGE_SIZE, to_float
from .kl import kl_standard_normal
from .reparam import reparameterize

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU,
               "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU}
LIKELIHOODS = ("bernoulli", "gaussian")


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, an activation after each but the last."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


def _check_images(model, x, *args, **kwargs) -> None:
    model.check_input(x)


def _check_codes(model, z) -> None:
    check_floating(z, "latent codes z")
    check_min_ndim(z, 1, "latent codes z")
    if z.shape[-1] != model.latent_dim:
        raise ValueError(f"latent codes must have last dimension {model.latent_dim}, got shape {tuple(z.shape)}")
    p = next(model.parameters())
    if z.dtype != p.dtype or z.device != p.device:
        raise TypeError(f"latent codes z are {z.dtype} on {z.device} but the model's weights are {p.dtype} on "
                        f"{p.device}; move one to the other, e.g. z.to(device={str(p.device)!r}, dtype={p.dtype})")
    check_finite(z, "latent codes z")


def _check_loss(model, x, beta=1.0, n_samples=1, generator=None) -> None:
    check_nonempty_batch(x, "x")
    elbo.check(model, x, beta, n_samples, generator)


def _check_reconstruction_loss(model, x, **_) -> None:
    check_nonempty_batch(x, "x")
    model.check_input(x)


class _Codec(nn.Module):
    """What the VAE and the autoencoder share: their settings, the decoder and the likelihood."""

    kind = "base"
    outputs_per_latent = 1  # numbers the encoder outputs per latent coordinate

    def __init__(self, latent_dim: int, hidden_sizes: Sequence[int] = (512, 512), activation: str = "relu",
                 likelihood: str = "bernoulli", sigma: float = 1.0, input_dim: int = IMAGE_SIZE) -> None:
        super().__init__()
        check_model_settings(latent_dim, hidden_sizes, activation, ACTIVATIONS, likelihood, LIKELIHOODS, sigma)
        self.latent_dim, self.hidden_sizes = latent_dim, tuple(int(h) for h in hidden_sizes)
        self.activation, self.likelihood, self.sigma = activation, likelihood, float(sigma)
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.encoder = mlp((self.input_dim, *self.hidden_sizes, self.outputs_per_latent * latent_dim), activation)
        self.decoder = mlp((latent_dim, *reversed(self.hidden_sizes), self.input_dim), activation)

    @property
    def config(self) -> dict[str, Any]:
        """The settings that rebuild this architecture (stored in checkpoints)."""
        return {"kind": self.kind, "latent_dim": self.latent_dim, "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation, "likelihood": self.likelihood, "sigma": self.sigma,
                "input_dim": self.input_dim}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "kind")

    def check_input(self, x) -> None:
        """Images (..., 784) or (..., 28, 28): uint8 grey levels, or finite values in [0, 1]."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        side = round(self.input_dim**0.5)
        if not (x.dim() >= 1 and x.shape[-1] == self.input_dim or x.dim() >= 2 and x.shape[-2:] == (side, side)):
            square = f" or (N, {side}, {side})" if side * side == self.input_dim else ""
            raise ValueError(f"images must have shape (N, {self.input_dim}){square}, got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            check_unit_interval(x if x.is_floating_point() else x.float(), "images")

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images as (..., 784) floats on the model's device and in its dtype (not checked)."""
        x = to_float.unchecked(x)
        if x.shape[-1] != self.input_dim:
            x = x.reshape(*x.shape[:-2], self.input_dim)
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    @checked(_check_codes)
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode codes (..., latent_dim) into logits (Bernoulli) or means in (0, 1) (Gaussian)."""
        out = self.decoder(z)
        return out if self.likelihood == "bernoulli" else torch.sigmoid(out)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image for codes z: pixel values in (0, 1), shape (..., 784)."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px_given_z(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, from the decoder's output for z (broadcast over sample axes)."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood.unchecked(x, decoded)
        return gaussian_log_likelihood.unchecked(x, decoded, self.sigma)


class VAE(_Codec):
    """A variational autoencoder: Gaussian encoder q(z|x) = N(μ(x), diag σ²(x)), prior N(0, I).

    Args: ``latent_dim`` (size of z); ``hidden_sizes`` (widths of the encoder's hidden layers, the
    decoder mirrors them); ``activation`` (a key of :data:`ACTIVATIONS`); ``likelihood``
    (``"bernoulli"``: logits, use binarized data; ``"gaussian"``: means in (0, 1) with standard
    deviation ``sigma``).
    """

    kind = "vae"
    outputs_per_latent = 2  # a mean and a log-variance

    @checked(_check_images)
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z|x), each (..., latent_dim), for images x (..., 784) or (..., 28, 28)."""
        mu, logvar = self.encoder(self.prepare_input(x)).chunk(2, dim=-1)
        return mu, logvar

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) ‖ N(0, I)) per data point, for the encoder's (μ, log σ²) (not checked)."""
        return kl_standard_normal.unchecked(mu, logvar)

    @checked(_check_loss)
    def loss(self, x: torch.Tensor, beta: float = 1.0, n_samples: int = 1, generator=None) -> torch.Tensor:
        """The training loss: −ELBO_β averaged over the batch, in nats per image (notebook 04)."""
        return -elbo.unchecked(self, x, beta=beta, n_samples=n_samples, generator=generator).mean()

    def forward(self, x: torch.Tensor, generator=None):
        """Encode, draw one z with the reparameterization trick, decode: (decoded, mu, logvar, z)."""
        mu, logvar = self.encode(x)
        z = reparameterize.unchecked(mu, logvar, generator=generator)
        return self.decode.unchecked(z), mu, logvar, z

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """Decode n codes drawn from the prior N(0, I): mean images (n, 784)."""
        n = check_positive_int(n, "n", minimum=0)
        p = next(self.parameters())
        return self.decode_mean(torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype))

    @torch.no_grad()
    @checked(_check_images)
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean image decoded from the posterior mean z = μ(x), shape (..., 784)."""
        return self.decode_mean(self.encode.unchecked(x)[0])


class Autoencoder(_Codec):
    """A plain autoencoder with the layers of :class:`VAE`: its loss is the reconstruction term
    alone, −log p(x | z = encoder(x)). Nothing shapes its codes into a known distribution, so
    decoding random codes gives poor digits (notebook 06)."""

    kind = "autoencoder"

    @checked(_check_images)
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code (..., latent_dim) of images x."""
        return self.encoder(self.prepare_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @checked(_check_reconstruction_loss)
    def loss(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        """Reconstruction loss −log p(x|z) averaged over the batch (nats per image)."""
        x = self.prepare_input(x)
        return -self.log_px_given_z(x, self.decode.unchecked(self.encoder(x))).mean()

    @torch.no_grad()
    @checked(_check_images)
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_mean(self.encode.unchecked(x))


MODEL_KINDS = {"vae": VAE, "autoencoder": Autoencoder}


def build_model(config: dict[str, Any]) -> _Codec:
    """Rebuild a model from its :attr:`config` (as stored in a checkpoint)."""
    config = dict(config)
    kind = config.pop("kind", "vae")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)} (a model of the "
                         "speed engine's recipe needs `import vaelib.speed` first)")
    return MODEL_KINDS[kind](**config)


def paper_vae(latent_dim: int, likelihood: str = "bernoulli") -> VAE:
    """The model of Kingma & Welling (2014): one hidden layer of 500 tanh units on each side."""
    return VAE(latent_dim, hidden_sizes=(500,), activation="tanh", likelihood=likelihood)
