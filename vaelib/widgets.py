"""Interactive widgets of the course, built with ipywidgets and drawn with matplotlib.

Notebook 01 introduces :func:`kl_explorer`: sliders for two 1-D distributions P and Q (P a
Gaussian or a two-bump Gaussian mixture, Q a Gaussian), redrawing both densities and showing
both divergences, KL(P‖Q) and KL(Q‖P), as a slider moves. Notebook 06 adds the latent-space
explorer of a trained VAE to this module.

How every widget here is built (so that it runs, and is tested, without a browser):

- a public function builds the controls and returns one ipywidgets container (a ``VBox``
  subclass) that carries the pieces a test needs as attributes: ``sliders`` (a dict of
  the sliders by name), the output widgets, and the last computed numbers;
- callbacks are methods of that container; they read only their own arguments and the
  objects the function created, never notebook globals, so a later notebook cell that reuses
  a variable name cannot change what a slider does;
- pictures are rendered by matplotlib's Agg canvas into PNG bytes shown by an
  ``ipywidgets.Image`` (:func:`_new_figure`, :func:`_figure_png`); pyplot is not used, so no
  display and no global figure state are involved, and a test can compare the bytes.
  The latent explorers of notebook 06 must redraw within milliseconds: matplotlib draws only
  their maps' backgrounds, and each slider move is drawn with numpy and encoded as PNG by
  Pillow and zlib (see the notes above :class:`LatentExplorer`).
"""

from __future__ import annotations

import io
import math
import struct
import time
import zlib
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import lines as matplotlib_lines
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage
from scipy import optimize
from scipy.integrate import trapezoid
from scipy.special import logsumexp

from . import kl as _kl

__all__ = [
    "KLExplorer",
    "kl_explorer",
    "LatentExplorer",
    "latent_explorer",
    "InterpolationExplorer",
    "interpolation_explorer",
    "png_to_array",
]

_LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- #
# Shared private helpers (figures, sliders, batched updates)
# --------------------------------------------------------------------------- #
def _new_figure(size: tuple[float, float], dpi: int, nrows: int = 1, margins=None, **subplot_kw):
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot) and its column of axes.

    The margins are fixed (``margins``: keyword arguments of ``subplots_adjust``) instead of
    computed by a layout engine, which would double the time of every redraw.
    """
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, squeeze=False, **subplot_kw)[:, 0]
    fig.subplots_adjust(**(margins or {}))
    return fig, axes


def _figure_png(fig) -> bytes:
    """Render ``fig`` to PNG bytes (no timestamp or software tag, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


def _float_slider(description: str, value: float, lo: float, hi: float, step: float):
    """A ``FloatSlider`` with a readable description width; ``value`` must lie in ``[lo, hi]``."""
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


def _check_in_range(name: str, value, lo: float, hi: float) -> float:
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


# --------------------------------------------------------------------------- #
# Densities and divergences of 1-D Gaussians and two-component mixtures
# --------------------------------------------------------------------------- #
def _normal_logpdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - _HALF_LOG_2PI


def _mixture_logpdf(x: np.ndarray, weights, means, sigmas) -> np.ndarray:
    """log sum_k w_k N(x; m_k, s_k^2), computed with log-sum-exp (no underflow far out)."""
    comps = np.stack(
        [math.log(w) + _normal_logpdf(x, m, s) for w, m, s in zip(weights, means, sigmas) if w > 0]
    )
    return logsumexp(comps, axis=0)


def _integration_grid(means, sigmas, n_per_sigma: int = 25, max_points: int = 60_001) -> np.ndarray:
    """A uniform grid covering every component to 12 standard deviations.

    The spacing is at most the smallest scale / ``n_per_sigma``; the trapezoid rule on such a
    grid is accurate to about 1e-10 for these smooth, fast-decaying integrands.
    """
    lo = min(m - 12.0 * s for m, s in zip(means, sigmas))
    hi = max(m + 12.0 * s for m, s in zip(means, sigmas))
    n = int(np.clip(np.ceil((hi - lo) * n_per_sigma / min(sigmas)), 2_001, max_points))
    return np.linspace(lo, hi, n | 1)


def _kl_on_grid(log_a: np.ndarray, log_b: np.ndarray, x: np.ndarray) -> float:
    """KL(a‖b) = ∫ a (log a − log b) dx by the trapezoid rule, from log-densities on grid ``x``."""
    return float(trapezoid(np.exp(log_a) * (log_a - log_b), x))


# --------------------------------------------------------------------------- #
# The KL explorer (notebook 01)
# --------------------------------------------------------------------------- #
_MEAN_RANGE = (-4.0, 4.0)
_SCALE_RANGE = (0.2, 5.0)
_OFFSET_RANGE = (0.0, 3.0)
_WEIGHT_RANGE = (0.05, 0.95)
_X_VIEW = (-10.0, 10.0)


class KLExplorer(widgets.VBox):
    """The container returned by :func:`kl_explorer`; see there for what it shows.

    Attributes a program (or a test) can use:

    ``sliders``
        dict of the ``FloatSlider`` widgets: ``"mu_p"``, ``"sigma_p"``, ``"offset_p"``,
        ``"weight_p"`` (P) and ``"mu_q"``, ``"sigma_q"`` (Q). Setting ``.value`` redraws.
    ``p_shape``
        ``ToggleButtons`` with values ``"gaussian"`` and ``"mixture"``.
    ``buttons``
        dict of ``Button`` widgets, ``"forward"`` and ``"reverse"``: move Q to the Gaussian
        that minimizes KL(P‖Q), resp. (locally, from the current Q) KL(Q‖P).
    ``image``, ``readout``
        the ``Image`` (PNG bytes) with both densities and the pointwise integrands, and the
        ``HTML`` line with both divergences in nats and bits.
    ``kl``
        the last computed divergences, ``{"forward": KL(P‖Q), "reverse": KL(Q‖P)}`` in nats.
    ``n_redraws``
        how many times the picture has been drawn (moving several sliders at once, as the
        fit buttons do, draws once).
    """

    def __init__(self, *, mu_p, sigma_p, mu_q, sigma_q, mixture, offset_p, weight_p, figsize, dpi):
        self.sliders = {
            "mu_p": _float_slider("P: centre μ", mu_p, *_MEAN_RANGE, 0.05),
            "sigma_p": _float_slider("P: scale σ", sigma_p, *_SCALE_RANGE, 0.05),
            "offset_p": _float_slider("P: bumps at μ±", offset_p, *_OFFSET_RANGE, 0.05),
            "weight_p": _float_slider("P: left weight", weight_p, *_WEIGHT_RANGE, 0.05),
            "mu_q": _float_slider("Q: mean μ", mu_q, *_MEAN_RANGE, 0.05),
            "sigma_q": _float_slider("Q: scale σ", sigma_q, *_SCALE_RANGE, 0.05),
        }
        self.p_shape = widgets.ToggleButtons(
            options=[("P Gaussian", "gaussian"), ("P two-bump mixture", "mixture")],
            value="mixture" if mixture else "gaussian",
            description="",
        )
        self.buttons = {
            "forward": widgets.Button(
                description="Q ← argmin KL(P‖Q)",
                tooltip="Move Q to the Gaussian closest to P in forward KL (moment matching)",
                layout=widgets.Layout(width="14em"),
            ),
            "reverse": widgets.Button(
                description="Q ← argmin KL(Q‖P)",
                tooltip="Minimize the reverse KL over Q, starting from the current Q (a local minimum)",
                layout=widgets.Layout(width="14em"),
            ),
        }
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.kl: dict[str, float] = {}
        self.n_redraws = 0
        self._holding = False
        self._fig, self._axes = _new_figure(
            figsize, dpi, nrows=2, sharex=True,
            margins=dict(left=0.12, right=0.97, top=0.92, bottom=0.11, hspace=0.1),
        )

        controls = widgets.VBox(
            [
                widgets.HTML("<b>P</b> (the target)"),
                *(self.sliders[k] for k in ("mu_p", "sigma_p", "offset_p", "weight_p")),
                widgets.HTML("<b>Q</b> (a Gaussian)"),
                *(self.sliders[k] for k in ("mu_q", "sigma_q")),
                widgets.HBox(list(self.buttons.values())),
            ]
        )
        super().__init__([self.p_shape, widgets.HBox([controls, self.image]), self.readout])

        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        self.p_shape.observe(self._on_change, names="value")
        self.buttons["forward"].on_click(self._on_forward_click)
        self.buttons["reverse"].on_click(self._on_reverse_click)
        self.refresh()

    # ----- the current distributions -------------------------------------- #
    @property
    def params(self) -> dict[str, float | str]:
        """The current settings: the slider values and ``"p_shape"``."""
        out: dict[str, float | str] = {k: float(s.value) for k, s in self.sliders.items()}
        out["p_shape"] = self.p_shape.value
        return out

    def p_components(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """P as a mixture: ``(weights, means, scales)`` (one component when P is Gaussian)."""
        v = {k: float(s.value) for k, s in self.sliders.items()}
        if self.p_shape.value == "gaussian":
            return (1.0,), (v["mu_p"],), (v["sigma_p"],)
        w = v["weight_p"]
        return (
            (w, 1.0 - w),
            (v["mu_p"] - v["offset_p"], v["mu_p"] + v["offset_p"]),
            (v["sigma_p"], v["sigma_p"]),
        )

    def p_moments(self) -> tuple[float, float]:
        """Mean and variance of P (for the mixture: Σ wₖμₖ and Σ wₖ(σₖ² + μₖ²) − mean²)."""
        weights, means, sigmas = self.p_components()
        mean = sum(w * m for w, m in zip(weights, means))
        second = sum(w * (s * s + m * m) for w, m, s in zip(weights, means, sigmas))
        return mean, second - mean * mean

    def _divergences(self, mu_q: float, sigma_q: float) -> tuple[float, float]:
        """(KL(P‖Q), KL(Q‖P)) in nats for Q = N(mu_q, sigma_q²) and the current P."""
        weights, means, sigmas = self.p_components()
        if len(weights) == 1:
            # both Gaussian: the closed form of vaelib.kl, in float64
            t = lambda a: torch.tensor([a], dtype=torch.float64)  # noqa: E731
            lv_p, lv_q = 2.0 * math.log(sigmas[0]), 2.0 * math.log(sigma_q)
            fwd = _kl.kl_diag_gaussians(t(means[0]), t(lv_p), t(mu_q), t(lv_q))
            rev = _kl.kl_diag_gaussians(t(mu_q), t(lv_q), t(means[0]), t(lv_p))
            return float(fwd), float(rev)
        x = _integration_grid((*means, mu_q), (*sigmas, sigma_q))
        log_p = _mixture_logpdf(x, weights, means, sigmas)
        log_q = _normal_logpdf(x, mu_q, sigma_q)
        return _kl_on_grid(log_p, log_q, x), _kl_on_grid(log_q, log_p, x)

    # ----- callbacks ------------------------------------------------------- #
    def _on_change(self, change) -> None:
        if change["name"] == "value" and change["owner"] is self.p_shape:
            self._enable_mixture_sliders()
        if not self._holding:
            self.refresh()

    def _on_forward_click(self, _button) -> None:
        self.fit_forward()

    def _on_reverse_click(self, _button) -> None:
        self.fit_reverse()

    @contextmanager
    def hold(self):
        """Change several settings and redraw once, at the end."""
        was, self._holding = self._holding, True
        try:
            yield self
        finally:
            self._holding = was
            if not was:
                self.refresh()

    def fit_forward(self) -> tuple[float, float]:
        """Set Q to the minimizer of KL(P‖Q) over Gaussians: P's mean and standard deviation.

        Values outside the slider ranges are clipped to them. Returns the new ``(mu_q, sigma_q)``.
        """
        mean, var = self.p_moments()
        return self._set_q(mean, math.sqrt(var))

    def fit_reverse(self) -> tuple[float, float]:
        """Set Q to a local minimizer of KL(Q‖P), searched from the current Q within the slider ranges.

        The reverse KL of a two-bump P has one local minimum near each bump; which one is found
        depends on where Q starts. Returns the new ``(mu_q, sigma_q)``.
        """
        start = np.array([self.sliders["mu_q"].value, math.log(self.sliders["sigma_q"].value)])
        bounds = [_MEAN_RANGE, (math.log(_SCALE_RANGE[0]), math.log(_SCALE_RANGE[1]))]
        res = optimize.minimize(
            lambda th: self._divergences(th[0], math.exp(th[1]))[1],
            start,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-12, "gtol": 1e-8},
        )
        return self._set_q(float(res.x[0]), math.exp(float(res.x[1])))

    def _set_q(self, mu: float, sigma: float) -> tuple[float, float]:
        with self.hold():
            self.sliders["mu_q"].value = float(np.clip(mu, *_MEAN_RANGE))
            self.sliders["sigma_q"].value = float(np.clip(sigma, *_SCALE_RANGE))
        return float(self.sliders["mu_q"].value), float(self.sliders["sigma_q"].value)

    def _enable_mixture_sliders(self) -> None:
        gaussian = self.p_shape.value == "gaussian"
        self.sliders["offset_p"].disabled = gaussian
        self.sliders["weight_p"].disabled = gaussian

    # ----- recompute and redraw -------------------------------------------- #
    def refresh(self) -> None:
        """Recompute both divergences from the current settings and redraw the picture."""
        self._enable_mixture_sliders()
        mu_q, sigma_q = float(self.sliders["mu_q"].value), float(self.sliders["sigma_q"].value)
        fwd, rev = self._divergences(mu_q, sigma_q)
        self.kl = {"forward": fwd, "reverse": rev}
        self.readout.value = (
            f"forward KL(P‖Q) = <b>{fwd:.4f}</b> nats = {fwd / _LN2:.4f} bits"
            " &nbsp;&nbsp;|&nbsp;&nbsp; "
            f"reverse KL(Q‖P) = <b>{rev:.4f}</b> nats = {rev / _LN2:.4f} bits"
        )
        self._draw(mu_q, sigma_q, fwd, rev)
        self.image.value = _figure_png(self._fig)
        self.n_redraws += 1

    def _draw(self, mu_q: float, sigma_q: float, fwd: float, rev: float) -> None:
        weights, means, sigmas = self.p_components()
        x = np.linspace(*_X_VIEW, 1201)
        log_p = _mixture_logpdf(x, weights, means, sigmas)
        log_q = _normal_logpdf(x, mu_q, sigma_q)
        p, q = np.exp(log_p), np.exp(log_q)
        top, bottom = self._axes
        top.cla()
        bottom.cla()
        top.fill_between(x, p, color="tab:blue", alpha=0.25, lw=0)
        top.plot(x, p, color="tab:blue", lw=2, label="P")
        top.plot(x, q, color="tab:orange", lw=2, label="Q")
        top.set_ylim(0, 1.1 * max(p.max(), q.max()))
        top.set_ylabel("density")
        top.legend(loc="upper right", fontsize=9)
        top.set_title(f"KL(P‖Q) = {fwd:.3f} nats    KL(Q‖P) = {rev:.3f} nats", fontsize=11)
        # pointwise integrands: they integrate to the two divergences
        bottom.axhline(0, color="0.6", lw=0.8)
        f_pq, f_qp = p * (log_p - log_q), q * (log_q - log_p)
        hi = max(f_pq.max(), f_qp.max(), 1e-3)
        lo = min(f_pq.min(), f_qp.min(), 0.0)
        bottom.plot(x, f_pq, color="tab:blue", lw=1.8, label="p log(p/q): forward")
        bottom.plot(x, f_qp, color="tab:orange", lw=1.8, label="q log(q/p): reverse")
        bottom.set_ylim(lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))
        bottom.set_xlim(*_X_VIEW)
        bottom.set_xlabel("x")
        bottom.set_ylabel("integrand")
        bottom.legend(loc="upper right", fontsize=8)


