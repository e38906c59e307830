"""The latent-space explorer of notebook 07: sliders on two latent coordinates of a trained VAE.

A slider move decodes one code and redraws three pictures: the digit, and the marker on two
maps (the digits decoded on a grid of codes, and the test set's encoded means). The maps'
backgrounds are drawn by matplotlib only when what they show changes (the chosen coordinates,
the base code, the picked digit); a slider move is numpy and Pillow only (see
:class:`vaelib.widgets.drawing.MapPicture`), a few milliseconds, which
``benchmarks/widget_latency.py`` measures.
"""

from __future__ import annotations

import time

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import lines as matplotlib_lines

from .common import (
    check_images,
    check_in_range,
    check_int,
    check_labels,
    check_vae,
    decode_means,
    encode_images,
    error_html,
    float_slider,
    note_html,
    reports_errors,
)
from .drawing import MNIST_SIDE, MapPicture, digit_png, image_widget, png_to_array, strip_png

__all__ = ["BASE_OPTIONS", "LatentExplorer", "latent_explorer"]

BASE_OPTIONS = ("zero", "picked digit")
"""The choices of the base code, the values of the coordinates that no slider moves."""
_UNUSED_VARIANCE = 0.01  # a coordinate whose means vary less than this over the images is unused
_N_POSTERIOR = 8  # codes drawn from q(z|x) for the picked digit's strip
_LABEL_COLOURS = (  # matplotlib's tab10, one colour per digit class
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def _check_coords(coords, latent_dim: int) -> tuple[int, int]:
    """Return ``coords`` as a pair of two different coordinate numbers below ``latent_dim``."""
    try:
        i, j = coords
    except (TypeError, ValueError):
        raise TypeError(f"coords must be a pair of coordinate numbers, got {coords!r}") from None
    i = check_int("coords[0]", i, 0, latent_dim - 1)
    j = check_int("coords[1]", j, 0, latent_dim - 1)
    if i == j:
        raise ValueError(f"coords must name two different coordinates, got {coords!r}")
    return i, j


class LatentExplorer(widgets.VBox):
    """The container returned by :func:`latent_explorer` (notebook 07); see there for what it shows.

    Widgets (attributes): ``sliders`` (two ``FloatSlider``), ``image`` (the decoded digit),
    ``grid_map``, ``scatter_map`` (``None`` without images), ``coord_x``, ``coord_y``,
    ``base`` (shown only when the latent size is above 2), ``index``, ``gallery``,
    ``gallery_buttons``, ``input_image``, ``recon_image``, ``posterior_image`` (``None``
    without images), ``prior_button`` and ``message``.

    State: ``coords`` (the two coordinates the sliders move), ``activity`` (the variance of
    each coordinate's mean over the images: near zero for a coordinate the model does not
    use; ``None`` without images), ``picked`` (index of the picked
    test digit, or ``None``), ``posterior_codes`` (the codes drawn from q(z|x) for the strip),
    ``last_latency`` (seconds the last redraw took), ``n_redraws``, ``last_error``,
    ``means`` (the means of q(z|x) of the images). Methods: :meth:`code`, :meth:`base_code`,
    :meth:`marker_pixel`, :meth:`axes_box`, :meth:`pixels`,
    :meth:`pick`, :meth:`sample_prior`, :meth:`redraw`.
    """

    _GRID_FIG = dict(width=444, height=452, box=(50, 40, 384))
    _SCATTER_FIG = dict(width=520, height=452, box=(50, 40, 384))

    def __init__(self, model, images, labels, *, size, extent, seed, grid, coords):
        self.model = model
        self.latent_dim = d = int(model.latent_dim)
        self.size, self.extent, self.seed, self.grid_size = size, extent, seed, grid
        self._images = images
        self._labels = labels
        self._base = torch.zeros(d)
        self._prior_generator = torch.Generator().manual_seed(seed)
        self._muted = False
        self.picked: int | None = None
        self.posterior_codes: torch.Tensor | None = None
        self.last_latency = float("nan")
        self.n_redraws = 0
        self.last_error: Exception | None = None
        if images is not None:
            self._mu, self._logvar = encode_images(model, images)
            self.activity = self._mu.var(dim=0) if images.shape[0] > 1 else None
        else:
            self._mu = self._logvar = self.activity = None
        if coords == "active":
            top = torch.argsort(self.activity, descending=True, stable=True)[:2]
            coords = (int(top[0]), int(top[1]))
        self.coords = coords

        # ----- controls ----- #
        self.sliders = [float_slider(f"z[{k}]", 0.0, -extent, extent, 0.05) for k in coords]
        options = [(f"z[{k}]", k) for k in range(d)]
        self.coord_x = widgets.Dropdown(options=options, value=coords[0], description="slider 1 moves",
                                        style={"description_width": "7em"}, layout=widgets.Layout(width="14em"))
        self.coord_y = widgets.Dropdown(options=options, value=coords[1], description="slider 2 moves",
                                        style={"description_width": "7em"}, layout=widgets.Layout(width="14em"))
        self.base = widgets.Dropdown(options=list(BASE_OPTIONS), value="zero", description="other coords",
                                     style={"description_width": "7em"}, layout=widgets.Layout(width="16em"))
        self.prior_button = widgets.Button(description="sample from the prior", icon="random",
                                           tooltip="draw z ~ N(0, I) and show its decoded digit",
                                           layout=widgets.Layout(width="16em"))
        self.message = widgets.HTML()
        self.image = image_widget(size)

        # ----- maps ----- #
        half_cell = extent / (grid - 1)
        lo, hi = -extent - half_cell, extent + half_cell
        self._grid = MapPicture(lo, hi, **self._GRID_FIG)
        self.grid_map = image_widget(self._GRID_FIG["width"], self._GRID_FIG["height"])
        if images is not None:
            self._scatter = MapPicture(lo, hi, **self._SCATTER_FIG)
            self.scatter_map = image_widget(self._SCATTER_FIG["width"], self._SCATTER_FIG["height"])
        else:
            self._scatter = None
            self.scatter_map = None

        # ----- picking a test digit ----- #
        if images is not None:
            n = images.shape[0]
            self.index = widgets.IntText(value=0, description="test digit #",
                                         style={"description_width": "7em"}, layout=widgets.Layout(width="14em"))
            if labels is not None:
                firsts = [np.flatnonzero(labels == c) for c in range(10)]
                self.gallery_indices = [int(f[0]) for f in firsts if f.size]
                captions = [str(int(labels[i])) for i in self.gallery_indices]
            else:
                self.gallery_indices = list(range(min(n, 10)))
                captions = [f"#{i}" for i in self.gallery_indices]
            self.gallery_buttons = []
            items = []
            for i, caption in zip(self.gallery_indices, captions):
                thumb = image_widget(56)
                thumb.value = digit_png(images[i].numpy(), 56)
                button = widgets.Button(description=caption, tooltip=f"pick test digit #{i}",
                                        layout=widgets.Layout(width="56px"))
                button.on_click(self._make_gallery_callback(i))
                self.gallery_buttons.append(button)
                items.append(widgets.VBox([thumb, button], layout=widgets.Layout(align_items="center")))
            self.gallery = widgets.HBox(items)
            self.input_image = image_widget(112)
            self.recon_image = image_widget(112)
            self.posterior_image = image_widget(_N_POSTERIOR * (84 + 4) - 4, 84)
        else:
            self.index = self.gallery = self.input_image = self.recon_image = self.posterior_image = None
            self.gallery_buttons, self.gallery_indices = [], []

        # ----- layout ----- #
        rows = []
        if d > 2:
            rows.append(widgets.HBox([self.coord_x, self.coord_y, self.base]))
        left = widgets.VBox([*self.sliders, self.image, self.prior_button])
        maps = [self.grid_map] + ([self.scatter_map] if self.scatter_map is not None else [])
        rows.append(widgets.HBox([left, *maps], layout=widgets.Layout(flex_flow="row wrap")))
        if images is not None:
            rows.append(widgets.HBox([self.index, widgets.HTML("&nbsp;or pick one:&nbsp;"), self.gallery]))
            spaced = widgets.Layout(margin="0 24px 0 0")
            rows.append(widgets.HBox([
                widgets.VBox([widgets.HTML("the digit"), self.input_image], layout=spaced),
                widgets.VBox([widgets.HTML("its reconstruction"), self.recon_image], layout=spaced),
                widgets.VBox([widgets.HTML(f"{_N_POSTERIOR} samples z ~ q(z|x), decoded"), self.posterior_image]),
            ]))
        rows.append(self.message)
        super().__init__(rows)

        # ----- callbacks ----- #
        for slider in self.sliders:
            slider.observe(self._on_slider, names="value")
        self.coord_x.observe(self._on_coords, names="value")
        self.coord_y.observe(self._on_coords, names="value")
        self.base.observe(self._on_base, names="value")
        self.prior_button.on_click(self._on_prior)
        if self.index is not None:
            self.index.observe(self._on_index, names="value")

        self._render_grid()
        self._render_scatter()
        if images is not None:
            self._show_picked(0)
        self.message.value = self._unused_note()
        self.redraw()

    # ----- the current state ------------------------------------------------ #
    def code(self) -> torch.Tensor:
        """The current latent code (float32, shape (latent_dim,)): the base code with the two
        chosen coordinates replaced by the slider values."""
        z = self._base.clone()
        z[self.coords[0]] = float(self.sliders[0].value)
        z[self.coords[1]] = float(self.sliders[1].value)
        return z

    @property
    def means(self) -> torch.Tensor | None:
        """The means of q(z|x) of all the images, (N, latent_dim) float32 (``None`` without images)."""
        return None if self._mu is None else self._mu.clone()

    def base_code(self) -> torch.Tensor:
        """The code the coordinates without a slider take (zero, the picked digit's mean, or a prior draw)."""
        return self._base.clone()

    @property
    def marker(self) -> tuple[float, float]:
        """The current point on the maps, (z[coords[0]], z[coords[1]]), in latent units."""
        return float(self.sliders[0].value), float(self.sliders[1].value)

    def marker_pixel(self, which: str = "grid") -> tuple[int, int]:
        """(column, row) of the pixel at the marker's centre in the ``"grid"`` or ``"scatter"`` map's PNG."""
        return self._map(which).to_pixel(*self.marker)

    def axes_box(self, which: str = "grid") -> tuple[int, int, int, int]:
        """(left, top, right, bottom): the pixels of that map's PNG that show the latent square."""
        return self._map(which).axes_box

    @property
    def map_limits(self) -> tuple[float, float]:
        """Both axes of both maps show this interval of latent values (the grid's outer cell edges)."""
        return self._grid.lo, self._grid.hi

    def pixels(self) -> np.ndarray:
        """The digit now shown, decoded from ``image.value``: uint8 (size, size), 0 black … 255 white."""
        return png_to_array(self.image.value, "L")

    def _map(self, which: str) -> MapPicture:
        if which == "grid":
            return self._grid
        if which == "scatter":
            if self._scatter is None:
                raise ValueError("there is no scatter map: the explorer was built without images")
            return self._scatter
        raise ValueError(f"which must be 'grid' or 'scatter', got {which!r}")

    # ----- programmatic actions ------------------------------------------------ #
    def pick(self, index: int) -> None:
        """Pick test digit ``index``, as typing it into ``index`` does (an invalid one gives a message)."""
        if self.index is None:
            self.message.value = error_html("no test digits were given to the explorer, so none can be picked")
            return
        if self.index.value == index:
            self._on_index({"new": index})
        else:
            self.index.value = index

    def sample_prior(self) -> torch.Tensor:
        """Draw z ~ N(0, I), as the prior button does; returns the draw (before any clipping)."""
        self._on_prior(None)
        return self._last_prior.clone()

    # ----- callbacks ------------------------------------------------------------ #
    @reports_errors
    def _on_slider(self, _change) -> None:
        if not self._muted:
            self.redraw()

    @reports_errors
    def _on_coords(self, _change) -> None:
        new = (self.coord_x.value, self.coord_y.value)
        if new[0] == new[1]:
            self.message.value = error_html(
                f"both sliders would move z[{new[0]}]: choose two different coordinates "
                f"(the sliders still move z[{self.coords[0]}] and z[{self.coords[1]}])"
            )
            return
        if new == self.coords:
            self.message.value = ""
            return
        self.coords = new
        for slider, k in zip(self.sliders, new):
            slider.description = f"z[{k}]"
        note = self._set_sliders(self._base[list(new)].tolist(), "the base code")
        self._render_grid()
        self._render_scatter()
        self._draw_ellipse()
        self.message.value = "<br>".join(t for t in (note, self._unused_note()) if t)
        self.redraw()

    @reports_errors
    def _on_base(self, change) -> None:
        value = change["new"]
        if value is None:  # set by the prior button: the base is a prior draw
            return
        note = ""
        if value == "picked digit":
            if self.picked is None:
                self.base.value = "zero"  # runs this callback again, with "zero"
                self.message.value = error_html("no digit is picked (no images were given): the base code stays zero")
                return
            self._base = self._mu[self.picked].clone()
            note = self._set_sliders(self._base[list(self.coords)].tolist(), f"digit #{self.picked}")
        else:
            self._base = torch.zeros(self.latent_dim)
            self._set_sliders([0.0, 0.0], "the base code")
        self._render_grid()
        self._draw_ellipse()
        self.message.value = note
        self.redraw()

    @reports_errors
    def _on_index(self, change) -> None:
        value = change["new"]
        n = self._images.shape[0]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self.message.value = error_html(f"the digit number must be an integer, got {value!r}")
            return
        if not 0 <= value < n:
            self.message.value = error_html(
                f"there is no test digit #{value}: choose a number from 0 to {n - 1}"
                + (f" (digit #{self.picked} stays picked)" if self.picked is not None else "")
            )
            return
        self._show_picked(int(value))
        note = self._set_sliders(self._mu[self.picked][list(self.coords)].tolist(), f"digit #{self.picked}")
        if self.latent_dim > 2 and self.base.value == "picked digit":
            self._base = self._mu[self.picked].clone()
            self._render_grid()
            self._draw_ellipse()
        self.message.value = note
        self.redraw()

    def _make_gallery_callback(self, index: int):
        def on_click(_button):
            self.pick(index)

        return on_click

    @reports_errors
    def _on_prior(self, _button) -> None:
        z = torch.randn(self.latent_dim, generator=self._prior_generator)
        self._last_prior = z.clone()
        note = self._set_sliders(z[list(self.coords)].tolist(), "the prior draw")
        if self.latent_dim > 2:
            self._base = z.clone()
            self._muted = True
            try:
                self.base.value = None  # neither "zero" nor "picked digit": the base is this draw
            finally:
                self._muted = False
            self._render_grid()
            self._draw_ellipse()
        coords = ", ".join(f"z[{k}] = {float(z[k]):+.2f}" for k in self.coords)
        rest = " (the other coordinates too: they are the base code now)" if self.latent_dim > 2 else ""
        self.message.value = note_html(f"drew z ~ N(0, I): {coords}{rest}") + (f"<br>{note}" if note else "")
        self.redraw()

    # ----- drawing --------------------------------------------------------------- #
    def _set_sliders(self, values, source: str) -> str:
        """Move both sliders without redrawing; values beyond ±extent are clipped (the returned note says so)."""
        clipped = []
        self._muted = True
        try:
            for slider, k, v in zip(self.sliders, self.coords, values):
                v = float(v)
                c = min(max(v, -self.extent), self.extent)
                if c != v:
                    clipped.append(f"z[{k}] = {v:+.2f}")
                slider.value = c
        finally:
            self._muted = False
        if not clipped:
            return ""
        return note_html(
            f"{' and '.join(clipped)} of {source} lie{'s' if len(clipped) == 1 else ''} beyond the slider range "
            f"±{self.extent:g}: the slider{'s show' if len(clipped) > 1 else ' shows'} the clipped value"
        )

    def _unused_note(self) -> str:
        """A note when a slider moves a coordinate the model does not use (variance of its means < 0.01)."""
        if self.activity is None or self.latent_dim <= 2:
            return ""
        unused = [k for k in self.coords if float(self.activity[k]) < _UNUSED_VARIANCE]
        if not unused:
            return ""
        used = torch.argsort(self.activity, descending=True, stable=True)
        used = [int(k) for k in used if float(self.activity[k]) >= _UNUSED_VARIANCE]
        names = " and ".join(f"z[{k}]" for k in unused)
        return note_html(
            f"{names} {'is' if len(unused) == 1 else 'are'} unused by this model: the means of q(z|x) barely move "
            f"over the test digits (variance below {_UNUSED_VARIANCE:g}), so the decoder ignores "
            f"{'it' if len(unused) == 1 else 'them'}. Used coordinates, most varied first: "
            + (", ".join(f"z[{k}]" for k in used) if used else "none")
        )

    def _show_picked(self, index: int) -> None:
        """Show digit ``index``: its picture, reconstruction, samples from q(z|x), and its ellipse on the maps."""
        self.picked = index
        mu, logvar = self._mu[index], self._logvar[index]
        self.input_image.value = digit_png(self._images[index].numpy(), 112)
        self.recon_image.value = digit_png(decode_means(self.model, mu[None])[0], 112)
        generator = torch.Generator().manual_seed(self.seed)  # the same digit always gives the same strip
        eps = torch.randn(_N_POSTERIOR, self.latent_dim, generator=generator)
        self.posterior_codes = mu + torch.exp(0.5 * logvar) * eps
        samples = decode_means(self.model, self.posterior_codes).reshape(-1, MNIST_SIDE, MNIST_SIDE)
        self.posterior_image.value = strip_png(samples, 3)
        self._draw_ellipse()

    def _draw_ellipse(self) -> None:
        maps = [m for m in (self._grid, self._scatter) if m is not None]
        if self.picked is None:
            for m in maps:
                m.set_ellipse(None, None)
            return
        i, j = self.coords
        mu, sigma = self._mu[self.picked], torch.exp(0.5 * self._logvar[self.picked])
        for m in maps:
            m.set_ellipse((float(mu[i]), float(mu[j])), (float(sigma[i]), float(sigma[j])))

    def _render_grid(self) -> None:
        """Decode the grid of codes over the two chosen coordinates (the rest at the base code) and draw it."""
        n, e, (i, j) = self.grid_size, self.extent, self.coords
        values = torch.linspace(-e, e, n)
        z = self._base.repeat(n * n, 1)
        z[:, i] = values.repeat(n)  # column index runs fastest: x grows to the right
        z[:, j] = values.flip(0).repeat_interleave(n)  # first row at the top: y = +extent
        digits = decode_means(self.model, z).reshape(n, n, MNIST_SIDE, MNIST_SIDE)
        tiled = digits.transpose(0, 2, 1, 3).reshape(n * MNIST_SIDE, n * MNIST_SIDE)
        lo, hi = self._grid.lo, self._grid.hi
        title = f"decoded grid over z[{i}], z[{j}]"
        if self.latent_dim > 2:
            title += ", the rest at the base code"

        def draw(ax):
            ax.imshow(tiled, cmap="gray", vmin=0.0, vmax=1.0, extent=(lo, hi, lo, hi), origin="upper")
            ax.set_xlabel(f"z[{i}]")
            ax.set_ylabel(f"z[{j}]")
            ax.set_title(title, fontsize=9)

        self._grid.render(draw)

    def _render_scatter(self) -> None:
        """Draw the test set's encoded means on the two chosen coordinates, coloured by label."""
        if self._scatter is None:
            return
        i, j = self.coords
        mu = self._mu.numpy()
        labels = self._labels

        def draw(ax):
            if labels is None:
                ax.scatter(mu[:, i], mu[:, j], s=2, lw=0, color="0.35")
            else:
                colours = np.array(_LABEL_COLOURS)[labels % 10]
                ax.scatter(mu[:, i], mu[:, j], s=2, lw=0, c=colours)
                present = sorted({int(v) for v in np.unique(labels)})
                handles = [
                    matplotlib_lines.Line2D([], [], ls="", marker="o", ms=5, color=_LABEL_COLOURS[c % 10], label=str(c))
                    for c in present
                ]
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                          frameon=False, title="label", title_fontsize=8, handletextpad=0.2)
            ax.set_xlabel(f"z[{i}]")
            ax.set_ylabel(f"z[{j}]")
            ax.set_title(f"means of q(z|x) for {mu.shape[0]} test digits", fontsize=9)

        self._scatter.render(draw)

    def redraw(self) -> None:
        """Decode the current code and redraw the digit and both markers (times itself in ``last_latency``)."""
        start = time.perf_counter()
        z = self.code()
        self.image.value = digit_png(decode_means(self.model, z[None])[0], self.size)
        x, y = self.marker
        self.grid_map.value = self._grid.png(x, y)
        if self._scatter is not None:
            self.scatter_map.value = self._scatter.png(x, y)
        self.last_latency = time.perf_counter() - start
        self.n_redraws += 1


