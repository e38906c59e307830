"""Headless tests of vaelib.widgets: set slider values as a user would and check what is computed and drawn."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy import integrate, stats  # noqa: E402

from vaelib.kl import kl_gaussian  # noqa: E402
from vaelib.widgets import KLExplorer, kl_explorer  # noqa: E402
from vaelib.widgets.drawing import figure_png, new_figure  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER = r"([0-9]+\.[0-9]+)"


def closed_form_pair(mu_p, sigma_p, mu_q, sigma_q):
    """(KL(P‖Q), KL(Q‖P)) from vaelib.kl.kl_gaussian with 1×1 covariances, float64."""
    m = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    c = lambda s: torch.tensor([[s * s]], dtype=torch.float64)  # noqa: E731
    fwd = kl_gaussian(m(mu_p), c(sigma_p), m(mu_q), c(sigma_q)).item()
    rev = kl_gaussian(m(mu_q), c(sigma_q), m(mu_p), c(sigma_p)).item()
    return fwd, rev


def quad_pair(weights, means, sigmas, mu_q, sigma_q):
    """(KL(P‖Q), KL(Q‖P)) for a mixture P and Gaussian Q by scipy.integrate.quad, independently of vaelib."""

    def log_p(x):
        return np.logaddexp.reduce(
            [math.log(w) + stats.norm.logpdf(x, m, s) for w, m, s in zip(weights, means, sigmas)]
        )

    def log_q(x):
        return stats.norm.logpdf(x, mu_q, sigma_q)

    lo = min(min(means) - 15 * max(sigmas), mu_q - 15 * sigma_q)
    hi = max(max(means) + 15 * max(sigmas), mu_q + 15 * sigma_q)
    breaks = sorted([*means, mu_q])
    opts = dict(points=breaks, limit=400, epsabs=1e-12, epsrel=1e-11)
    fwd = integrate.quad(lambda x: math.exp(log_p(x)) * (log_p(x) - log_q(x)), lo, hi, **opts)[0]
    rev = integrate.quad(lambda x: math.exp(log_q(x)) * (log_q(x) - log_p(x)), lo, hi, **opts)[0]
    return fwd, rev


def readout_numbers(w):
    """The four numbers of the readout: forward nats, forward bits, reverse nats, reverse bits."""
    text = re.sub(r"<[^>]+>", "", w.readout.value)
    m = re.search(
        rf"KL\(P‖Q\) = {NUMBER} nats = {NUMBER} bits.*KL\(Q‖P\) = {NUMBER} nats = {NUMBER} bits", text
    )
    assert m, f"readout does not show both divergences: {text!r}"
    return [float(g) for g in m.groups()]


def test_returns_a_container_with_the_documented_parts():
    w = kl_explorer()
    assert isinstance(w, KLExplorer) and isinstance(w, widgets.VBox)
    assert set(w.sliders) == {"mu_p", "sigma_p", "offset_p", "weight_p", "mu_q", "sigma_q"}
    assert all(isinstance(s, widgets.FloatSlider) for s in w.sliders.values())
    assert isinstance(w.image, widgets.Image) and bytes(w.image.value).startswith(PNG_MAGIC)
    assert isinstance(w.readout, widgets.HTML)
    assert set(w.kl) == {"forward", "reverse"}
    assert w.p_shape.value == "gaussian"
    assert w.n_redraws == 1


@pytest.mark.parametrize(
    "settings",
    [
        dict(mu_p=0.0, sigma_p=1.0, mu_q=1.0, sigma_q=0.6),
        dict(mu_p=-2.0, sigma_p=0.3, mu_q=3.5, sigma_q=4.0),
        dict(mu_p=1.25, sigma_p=2.5, mu_q=1.25, sigma_q=2.5),
        dict(mu_p=4.0, sigma_p=0.2, mu_q=-4.0, sigma_q=0.2),
    ],
)
def test_gaussian_kls_equal_the_closed_form_after_moving_sliders(settings):
    w = kl_explorer()
    for name, value in settings.items():
        w.sliders[name].value = value
    want = closed_form_pair(settings["mu_p"], settings["sigma_p"], settings["mu_q"], settings["sigma_q"])
    np.testing.assert_allclose([w.kl["forward"], w.kl["reverse"]], want, rtol=1e-12, atol=1e-15)


def test_moving_a_slider_changes_the_kls_the_readout_and_the_picture():
    w = kl_explorer(mu_p=0.0, sigma_p=1.0, mu_q=1.0, sigma_q=0.6)
    kl_before, png_before, text_before, draws = dict(w.kl), bytes(w.image.value), w.readout.value, w.n_redraws
    w.sliders["sigma_q"].value = 1.7
    assert w.kl["forward"] != kl_before["forward"] and w.kl["reverse"] != kl_before["reverse"]
    np.testing.assert_allclose(
        [w.kl["forward"], w.kl["reverse"]], closed_form_pair(0.0, 1.0, 1.0, 1.7), rtol=1e-12
    )
    assert bytes(w.image.value) != png_before and bytes(w.image.value).startswith(PNG_MAGIC)
    assert w.readout.value != text_before
    assert w.n_redraws == draws + 1


def test_readout_shows_both_values_in_nats_and_bits():
    w = kl_explorer(mu_p=0.5, sigma_p=1.5, mu_q=-1.0, sigma_q=0.8)
    fwd_nats, fwd_bits, rev_nats, rev_bits = readout_numbers(w)
    assert fwd_nats == pytest.approx(w.kl["forward"], abs=5e-5)
    assert rev_nats == pytest.approx(w.kl["reverse"], abs=5e-5)
    assert fwd_bits == pytest.approx(w.kl["forward"] / math.log(2), abs=5e-5)
    assert rev_bits == pytest.approx(w.kl["reverse"] / math.log(2), abs=5e-5)
    assert fwd_nats != rev_nats  # the asymmetry is visible


@pytest.mark.parametrize(
    "settings",
    [
        dict(mu_p=0.0, sigma_p=0.7, offset_p=2.5, weight_p=0.5, mu_q=0.3, sigma_q=1.2),
        dict(mu_p=1.0, sigma_p=0.4, offset_p=3.0, weight_p=0.2, mu_q=-2.0, sigma_q=0.3),
        dict(mu_p=-1.0, sigma_p=2.0, offset_p=0.5, weight_p=0.9, mu_q=2.0, sigma_q=5.0),
    ],
)
def test_mixture_kls_match_quadrature(settings):
    w = kl_explorer(mixture=True)
    for name, value in settings.items():
        w.sliders[name].value = value
    s = settings
    weights = (s["weight_p"], 1 - s["weight_p"])
    means = (s["mu_p"] - s["offset_p"], s["mu_p"] + s["offset_p"])
    want = quad_pair(weights, means, (s["sigma_p"], s["sigma_p"]), s["mu_q"], s["sigma_q"])
    np.testing.assert_allclose([w.kl["forward"], w.kl["reverse"]], want, rtol=1e-8, atol=1e-10)


def test_toggle_switches_p_between_gaussian_and_mixture():
    w = kl_explorer(mu_p=0.0, sigma_p=0.7, mu_q=2.0, sigma_q=0.7, offset_p=2.0)
    assert w.sliders["offset_p"].disabled and w.sliders["weight_p"].disabled
    gaussian_kl = dict(w.kl)
    w.sliders["offset_p"].value = 1.0  # has no effect on a Gaussian P
    assert w.kl == gaussian_kl
    w.p_shape.value = "mixture"
    assert not w.sliders["offset_p"].disabled and not w.sliders["weight_p"].disabled
    want = quad_pair((0.5, 0.5), (-1.0, 1.0), (0.7, 0.7), 2.0, 0.7)
    np.testing.assert_allclose([w.kl["forward"], w.kl["reverse"]], want, rtol=1e-8)
    w.p_shape.value = "gaussian"
    assert w.kl == pytest.approx(gaussian_kl, rel=1e-14)


def test_scale_sliders_cannot_reach_zero_or_leave_their_range():
    w = kl_explorer()
    for name in ("sigma_p", "sigma_q"):
        assert w.sliders[name].min > 0
        w.sliders[name].value = 0.0
        assert w.sliders[name].value == w.sliders[name].min > 0
        w.sliders[name].value = -3.0
        assert w.sliders[name].value == w.sliders[name].min
    assert all(math.isfinite(v) and v >= 0 for v in w.kl.values())
    np.testing.assert_allclose(
        [w.kl["forward"], w.kl["reverse"]],
        closed_form_pair(0.0, w.sliders["sigma_p"].min, 1.0, w.sliders["sigma_q"].min),
        rtol=1e-12,
    )
    w.sliders["sigma_q"].value = 1e9
    assert w.sliders["sigma_q"].value == w.sliders["sigma_q"].max
    assert all(math.isfinite(v) for v in w.kl.values())


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(sigma_p=0.0), ValueError),
        (dict(sigma_q=-1.0), ValueError),
        (dict(mu_q=float("nan")), ValueError),
        (dict(mu_p=100.0), ValueError),
        (dict(weight_p=1.0), ValueError),
        (dict(offset_p=-0.5), ValueError),
        (dict(sigma_q="wide"), TypeError),
        (dict(mu_p="1.5"), TypeError),  # float() would read these two as numbers
        (dict(mu_q=True), TypeError),
    ],
)
def test_invalid_arguments_raise(kwargs, error):
    with pytest.raises(error):
        kl_explorer(**kwargs)


def test_forward_fit_button_moment_matches_and_redraws_once():
    w = kl_explorer(mu_p=0.5, sigma_p=0.6, mixture=True, offset_p=2.0, weight_p=0.3, mu_q=-3.0, sigma_q=0.5)
    draws = w.n_redraws
    w.buttons["forward"].click()
    assert w.n_redraws == draws + 1
    mean = 0.3 * (0.5 - 2.0) + 0.7 * (0.5 + 2.0)
    var = 0.6**2 + 4 * 0.3 * 0.7 * 2.0**2
    assert w.sliders["mu_q"].value == pytest.approx(mean, abs=1e-12)
    assert w.sliders["sigma_q"].value == pytest.approx(math.sqrt(var), abs=1e-12)
    best = w.kl["forward"]
    # moving Q away from the moment-matched Gaussian only increases the forward KL
    for name, delta in [("mu_q", 0.05), ("mu_q", -0.05), ("sigma_q", 0.05), ("sigma_q", -0.05)]:
        w.sliders[name].value += delta
        assert w.kl["forward"] > best
        w.sliders[name].value -= delta


def test_reverse_fit_button_seeks_the_nearest_mode():
    # two well-separated equal bumps: Q on one bump has KL(Q‖P) → log 2
    w = kl_explorer(mu_p=0.0, sigma_p=0.5, mixture=True, offset_p=3.0, weight_p=0.5, mu_q=1.0, sigma_q=1.0)
    w.buttons["reverse"].click()
    assert w.sliders["mu_q"].value == pytest.approx(3.0, abs=1e-3)
    assert w.sliders["sigma_q"].value == pytest.approx(0.5, abs=1e-3)
    assert w.kl["reverse"] == pytest.approx(math.log(2), abs=1e-5)
    mode_seeking = w.kl["reverse"]
    w.fit_forward()
    assert w.kl["reverse"] > mode_seeking  # the moment-matched Q is worse in reverse KL
    w.sliders["mu_q"].value, w.sliders["sigma_q"].value = -1.0, 1.0
    w.fit_reverse()
    assert w.sliders["mu_q"].value == pytest.approx(-3.0, abs=1e-3)


def test_two_explorers_do_not_share_state():
    a = kl_explorer(mu_q=1.0)
    b = kl_explorer(mu_q=1.0)
    kl_b, png_b = dict(b.kl), bytes(b.image.value)
    a.sliders["mu_q"].value = -2.0
    a.p_shape.value = "mixture"
    assert b.kl == kl_b and bytes(b.image.value) == png_b and b.p_shape.value == "gaussian"


def test_figure_png_is_deterministic():
    fig, (ax,) = new_figure((3, 2), 50)
    ax.plot([0, 1], [1, 0])
    first, second = figure_png(fig), figure_png(fig)
    assert first.startswith(PNG_MAGIC) and first == second


# ---------------------------------------------------------------- found by mutation testing
def test_arguments_at_the_ends_of_their_ranges_are_accepted():
    low = kl_explorer(mu_p=-4.0, sigma_p=0.2, mu_q=-4.0, sigma_q=0.2, mixture=True, offset_p=0.0, weight_p=0.05)
    high = kl_explorer(mu_p=4.0, sigma_p=5.0, mu_q=4.0, sigma_q=5.0, mixture=True, offset_p=3.0, weight_p=0.95)
    assert {k: v for k, v in low.params.items() if k != "p_shape"} == pytest.approx(
        {"mu_p": -4.0, "sigma_p": 0.2, "offset_p": 0.0, "weight_p": 0.05, "mu_q": -4.0, "sigma_q": 0.2}
    )
    assert {k: v for k, v in high.params.items() if k != "p_shape"} == pytest.approx(
        {"mu_p": 4.0, "sigma_p": 5.0, "offset_p": 3.0, "weight_p": 0.95, "mu_q": 4.0, "sigma_q": 5.0}
    )
    # P and Q the same Gaussian at either end of the ranges: both divergences vanish
    for w in (low, high):
        w.p_shape.value = "gaussian"
        assert w.kl["forward"] == pytest.approx(0.0, abs=1e-12) and w.kl["reverse"] == pytest.approx(0.0, abs=1e-12)


def test_forward_fit_reaches_wide_scales_and_clips_only_at_the_slider_range():
    w = kl_explorer(mu_p=-1.0, sigma_p=4.5, mu_q=2.0, sigma_q=0.5)
    assert w.fit_forward() == pytest.approx((-1.0, 4.5), abs=1e-12)
    assert w.kl["forward"] == pytest.approx(0.0, abs=1e-12)
    # a mixture wider than the largest scale: Q's scale stops at the end of its slider, 5
    w.p_shape.value = "mixture"
    w.sliders["offset_p"].value = 3.0
    assert w.fit_forward()[1] == w.sliders["sigma_q"].max == 5.0
