"""The interpolation explorer of notebook 07: a slider t between two test digits.

At each t it shows the straight line between the two codes, decoded, beside the plain blend of
the two pictures, so that the reader sees that a path in latent space stays among digits while
the pixel blend is two digits laid over each other.
"""

from __future__ import annotations

import time

import ipywidgets as widgets
import numpy as np
import torch

from .common import check_images, check_int, check_labels, check_vae, decode_means, encode_images
from .common import error_html, float_slider, note_html, reports_errors
from .drawing import MNIST_SIDE, digit_png, image_widget, png_to_array, strip_png

__all__ = ["InterpolationExplorer", "interpolation_explorer"]


class InterpolationExplorer(widgets.VBox):
    """The container returned by :func:`interpolation_explorer` (notebook 07); see there for what it shows.

    Widgets (attributes): ``t`` (``FloatSlider`` in [0, 1]), ``first``, ``second``
    (``IntText``), ``latent_image``, ``pixel_image`` (the two blends at ``t``),
    ``first_image``, ``second_image`` (the two digits), ``latent_strip``, ``pixel_strip``
    (both paths at t = 0, 1/8, …, 1) and ``message``. State: ``pair`` (the two digit numbers
    shown), ``mu_first``, ``mu_second`` (their encodings' means), ``last_latency``,
    ``n_redraws``, ``last_error``. Methods: :meth:`latent_code`, :meth:`pixels`, :meth:`redraw`.
    """

    STRIP_STEPS = 9

    def __init__(self, model, images, labels, *, first, second, size):
        self.model = model
        self.size = size
        self._images = images
        self._labels = labels
        self.last_latency = float("nan")
        self.n_redraws = 0
        self.last_error: Exception | None = None
        self.t = float_slider("t", 0.5, 0.0, 1.0, 0.01)
        box = dict(style={"description_width": "5em"}, layout=widgets.Layout(width="12em"))
        self.first = widgets.IntText(value=first, description="digit a #", **box)
        self.second = widgets.IntText(value=second, description="digit b #", **box)
        self.message = widgets.HTML()
        self.latent_image = image_widget(size)
        self.pixel_image = image_widget(size)
        self.first_image = image_widget(size // 2)
        self.second_image = image_widget(size // 2)
        strip_width = self.STRIP_STEPS * (56 + 4) - 4
        self.latent_strip = image_widget(strip_width, 56)
        self.pixel_strip = image_widget(strip_width, 56)

        def caption(text: str, width: int | None = None) -> widgets.HTML:
            # a fixed two-line height keeps the pictures below the captions on one line
            return widgets.HTML(text, layout=widgets.Layout(height="3em", width=f"{width}px" if width else None))

        def column(text: str, image: widgets.Image, width: int) -> widgets.VBox:
            return widgets.VBox([caption(text, width), image], layout=widgets.Layout(margin="0 20px 0 0"))

        super().__init__([
            widgets.HBox([self.first, self.second, self.t]),
            widgets.HBox([
                column("digit a", self.first_image, size // 2),
                column("in latent space: decode((1−t)·μ<sub>a</sub> + t·μ<sub>b</sub>)", self.latent_image, size),
                column("in pixel space: (1−t)·x<sub>a</sub> + t·x<sub>b</sub>", self.pixel_image, size),
                column("digit b", self.second_image, size // 2),
            ]),
            caption(f"the whole path, t = 0 … 1 in {self.STRIP_STEPS} steps: latent space (top), pixels (bottom)"),
            self.latent_strip,
            self.pixel_strip,
            self.message,
        ])
        self.t.observe(self._on_t, names="value")
        self.first.observe(self._on_pair, names="value")
        self.second.observe(self._on_pair, names="value")
        self.pair = (-1, -1)
        self._set_pair(first, second)

    def latent_code(self, t: float | None = None) -> torch.Tensor:
        """(1 − t)·μ_a + t·μ_b (float32, (latent_dim,)), at the slider's ``t`` unless one is given."""
        t = float(self.t.value if t is None else t)
        return (1.0 - t) * self.mu_first + t * self.mu_second

    def pixels(self, which: str = "latent") -> np.ndarray:
        """The ``"latent"`` or ``"pixel"`` blend now shown, decoded from its PNG: uint8 (size, size)."""
        if which not in ("latent", "pixel"):
            raise ValueError(f"which must be 'latent' or 'pixel', got {which!r}")
        return png_to_array((self.latent_image if which == "latent" else self.pixel_image).value, "L")

    @reports_errors
    def _on_t(self, _change) -> None:
        self.redraw()

    @reports_errors
    def _on_pair(self, _change) -> None:
        n = self._images.shape[0]
        bad = [f"#{v}" for v in (self.first.value, self.second.value) if not 0 <= v < n]
        if bad:
            self.message.value = error_html(
                f"there is no test digit {' or '.join(bad)}: choose numbers from 0 to {n - 1} "
                f"(still showing #{self.pair[0]} → #{self.pair[1]})"
            )
            return
        self._set_pair(int(self.first.value), int(self.second.value))

    def _set_pair(self, a: int, b: int) -> None:
        """Show digits ``a`` and ``b``; the encodings and both strips are made again only for a new pair."""
        if (a, b) != self.pair:
            self.pair = (a, b)
            x = self._images[[a, b]]
            mu, _ = encode_images(self.model, x)
            self.mu_first, self.mu_second = mu[0].clone(), mu[1].clone()
            self._x_first, self._x_second = x[0].numpy(), x[1].numpy()
            side = MNIST_SIDE
            self.first_image.value = digit_png(self._x_first, self.size // 2)
            self.second_image.value = digit_png(self._x_second, self.size // 2)
            ts = torch.linspace(0.0, 1.0, self.STRIP_STEPS)
            codes = torch.stack([self.latent_code(float(t)) for t in ts])
            decoded = decode_means(self.model, codes).reshape(-1, side, side)
            blends = np.stack([(1.0 - t) * self._x_first + t * self._x_second for t in ts.tolist()])
            blends = blends.reshape(-1, side, side)
            self.latent_strip.value = strip_png(decoded, 2)
            self.pixel_strip.value = strip_png(blends, 2)
        label = ""
        if self._labels is not None:
            label = f" (labels {int(self._labels[a])} → {int(self._labels[b])})"
        self.message.value = note_html(f"digit #{a} → digit #{b}{label}") + (
            note_html(": the same digit twice, both paths stay put") if a == b else ""
        )
        self.redraw()

    def redraw(self) -> None:
        """Redraw both blends at the slider's ``t`` (times itself in ``last_latency``)."""
        start = time.perf_counter()
        t = float(self.t.value)
        self.latent_image.value = digit_png(decode_means(self.model, self.latent_code(t)[None])[0], self.size)
        self.pixel_image.value = digit_png((1.0 - t) * self._x_first + t * self._x_second, self.size)
        self.last_latency = time.perf_counter() - start
        self.n_redraws += 1


def interpolation_explorer(
    model, images, labels=None, *, first: int = 0, second: int = 1, size: int = 196
) -> InterpolationExplorer:
    """A slider t from 0 to 1 between two test digits: the straight line in latent space beside the pixel blend.

    Introduced in notebook 07. ``model`` is a :class:`vaelib.models.VAE`; ``images`` the digits
    to choose from ((N, 28, 28) or (N, 784), uint8 or floats in [0, 1]); ``labels`` optional,
    only shown in the message. Digits a = ``images[first]`` and b = ``images[second]`` are
    encoded (the grey levels as given); at ``t`` the widget shows the decoder's mean for the
    code (1 − t)·μ_a + t·μ_b (``latent_image``) and the pixel blend (1 − t)·x_a + t·x_b of
    the two grey-level inputs (``pixel_image``), each ``size`` × ``size``, nearest-neighbour
    upscaled, plus both whole paths as strips. At t = 0 and t = 1 the latent picture is the
    reconstruction of a and of b (the decoded means), not the inputs themselves.

    The digit numbers can be changed in ``first`` and ``second``; a number out of range gives a
    message in ``message`` and the previous pair stays. Returns an :class:`InterpolationExplorer`.
    """
    model = check_vae(model)
    x = check_images(images)
    y = check_labels(labels, x.shape[0])
    n = x.shape[0]
    first = check_int("first", first, 0, n - 1)
    second = check_int("second", second, 0, n - 1)
    size = check_int("size", size, MNIST_SIDE, 4096)
    return InterpolationExplorer(model, x, y, first=first, second=second, size=size)
