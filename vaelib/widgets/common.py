"""What the explorers share besides pictures: argument checks, sliders, messages, and the model calls.

The builders check their arguments once, before any widget exists, so that a wrong argument
stops with an exception that names it. Once a widget is shown, a callback never raises: a
mistake is reported in the widget's ``message`` line instead (:func:`reports_errors`).
"""

from __future__ import annotations

import functools
import math

import ipywidgets as widgets
import numpy as np
import torch

from .._helpers import evaluating
from ..data import to_float
from ..errors import ShapeError
from ..models import VAE
from .drawing import MNIST_SIDE

__all__ = [
    "float_slider",
    "check_in_range",
    "check_int",
    "check_vae",
    "check_images",
    "check_labels",
    "decode_means",
    "encode_images",
    "error_html",
    "note_html",
    "reports_errors",
]


# --------------------------------------------------------------------------- #
# Controls and argument checks
# --------------------------------------------------------------------------- #
def float_slider(description: str, value: float, lo: float, hi: float, step: float) -> widgets.FloatSlider:
    """Return a ``FloatSlider`` on ``[lo, hi]`` that updates while dragged; ``value`` must lie in the range."""
    return widgets.FloatSlider(
        value=value,
        min=lo,
        max=hi,
        step=step,
        description=description,
        continuous_update=True,
        readout_format=".2f",
        style={"description_width": "7em"},
        layout=widgets.Layout(width="22em"),
    )


def check_in_range(name: str, value, lo: float, hi: float) -> float:
    """Return ``value`` as a float after checking it is finite and inside ``[lo, hi]``.

    Text and booleans are refused although ``float`` would take them ("1.5" or True as a mean is
    a slip, not a number)."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return v


def check_int(name: str, value, lo: int, hi: int) -> int:
    """Return ``value`` as an int after checking it lies in ``[lo, hi]`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def check_vae(model) -> VAE:
    """Return ``model`` after checking it is a VAE on 28×28 digits with at least two latent coordinates."""
    if not isinstance(model, VAE):
        raise TypeError(
            "model must be a vaelib.models.VAE (an encoder giving the mean and log-variance of q(z|x)), "
            f"got {type(model).__name__}"
        )
    if model.input_dim != MNIST_SIDE * MNIST_SIDE:
        raise ValueError(f"the explorers show 28×28 digits; this model's input_dim is {model.input_dim}, not 784")
    if model.latent_dim < 2:
        raise ValueError(
            f"the explorers need at least two latent coordinates; this model has latent_dim={model.latent_dim}"
        )
    return model


def check_images(images, name: str = "images") -> torch.Tensor:
    """Return images as a float32 CPU tensor (N, 784) in [0, 1]; accepts uint8 (0..255) or floats in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of images, got {type(images).__name__}")
    shape = tuple(images.shape)
    side = MNIST_SIDE
    if not (len(shape) == 3 and shape[1:] == (side, side)) and not (len(shape) == 2 and shape[1] == side * side):
        raise ShapeError(f"{name} must have shape (N, 28, 28) or (N, 784), got {shape}")
    if shape[0] == 0:
        raise ShapeError(f"{name} is empty (shape {shape}); give at least one image")
    return to_float(images.detach().cpu().reshape(shape[0], side, side), flatten=True).float().contiguous()


def check_labels(labels, n: int) -> np.ndarray | None:
    """Return ``labels`` as an int64 array of ``n`` labels (``None`` stays ``None``)."""
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(f"labels must be one label per image: expected shape ({n},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- #
# The model, in eval mode and without gradients
# --------------------------------------------------------------------------- #
def decode_means(model, z: torch.Tensor) -> np.ndarray:
    """Return the decoder's mean images for codes z (k, d) as a float32 numpy array (k, 784)."""
    p = next(model.parameters())
    with torch.inference_mode(), evaluating(model):
        out = model.decode_mean(z.to(device=p.device, dtype=p.dtype))
    return out.float().cpu().numpy()


def encode_images(model, x: torch.Tensor, batch: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mu, logvar) of q(z|x) for images x (N, 784), float32 on the CPU.

    The images go through the encoder in batches, so that the whole test set never sits in
    one activation tensor.
    """
    p = next(model.parameters())
    mus, logvars = [], []
    with torch.inference_mode(), evaluating(model):
        for start in range(0, x.shape[0], batch):
            mu, logvar = model.encode(x[start : start + batch].to(device=p.device, dtype=p.dtype))
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
    return torch.cat(mus).clone(), torch.cat(logvars).clone()


# --------------------------------------------------------------------------- #
# The message line
# --------------------------------------------------------------------------- #
def error_html(text: str) -> str:
    """Return ``text`` as HTML in the colour of a refusal."""
    return f'<span style="color:#b00020">{text}</span>'


def note_html(text: str) -> str:
    """Return ``text`` as HTML in the colour of a plain note."""
    return f'<span style="color:#444">{text}</span>'


def reports_errors(method):
    """Wrap a widget callback so that no exception escapes it: it is shown in ``message`` instead.

    ipywidgets would only log an exception raised in a callback, out of the reader's sight. The
    exception is also kept in ``last_error`` (``None`` after a callback that succeeded).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            out = method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a callback must never raise into the widget machinery
            self.last_error = exc
            self.message.value = error_html(f"unexpected error: {type(exc).__name__}: {exc}")
            return None
        self.last_error = None
        return out

    return wrapper
