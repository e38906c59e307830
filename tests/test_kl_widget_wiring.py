"""The wiring of notebook 01's KL explorer, driven headlessly as a reader's mouse would drive it.

This was a long check cell in notebooks/01_kl_divergence.ipynb; the notebook keeps one short check.
The explorer is built with the notebook's own arguments; each test sets slider values from code and
asserts on what the widget computed, wrote and drew. The expected divergences come from
torch.distributions (Gaussian P and Q), not from vaelib.
"""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal, kl_divergence  # noqa: E402

from vaelib.widgets import kl_explorer  # noqa: E402

NOTEBOOK_ARGS = dict(mu_p=0.0, sigma_p=0.6, mu_q=1.0, sigma_q=1.0, mixture=True, offset_p=2.0, weight_p=0.35)


def kl_normal(mu_1, sigma_1, mu_2, sigma_2):
    """KL(N(mu_1, sigma_1²) ‖ N(mu_2, sigma_2²)) in nats, by torch.distributions in float64."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return kl_divergence(Normal(t(mu_1), t(sigma_1)), Normal(t(mu_2), t(sigma_2))).item()


@pytest.fixture
def explorer():
    return kl_explorer(**NOTEBOOK_ARGS)


def set_gaussians(w, mu_p, sigma_p, mu_q, sigma_q):
    with w.hold():  # several settings at once, one redraw
        w.p_shape.value = "gaussian"
        for name, value in dict(mu_p=mu_p, sigma_p=sigma_p, mu_q=mu_q, sigma_q=sigma_q).items():
            w.sliders[name].value = value


def test_moving_the_sliders_updates_both_divergences_the_text_and_the_picture(explorer):
    png_before, redraws_before = bytes(explorer.image.value), explorer.n_redraws
    set_gaussians(explorer, 0.0, 1.0, 1.0, 0.5)
    want = (kl_normal(0.0, 1.0, 1.0, 0.5), kl_normal(1.0, 0.5, 0.0, 1.0))
    assert explorer.kl["forward"] == pytest.approx(want[0], abs=1e-12)
    assert explorer.kl["reverse"] == pytest.approx(want[1], abs=1e-12)
    assert f"{want[0]:.4f}" in explorer.readout.value and f"{want[1]:.4f}" in explorer.readout.value
    assert f"{want[0] / math.log(2):.4f}" in explorer.readout.value  # and in bits
    assert bytes(explorer.image.value) != png_before
    assert explorer.n_redraws == redraws_before + 1  # hold(): one redraw for four changes


def test_one_slider_moves_and_both_numbers_follow(explorer):
    set_gaussians(explorer, 0.0, 1.0, 1.0, 0.5)
    png_before = bytes(explorer.image.value)
    explorer.sliders["sigma_q"].value = 2.0
    assert explorer.kl["forward"] == pytest.approx(kl_normal(0.0, 1.0, 1.0, 2.0), abs=1e-12)
    assert explorer.kl["reverse"] == pytest.approx(kl_normal(1.0, 2.0, 0.0, 1.0), abs=1e-12)
    assert f"{explorer.kl['forward']:.4f}" in explorer.readout.value
    assert bytes(explorer.image.value) != png_before


def test_the_forward_button_moment_matches_the_mixture(explorer):
    explorer.p_shape.value = "mixture"
    explorer.buttons["forward"].click()
    p = explorer.params
    w, d, s, c = p["weight_p"], p["offset_p"], p["sigma_p"], p["mu_p"]
    # the mixture w N(c − d, s²) + (1 − w) N(c + d, s²) has mean c + d (1 − 2w) and variance s² + 4 w (1 − w) d²
    mean, var = c + d * (1 - 2 * w), s**2 + 4 * w * (1 - w) * d**2
    assert p["mu_q"] == pytest.approx(mean, abs=1e-12)
    assert p["sigma_q"] ** 2 == pytest.approx(var, abs=1e-12)


def test_settings_can_be_put_back_as_they_were(explorer):
    saved, kl_saved = explorer.params, dict(explorer.kl)
    set_gaussians(explorer, 0.5, 1.5, -1.0, 0.8)
    with explorer.hold():
        explorer.p_shape.value = saved["p_shape"]
        for name, slider in explorer.sliders.items():
            slider.value = saved[name]
    assert explorer.params == saved
    assert explorer.kl == pytest.approx(kl_saved, abs=1e-12)