def kl_explorer(
    mu_p: float = 0.0,
    sigma_p: float = 1.0,
    mu_q: float = 1.0,
    sigma_q: float = 0.6,
    *,
    mixture: bool = False,
    offset_p: float = 2.0,
    weight_p: float = 0.5,
    figsize: tuple[float, float] = (6.4, 4.6),
    dpi: int = 80,
) -> KLExplorer:
    """Sliders for two 1-D distributions P and Q, with both KL divergences and both densities.

    Introduced in notebook 01. Q is the Gaussian N(``mu_q``, ``sigma_q``²). P is the Gaussian
    N(``mu_p``, ``sigma_p``²), or, with ``mixture=True`` (a toggle in the widget), the two-bump
    mixture ``weight_p`` N(mu_p − offset_p, sigma_p²) + (1 − weight_p) N(mu_p + offset_p, sigma_p²).

    Every change of a slider recomputes KL(P‖Q) and KL(Q‖P) in nats — the closed form of
    :func:`vaelib.kl.kl_diag_gaussians` when P is Gaussian, the trapezoid rule on a fine grid
    when P is the mixture — shows them (also in bits) and redraws the two densities and the two
    pointwise integrands p log(p/q) and q log(q/p). Two buttons move Q to the minimizer of the
    forward KL (moment matching) and to a local minimizer of the reverse KL.

    Ranges: means and centre in [−4, 4], scales in [0.2, 5] (a scale can never reach 0),
    ``offset_p`` in [0, 3], ``weight_p`` in [0.05, 0.95]; a value outside its range raises
    ``ValueError``. Returns a :class:`KLExplorer` (an ``ipywidgets.VBox``); see it for the
    attributes ``sliders``, ``p_shape``, ``buttons``, ``image``, ``readout`` and ``kl``.
    """
    args = dict(
        mu_p=_check_in_range("mu_p", mu_p, *_MEAN_RANGE),
        sigma_p=_check_in_range("sigma_p", sigma_p, *_SCALE_RANGE),
        mu_q=_check_in_range("mu_q", mu_q, *_MEAN_RANGE),
        sigma_q=_check_in_range("sigma_q", sigma_q, *_SCALE_RANGE),
        offset_p=_check_in_range("offset_p", offset_p, *_OFFSET_RANGE),
        weight_p=_check_in_range("weight_p", weight_p, *_WEIGHT_RANGE),
    )
    return KLExplorer(mixture=bool(mixture), figsize=tuple(figsize), dpi=int(dpi), **args)