def latent_explorer(
    model,
    images=None,
    labels=None,
    *,
    size: int = 280,
    extent: float = 3.0,
    seed: int = 0,
    grid: int = 15,
    coords: tuple[int, int] | str | None = None,
) -> LatentExplorer:
    """Sliders on two latent coordinates of a trained VAE, with the decoded digit redrawn live.

    Introduced in notebook 07. ``model`` is a :class:`vaelib.models.VAE` on 28×28 digits;
    ``images`` (optional) are test digits, (N, 28, 28) or (N, 784), uint8 or floats in [0, 1],
    and ``labels`` their classes (one per image; needs ``images``).

    What it shows:

    - two ``FloatSlider`` in [−``extent``, ``extent``] (step 0.05, updating while dragged)
      moving the latent coordinates ``coords``; the digit decoded from the current code, as a
      ``size`` × ``size`` picture (nearest-neighbour upscaled grey levels, the decoder's mean);
    - the *grid map*: the digits decoded on a ``grid`` × ``grid`` lattice of the two chosen
      coordinates over [−extent, extent]², and the *scatter map*: the means of q(z|x) of
      ``images`` on those coordinates, coloured by label; both mark the current point (a red
      dot, :data:`MARKER_RGB`) and, for the picked digit, its mean and 1-σ ellipse (magenta,
      axis-aligned, σ = exp(logvar/2) of the two coordinates);
    - with more than two latent coordinates, two dropdowns choose the coordinates the sliders
      move, and a third the *base code* the others keep: ``"zero"`` or ``"picked digit"`` (the
      picked digit's mean). The maps are redrawn when these change, not on every slider move;
    - picking a test digit (``index``, or a gallery button: the first digit of each class)
      shows the digit, its reconstruction (decoded mean), 8 codes drawn from q(z|x) decoded
      (a generator seeded with ``seed``: the same digit always gives the same strip), and
      moves the sliders to its mean; with base ``"picked digit"`` the other coordinates follow,
      so the digit shown is the reconstruction;
    - "sample from the prior" draws z ~ N(0, I) (its own generator, seeded with ``seed``);
      with more than two coordinates the draw becomes the base code (the base dropdown then
      shows neither option).

    Slider positions beyond ±``extent`` (a digit's mean, a prior draw) are clipped, and the
    ``message`` line says so; invalid choices (a digit number out of range, the same coordinate
    for both sliders) are refused with a message there, never an exception.

    ``coords`` defaults to ``(0, 1)`` for a 2-D model or when no images are given, and to
    ``"active"`` otherwise. ``coords="active"`` starts on the two coordinates whose means vary most over ``images``
    (``LatentExplorer.activity``): a VAE with many latent coordinates leaves most of them
    unused (their q(z|x) stays close to the prior for every digit), and a slider on an unused
    coordinate changes nothing. The ``message`` line says when a chosen coordinate is unused.

    Encodings use the grey-level images as they are given. Returns a :class:`LatentExplorer`.
    Each slider change decodes one code and re-encodes the digit and the two map pictures as
    PNG (a few milliseconds, see ``last_latency``); matplotlib draws the maps' backgrounds only.
    """
    model = check_vae(model)
    x = check_images(images) if images is not None else None
    if x is None and labels is not None:
        raise ValueError("labels were given without images: give the images they belong to")
    y = check_labels(labels, x.shape[0]) if x is not None else None
    size = check_int("size", size, MNIST_SIDE, 4096)
    ext = check_in_range("extent", extent, 0.05, 100.0)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    grid = check_int("grid", grid, 2, 64)
    if coords is None:
        coords = "active" if x is not None and x.shape[0] >= 2 and model.latent_dim > 2 else (0, 1)
    if isinstance(coords, str) and coords == "active":
        if x is None:
            raise ValueError('coords="active" needs images: the activity of a coordinate is measured on them')
        if x.shape[0] < 2:
            raise ValueError('coords="active" needs at least two images')
        coords = "active"
    else:
        coords = _check_coords(coords, model.latent_dim)
    return LatentExplorer(model, x, y, size=size, extent=ext, seed=seed, grid=grid, coords=coords)
