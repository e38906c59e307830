"""The KL explorer of notebook 01: two 1-D distributions P and Q, both KL divergences, redrawn live.

P is a Gaussian or a two-bump Gaussian mixture, Q a Gaussian. Every slider move recomputes
KL(P‖Q) and KL(Q‖P) and redraws both densities with the two pointwise integrands. The
widget is a ``VBox`` subclass whose callbacks read only its own sliders, never notebook
globals, so a later cell that reuses a variable name cannot change what a slider does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import torch
from scipy import optimize
from scipy.integrate import trapezoid
from scipy.special import logsumexp

from .. import kl
from .common import check_in_range, float_slider
from .drawing import figure_png, new_figure

__all__ = ["KLExplorer", "kl_explorer"]

_LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


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
            "mu_p": float_slider("P: centre μ", mu_p, *_MEAN_RANGE, 0.05),
            "sigma_p": float_slider("P: scale σ", sigma_p, *_SCALE_RANGE, 0.05),
            "offset_p": float_slider("P: bumps at μ±", offset_p, *_OFFSET_RANGE, 0.05),
            "weight_p": float_slider("P: left weight", weight_p, *_WEIGHT_RANGE, 0.05),
            "mu_q": float_slider("Q: mean μ", mu_q, *_MEAN_RANGE, 0.05),
            "sigma_q": float_slider("Q: scale σ", sigma_q, *_SCALE_RANGE, 0.05),
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
        self._fig, self._axes = new_figure(
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
            fwd = kl.kl_diag_gaussians(t(means[0]), t(lv_p), t(mu_q), t(lv_q))
            rev = kl.kl_diag_gaussians(t(mu_q), t(lv_q), t(means[0]), t(lv_p))
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
        self.image.value = figure_png(self._fig)
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
        mu_p=check_in_range("mu_p", mu_p, *_MEAN_RANGE),
        sigma_p=check_in_range("sigma_p", sigma_p, *_SCALE_RANGE),
        mu_q=check_in_range("mu_q", mu_q, *_MEAN_RANGE),
        sigma_q=check_in_range("sigma_q", sigma_q, *_SCALE_RANGE),
        offset_p=check_in_range("offset_p", offset_p, *_OFFSET_RANGE),
        weight_p=check_in_range("weight_p", weight_p, *_WEIGHT_RANGE),
    )
    return KLExplorer(mixture=bool(mixture), figsize=tuple(figsize), dpi=int(dpi), **args)