# --------------------------------------------------------------------------- #
# The latent-space explorers (notebook 06)
# --------------------------------------------------------------------------- #
# How they stay fast. A slider change must be redrawn in a few milliseconds, far less than a
# matplotlib ``savefig`` takes, so the slow part is done once per change of *what* is shown
# (the chosen coordinates, the base code, the picked digit) and the per-move part is plain
# numpy plus PNG encoding (measured by ``benchmarks/widget_latency.py``):
#
# - each map (the decoded grid and the scatter of encoded means) is drawn once by matplotlib,
#   with its axes, ticks and labels, into an RGB array; the array is reduced to a palette of
#   at most 252 colours, and four palette entries are kept for the marker and the ellipse, so
#   what is drawn on top has exact colours and the PNG is an 8-bit palette image (a third of
#   the bytes of an RGB one, and no per-row filtering to choose);
# - the map remembers matplotlib's data → pixel transform (linear axes: one scale and one
#   offset per axis), so the marker is stamped into a copy of the index array with numpy;
# - the PNG's rows are compressed in bands of 16, and only the one or two bands the marker
#   touches are compressed again on a move (``_Map.png``); the rest are reused;
# - the digit is one decoder call, an upscaling by repetition and a grey-level PNG (Pillow).
_MNIST_SIDE = 28
_N_FREE_COLOURS = 252  # palette entries 0..251 hold the rendered map, 252..255 are reserved
_MARKER, _WHITE, _BLACK, _ELLIPSE = 255, 254, 253, 252
_RESERVED_RGB = {_MARKER: (255, 0, 0), _WHITE: (255, 255, 255), _BLACK: (0, 0, 0), _ELLIPSE: (255, 0, 255)}
MARKER_RGB = _RESERVED_RGB[_MARKER]
"""Colour of the current-point marker on the maps (pure red; no map pixel has it otherwise)."""
ELLIPSE_RGB = _RESERVED_RGB[_ELLIPSE]
"""Colour of the picked digit's mean and 1-σ ellipse on the maps (magenta)."""
BASE_OPTIONS = ("zero", "picked digit")
_UNUSED_VARIANCE = 0.01
_N_POSTERIOR = 8
_LABEL_COLOURS = (  # matplotlib's tab10, one colour per digit class
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


# ----- input checks ---------------------------------------------------------- #
def _check_vae(model):
    from .models import VAE

    if not isinstance(model, VAE):
        raise TypeError(
            "model must be a vaelib.models.VAE (an encoder giving the mean and log-variance of q(z|x)), "
            f"got {type(model).__name__}"
        )
    if model.input_dim != _MNIST_SIDE * _MNIST_SIDE:
        raise ValueError(f"the explorers show 28×28 digits; this model's input_dim is {model.input_dim}, not 784")
    if model.latent_dim < 2:
        raise ValueError(
            f"the explorers need at least two latent coordinates; this model has latent_dim={model.latent_dim}"
        )
    return model


def _check_images(images, name: str = "images") -> torch.Tensor:
    """Images as a float32 CPU tensor (N, 784) in [0, 1]; accepts uint8 (0..255) or floats in [0, 1]."""
    from ._helpers import ShapeError
    from .data import to_float

    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of images, got {type(images).__name__}")
    shape = tuple(images.shape)
    side = _MNIST_SIDE
    if not (len(shape) == 3 and shape[1:] == (side, side)) and not (len(shape) == 2 and shape[1] == side * side):
        raise ShapeError(f"{name} must have shape (N, 28, 28) or (N, 784), got {shape}")
    if shape[0] == 0:
        raise ShapeError(f"{name} is empty (shape {shape}); give at least one image")
    return to_float(images.detach().cpu().reshape(shape[0], side, side), flatten=True).contiguous()


def _check_labels(labels, n: int) -> np.ndarray | None:
    from ._helpers import ShapeError

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


def _check_int(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]`` (bools and non-integral numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_coords(coords, latent_dim: int) -> tuple[int, int]:
    try:
        i, j = coords
    except (TypeError, ValueError):
        raise TypeError(f"coords must be a pair of coordinate numbers, got {coords!r}") from None
    i = _check_int("coords[0]", i, 0, latent_dim - 1)
    j = _check_int("coords[1]", j, 0, latent_dim - 1)
    if i == j:
        raise ValueError(f"coords must name two different coordinates, got {coords!r}")
    return i, j


# ----- pictures as PNG bytes --------------------------------------------------- #
def _grey_levels(p) -> np.ndarray:
    """Pixel values in [0, 1] → uint8 grey levels (0 black, 255 white), rounded to nearest."""
    return np.rint(np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a 2-D array by an integer factor."""
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def _resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square 2-D array to ``size`` × ``size``."""
    n = img.shape[0]
    if size % n == 0:
        return _upscale(img, size // n)
    idx = (np.arange(size) * n) // size
    return img[idx[:, None], idx[None, :]]


def _png(img: np.ndarray, palette: bytes | None = None) -> bytes:
    """PNG bytes of a uint8 array: grey levels, or palette indices when ``palette`` (768 bytes) is given.

    zlib level 1: the pictures are small and speed matters more than a few kilobytes.
    """
    im = PILImage.fromarray(img)
    if palette is not None:
        im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_to_array(data: bytes, mode: str | None = None) -> np.ndarray:
    """Decode PNG bytes (for instance an ``ipywidgets.Image``'s value) into a numpy array.

    ``mode`` converts first (``"RGB"``, ``"L"``); by default the stored mode is kept (grey
    images give (H, W) uint8 arrays). Introduced in notebook 06.
    """
    with PILImage.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert(mode) if mode else im.convert(im.mode)).copy()


def _strip(images: np.ndarray, factor: int, gap: int = 4, gap_level: int = 128) -> np.ndarray:
    """Grey digits (k, 28, 28) uint8 side by side, each upscaled by ``factor``, with grey gaps."""
    tiles = [_upscale(im, factor) for im in images]
    h = tiles[0].shape[0]
    out = np.full((h, len(tiles) * (h + gap) - gap), gap_level, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        out[:, k * (h + gap) : k * (h + gap) + h] = tile
    return out


def _image_widget(width: int, height: int | None = None) -> widgets.Image:
    return widgets.Image(format="png", width=int(width), height=int(height if height is not None else width))


def _marker_stamp(r_red: float = 4.5, r_white: float = 6.0, r_black: float = 7.5):
    """Offsets (rows, cols) and palette indices of the marker: a red disc in a white and a black ring."""
    k = int(math.ceil(r_black))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    r = np.hypot(dy, dx)
    keep = r < r_black
    val = np.where(r < r_red, _MARKER, np.where(r < r_white, _WHITE, _BLACK)).astype(np.uint8)
    return dy[keep], dx[keep], val[keep]


_STAMP = _marker_stamp()


class _Map:
    """One map picture: a matplotlib background rendered once, then marker and ellipse drawn with numpy.

    The figure has a fixed size in pixels and square axes at a fixed pixel position, showing
    ``[lo, hi]`` on both axes. :meth:`render` draws the background through ``draw(ax)``,
    reduces it to a palette and reads matplotlib's data → pixel transform; :meth:`to_pixel`
    applies it, :meth:`set_ellipse` draws the picked digit's ellipse into an overlay and
    :meth:`png` stamps the marker into a copy of that overlay and encodes it.
    """

    def __init__(self, lo: float, hi: float, *, width: int, height: int, box: tuple[int, int, int], dpi: int = 100):
        left, bottom, side = box
        self.lo, self.hi = float(lo), float(hi)
        self.width, self.height = int(width), int(height)
        self.fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((left / width, bottom / height, side / width, side / height))
        self.background = np.zeros((self.height, self.width), dtype=np.uint8)
        self._set_overlay(self.background)
        self.palette = bytes(768)
        self._scale = (1.0, 1.0)
        self._offset = (0.0, 0.0)
        self.axes_box = (0, 0, self.width, self.height)

    def render(self, draw) -> None:
        """Clear the axes, let ``draw(ax)`` fill them, and keep the result as the new background."""
        ax = self.ax
        ax.cla()
        draw(ax)
        ax.set_xlim(self.lo, self.hi)
        ax.set_ylim(self.lo, self.hi)
        self.fig.canvas.draw()
        rgb = np.asarray(self.fig.canvas.buffer_rgba())[..., :3]
        quant = PILImage.fromarray(np.ascontiguousarray(rgb)).quantize(
            colors=_N_FREE_COLOURS, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE
        )
        self.background = np.asarray(quant).copy()
        palette = bytearray(768)
        used = bytes(quant.getpalette("RGB"))[: 3 * _N_FREE_COLOURS]
        palette[: len(used)] = used
        for index, colour in _RESERVED_RGB.items():
            palette[3 * index : 3 * index + 3] = bytes(colour)
        self.palette = bytes(palette)
        # display coordinates run from the bottom-left corner; rows of the array from the top
        (x0, y0), (x1, y1) = ax.transData.transform([(self.lo, self.lo), (self.hi, self.hi)])
        self._scale = ((x1 - x0) / (self.hi - self.lo), (y1 - y0) / (self.hi - self.lo))
        self._offset = (x0 - self._scale[0] * self.lo, y0 - self._scale[1] * self.lo)
        c0, r1 = self.to_pixel(self.lo, self.lo)
        c1, r0 = self.to_pixel(self.hi, self.hi)
        self.axes_box = (c0, r0, c1, r1)  # (left, top, right, bottom) pixel columns/rows inside the axes
        self._set_overlay(self.background)

    def to_pixel_float(self, x, y):
        """Data coordinates → (column, row) in the picture, as floats (pixel k spans [k, k+1))."""
        col = self._scale[0] * np.asarray(x, dtype=np.float64) + self._offset[0]
        row = self.height - (self._scale[1] * np.asarray(y, dtype=np.float64) + self._offset[1])
        return col, row

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """Data coordinates → the (column, row) of the pixel that holds that point."""
        col, row = self.to_pixel_float(x, y)
        return int(math.floor(col)), int(math.floor(row))

    def set_ellipse(self, centre, half_axes) -> None:
        """Draw an axis-aligned ellipse and its centre (a small ×) over the background; ``None`` removes it."""
        if centre is None:
            self._set_overlay(self.background)
            return
        out = self.background.copy()
        (cx, cy), (sx, sy) = centre, half_axes
        left, top, right, bottom = self.axes_box
        scale = max(abs(self._scale[0]), abs(self._scale[1]))
        n = int(np.clip(8 * math.pi * scale * max(sx, sy), 64, 4096))
        theta = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
        cols, rows = self.to_pixel_float(cx + sx * np.cos(theta), cy + sy * np.sin(theta))
        c0, r0 = self.to_pixel_float(cx, cy)
        arm = np.arange(-4, 5)
        cols = np.concatenate([cols, c0 + arm, c0 + arm])
        rows = np.concatenate([rows, r0 + arm, r0 - arm])
        cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
        for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):  # two pixels thick
            r, c = rows + dr, cols + dc
            inside = (r >= top) & (r <= bottom) & (c >= left) & (c <= right)
            out[r[inside], c[inside]] = _ELLIPSE
        self._set_overlay(out)

    def _set_overlay(self, picture: np.ndarray) -> None:
        """The picture under the marker; its PNG rows, with the filter byte 0 in front, are kept
        in ``_rows``, and the compressed bands of rows are cached as :meth:`png` needs them."""
        self.overlay = picture
        self._rows = np.zeros((self.height, self.width + 1), dtype=np.uint8)
        self._rows[:, 1:] = picture
        self._bands: list[bytes | None] = [None] * -(-self.height // _PNG_BAND)

    def frame(self, x: float, y: float) -> np.ndarray:
        """The map's palette indices with the marker at data point (x, y)."""
        return self._stamp(self.overlay.copy(), x, y, 0)[0]

    def _stamp(self, frame: np.ndarray, x: float, y: float, col_offset: int):
        """Stamp the marker at (x, y) into ``frame`` (columns shifted by ``col_offset``).

        Returns the frame and the first and last row the marker may touch."""
        col, row = self.to_pixel(x, y)
        dy, dx, val = _STAMP
        r, c = row + dy, col + dx
        inside = (r >= 0) & (r < self.height) & (c >= 0) & (c < self.width)
        frame[r[inside], c[inside] + col_offset] = val[inside]
        return frame, row + int(dy.min()), row + int(dy.max())

    def png(self, x: float, y: float) -> bytes:
        """The map with the marker at data point (x, y), as PNG bytes (an 8-bit palette image).

        The image data of a PNG is one zlib stream of the rows, each led by a filter byte. Here
        it is written as bands of :data:`_PNG_BAND` rows, each band compressed on its own and
        ended by a sync flush (so the bands can be concatenated); the bands the marker does not
        touch are compressed once and reused, so a marker move recompresses one or two bands.
        """
        rows, top, bottom = self._stamp(self._rows.copy(), x, y, 1)
        touched = range(max(top, 0) // _PNG_BAND, min(bottom, self.height - 1) // _PNG_BAND + 1)
        parts = []
        for k in range(len(self._bands)):
            if k in touched:
                parts.append(_deflate_band(rows[k * _PNG_BAND : (k + 1) * _PNG_BAND]))
            else:
                if self._bands[k] is None:
                    self._bands[k] = _deflate_band(self._rows[k * _PNG_BAND : (k + 1) * _PNG_BAND])
                parts.append(self._bands[k])
        stream = b"".join([b"\x78\x01", *parts, b"\x03\x00", struct.pack(">I", zlib.adler32(rows))])
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 3, 0, 0, 0)  # 8-bit palette indices
        return b"".join(
            [_PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"PLTE", self.palette),
             _png_chunk(b"IDAT", stream), _png_chunk(b"IEND", b"")]
        )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BAND = 16  # rows per separately compressed band of a map's PNG


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _deflate_band(rows: np.ndarray) -> bytes:
    """Raw deflate data of some PNG rows (zlib level 1, run-length strategy), ended by a sync flush."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return compressor.compress(np.ascontiguousarray(rows)) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _decode_means(model, z: torch.Tensor) -> np.ndarray:
    """The decoder's mean images for codes z (k, d), as a float32 numpy array (k, 784)."""
    from .models import evaluating

    p = next(model.parameters())
    with torch.inference_mode(), evaluating(model):
        out = model.decode_mean(z.to(device=p.device, dtype=p.dtype))
    return out.float().cpu().numpy()


def _encode(model, x: torch.Tensor, batch: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x) for images x (N, 784), float32 on the CPU, in batches."""
    from .models import evaluating

    p = next(model.parameters())
    mus, logvars = [], []
    with torch.inference_mode(), evaluating(model):
        for start in range(0, x.shape[0], batch):
            mu, logvar = model.encode(x[start : start + batch].to(device=p.device, dtype=p.dtype))
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
    return torch.cat(mus).clone(), torch.cat(logvars).clone()


def _error(text: str) -> str:
    return f'<span style="color:#b00020">{text}</span>'


def _note(text: str) -> str:
    return f'<span style="color:#444">{text}</span>'


def _reports_errors(method):
    """Wrap a widget callback so that no exception escapes it: it is shown in ``message`` instead.

    The exception is also kept in ``last_error`` (``None`` after a callback that succeeded).
    """

    def wrapper(self, *args, **kwargs):
        try:
            out = method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a callback must never raise into the widget machinery
            self.last_error = exc
            self.message.value = _error(f"unexpected error: {type(exc).__name__}: {exc}")
            return None
        self.last_error = None
        return out

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class LatentExplorer(widgets.VBox):
    """The container returned by :func:`latent_explorer` (notebook 06); see there for what it shows.

    Widgets (attributes): ``sliders`` (two ``FloatSlider``), ``image`` (the decoded digit),
    ``grid_map``, ``scatter_map`` (``None`` without images), ``coord_x``, ``coord_y``,
    ``base`` (shown only when the latent size is above 2), ``index``, ``gallery``,
    ``gallery_buttons``, ``input_image``, ``recon_image``, ``posterior_image`` (``None``
    without images), ``prior_button`` and ``message``.

    State: ``coords`` (the two coordinates the sliders move), ``activity`` (the variance of
    each coordinate's mean over the images: near zero for a coordinate the model does not
    use; ``None`` without images), ``picked`` (index of the picked
    test digit, or ``None``), ``posterior_codes`` (the codes drawn from q(z|x) for the strip),
    ``last_latency`` (seconds the last redraw took), ``n_redraws``, ``last_error``.
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
            self._mu, self._logvar = _encode(model, images)
            self.activity = self._mu.var(dim=0) if images.shape[0] > 1 else None
        else:
            self._mu = self._logvar = self.activity = None
        if coords == "active":
            top = torch.argsort(self.activity, descending=True, stable=True)[:2]
            coords = (int(top[0]), int(top[1]))
        self.coords = coords

        # ----- controls ----- #
        self.sliders = [_float_slider(f"z[{k}]", 0.0, -extent, extent, 0.05) for k in coords]
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
        self.image = _image_widget(size)

        # ----- maps ----- #
        half_cell = extent / (grid - 1)
        lo, hi = -extent - half_cell, extent + half_cell
        self._grid = _Map(lo, hi, **self._GRID_FIG)
        self.grid_map = _image_widget(self._GRID_FIG["width"], self._GRID_FIG["height"])
        if images is not None:
            self._scatter = _Map(lo, hi, **self._SCATTER_FIG)
            self.scatter_map = _image_widget(self._SCATTER_FIG["width"], self._SCATTER_FIG["height"])
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
                thumb = _image_widget(56)
                thumb.value = _png(_upscale(self._input_digit(i), 2))
                button = widgets.Button(description=caption, tooltip=f"pick test digit #{i}",
                                        layout=widgets.Layout(width="56px"))
                button.on_click(self._make_gallery_callback(i))
                self.gallery_buttons.append(button)
                items.append(widgets.VBox([thumb, button], layout=widgets.Layout(align_items="center")))
            self.gallery = widgets.HBox(items)
            self.input_image = _image_widget(112)
            self.recon_image = _image_widget(112)
            self.posterior_image = _image_widget(_N_POSTERIOR * (84 + 4) - 4, 84)
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

    def _map(self, which: str) -> _Map:
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
            self.message.value = _error("no test digits were given to the explorer, so none can be picked")
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
    @_reports_errors
    def _on_slider(self, _change) -> None:
        if not self._muted:
            self.redraw()

    @_reports_errors
    def _on_coords(self, _change) -> None:
        new = (self.coord_x.value, self.coord_y.value)
        if new[0] == new[1]:
            self.message.value = _error(
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

    @_reports_errors
    def _on_base(self, change) -> None:
        value = change["new"]
        if value is None:  # set by the prior button: the base is a prior draw
            return
        note = ""
        if value == "picked digit":
            if self.picked is None:
                self.base.value = "zero"  # runs this callback again, with "zero"
                self.message.value = _error("no digit is picked (no images were given): the base code stays zero")
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

    @_reports_errors
    def _on_index(self, change) -> None:
        value = change["new"]
        n = self._images.shape[0]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self.message.value = _error(f"the digit number must be an integer, got {value!r}")
            return
        if not 0 <= value < n:
            self.message.value = _error(
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

    @_reports_errors
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
        self.message.value = _note(f"drew z ~ N(0, I): {coords}{rest}") + (f"<br>{note}" if note else "")
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
        return _note(
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
        return _note(
            f"{names} {'is' if len(unused) == 1 else 'are'} unused by this model: the means of q(z|x) barely move "
            f"over the test digits (variance below {_UNUSED_VARIANCE:g}), so the decoder ignores "
            f"{'it' if len(unused) == 1 else 'them'}. Used coordinates, most varied first: "
            + (", ".join(f"z[{k}]" for k in used) if used else "none")
        )

    def _input_digit(self, index: int) -> np.ndarray:
        return _grey_levels(self._images[index].numpy().reshape(_MNIST_SIDE, _MNIST_SIDE))

    def _show_picked(self, index: int) -> None:
        """Show digit ``index``: its picture, reconstruction, samples from q(z|x), and its ellipse on the maps."""
        self.picked = index
        mu, logvar = self._mu[index], self._logvar[index]
        self.input_image.value = _png(_upscale(self._input_digit(index), 4))
        recon = _decode_means(self.model, mu[None])[0]
        self.recon_image.value = _png(_upscale(_grey_levels(recon.reshape(_MNIST_SIDE, _MNIST_SIDE)), 4))
        generator = torch.Generator().manual_seed(self.seed)  # the same digit always gives the same strip
        eps = torch.randn(_N_POSTERIOR, self.latent_dim, generator=generator)
        self.posterior_codes = mu + torch.exp(0.5 * logvar) * eps
        samples = _decode_means(self.model, self.posterior_codes).reshape(-1, _MNIST_SIDE, _MNIST_SIDE)
        self.posterior_image.value = _png(_strip(_grey_levels(samples), 3))
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
        digits = _decode_means(self.model, z).reshape(n, n, _MNIST_SIDE, _MNIST_SIDE)
        tiled = digits.transpose(0, 2, 1, 3).reshape(n * _MNIST_SIDE, n * _MNIST_SIDE)
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
        digit = _decode_means(self.model, z[None])[0].reshape(_MNIST_SIDE, _MNIST_SIDE)
        self.image.value = _png(_resize_nearest(_grey_levels(digit), self.size))
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

    Introduced in notebook 06. ``model`` is a :class:`vaelib.models.VAE` on 28×28 digits;
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
    model = _check_vae(model)
    x = _check_images(images) if images is not None else None
    if x is None and labels is not None:
        raise ValueError("labels were given without images: give the images they belong to")
    y = _check_labels(labels, x.shape[0]) if x is not None else None
    size = _check_int("size", size, _MNIST_SIDE, 4096)
    ext = _check_in_range("extent", extent, 0.05, 100.0)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    grid = _check_int("grid", grid, 2, 64)
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


class InterpolationExplorer(widgets.VBox):
    """The container returned by :func:`interpolation_explorer` (notebook 06); see there for what it shows.

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
        self._muted = False
        self.t = _float_slider("t", 0.5, 0.0, 1.0, 0.01)
        box = dict(style={"description_width": "5em"}, layout=widgets.Layout(width="12em"))
        self.first = widgets.IntText(value=first, description="digit a #", **box)
        self.second = widgets.IntText(value=second, description="digit b #", **box)
        self.message = widgets.HTML()
        self.latent_image = _image_widget(size)
        self.pixel_image = _image_widget(size)
        self.first_image = _image_widget(size // 2)
        self.second_image = _image_widget(size // 2)
        strip_width = self.STRIP_STEPS * (56 + 4) - 4
        self.latent_strip = _image_widget(strip_width, 56)
        self.pixel_strip = _image_widget(strip_width, 56)
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

    @_reports_errors
    def _on_t(self, _change) -> None:
        if not self._muted:
            self.redraw()

    @_reports_errors
    def _on_pair(self, _change) -> None:
        n = self._images.shape[0]
        bad = [f"#{v}" for v in (self.first.value, self.second.value) if not 0 <= v < n]
        if bad:
            self.message.value = _error(
                f"there is no test digit {' or '.join(bad)}: choose numbers from 0 to {n - 1} "
                f"(still showing #{self.pair[0]} → #{self.pair[1]})"
            )
            return
        self._set_pair(int(self.first.value), int(self.second.value))

    def _set_pair(self, a: int, b: int) -> None:
        if (a, b) != self.pair:
            self.pair = (a, b)
            x = self._images[[a, b]]
            mu, _ = _encode(self.model, x)
            self.mu_first, self.mu_second = mu[0].clone(), mu[1].clone()
            self._x_first, self._x_second = x[0].numpy(), x[1].numpy()
            side = _MNIST_SIDE
            for image, pixels in ((self.first_image, self._x_first), (self.second_image, self._x_second)):
                image.value = _png(_resize_nearest(_grey_levels(pixels.reshape(side, side)), self.size // 2))
            ts = torch.linspace(0.0, 1.0, self.STRIP_STEPS)
            codes = torch.stack([self.latent_code(float(t)) for t in ts])
            decoded = _decode_means(self.model, codes).reshape(-1, side, side)
            blends = np.stack([(1.0 - t) * self._x_first + t * self._x_second for t in ts.tolist()])
            blends = blends.reshape(-1, side, side)
            self.latent_strip.value = _png(_strip(_grey_levels(decoded), 2))
            self.pixel_strip.value = _png(_strip(_grey_levels(blends), 2))
        label = ""
        if self._labels is not None:
            label = f" (labels {int(self._labels[a])} → {int(self._labels[b])})"
        self.message.value = _note(f"digit #{a} → digit #{b}{label}") + (
            _note(": the same digit twice, both paths stay put") if a == b else ""
        )
        self.redraw()

    def redraw(self) -> None:
        """Redraw both blends at the slider's ``t`` (times itself in ``last_latency``)."""
        start = time.perf_counter()
        t = float(self.t.value)
        side = _MNIST_SIDE
        digit = _decode_means(self.model, self.latent_code(t)[None])[0].reshape(side, side)
        self.latent_image.value = _png(_resize_nearest(_grey_levels(digit), self.size))
        blend = ((1.0 - t) * self._x_first + t * self._x_second).reshape(side, side)
        self.pixel_image.value = _png(_resize_nearest(_grey_levels(blend), self.size))
        self.last_latency = time.perf_counter() - start
        self.n_redraws += 1


def interpolation_explorer(
    model, images, labels=None, *, first: int = 0, second: int = 1, size: int = 196
) -> InterpolationExplorer:
    """A slider t from 0 to 1 between two test digits: the straight line in latent space beside the pixel blend.

    Introduced in notebook 06. ``model`` is a :class:`vaelib.models.VAE`; ``images`` the digits
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
    model = _check_vae(model)
    x = _check_images(images)
    y = _check_labels(labels, x.shape[0])
    n = x.shape[0]
    first = _check_int("first", first, 0, n - 1)
    second = _check_int("second", second, 0, n - 1)
    size = _check_int("size", size, _MNIST_SIDE, 4096)
    return InterpolationExplorer(model, x, y, first=first, second=second, size=size)
