"""Headless tests of the latent-space explorers of notebook 07, on the shipped VAEs and real MNIST digits.

Every test sets widget values as a reader would (slider values, digit numbers, button clicks)
and checks what was drawn: the PNG bytes are decoded with Pillow and compared with the
decoder's output computed here, independently of the widget code.
"""

import io
import struct
import zlib

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from PIL import Image

import vaelib
from vaelib.data import load_mnist
from vaelib.widgets import (
    ELLIPSE_RGB,
    MARKER_RGB,
    InterpolationExplorer,
    LatentExplorer,
    interpolation_explorer,
    latent_explorer,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_SMALL = 2000  # most tests use the first 2,000 test digits; the index-range test uses all 10,000


# --------------------------------------------------------------------------- #
# Fixtures: each model and the test set are loaded once for this module
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def test_set(mnist_dir):
    return load_mnist("test", root=mnist_dir)


@pytest.fixture(scope="module")
def small(test_set):
    x, y = test_set
    return x[:N_SMALL], y[:N_SMALL]


@pytest.fixture(scope="module")
def vae2():
    return vaelib.load_pretrained(2)


@pytest.fixture(scope="module")
def vae50():
    return vaelib.load_pretrained(50)


# --------------------------------------------------------------------------- #
# Independent helpers
# --------------------------------------------------------------------------- #
def decoded(model, z) -> np.ndarray:
    """The decoder's mean image for one code, as grey levels 0..255 (float64, 28×28)."""
    with torch.no_grad():
        p = model.decode_mean(torch.as_tensor(z, dtype=torch.float32).reshape(1, -1))
    return np.rint(p.reshape(28, 28).numpy().astype(np.float64) * 255.0)


def upscaled(img: np.ndarray, size: int) -> np.ndarray:
    assert size % img.shape[0] == 0
    f = size // img.shape[0]
    return np.kron(img, np.ones((f, f)))


def encoding(model, image):
    """(mu, sigma) of q(z|x) for one uint8 image, computed here."""
    with torch.no_grad():
        mu, logvar = model.encode(image.reshape(1, 784).float() / 255.0)
    return mu[0], torch.exp(0.5 * logvar[0])


def grey(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(bytes(png))) as im:
        return np.asarray(im.convert("L")).astype(np.int64)


def rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(bytes(png))) as im:
        return np.asarray(im.convert("RGB")).astype(np.int64)


def pixels_of_colour(png: bytes, colour) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels of exactly that colour."""
    return np.nonzero(np.all(rgb(png) == np.array(colour), axis=-1))


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max())


def all_children(widget):
    out = [widget]
    for child in getattr(widget, "children", ()):
        out.extend(all_children(child))
    return out


def shown(container, widget) -> bool:
    return any(w is widget for w in all_children(container))


def expected_pixel(w, which, x, y):
    """Where (x, y) must land: a linear map from the map's latent limits onto its axes box."""
    lo, hi = w.map_limits
    left, top, right, bottom = w.axes_box(which)
    col = left + (x - lo) / (hi - lo) * (right - left)
    row = bottom - (y - lo) / (hi - lo) * (bottom - top)
    return col, row


# --------------------------------------------------------------------------- #
# The latent explorer
# --------------------------------------------------------------------------- #
def test_latent2_explorer_has_the_documented_parts(vae2, small):
    x, y = small
    w = latent_explorer(vae2, x, y)
    assert isinstance(w, LatentExplorer) and isinstance(w, widgets.VBox)
    assert len(w.sliders) == 2 and all(isinstance(s, widgets.FloatSlider) for s in w.sliders)
    for s in w.sliders:
        assert (s.min, s.max, s.step, s.continuous_update) == (-3.0, 3.0, 0.05, True)
        assert shown(w, s)
    assert w.coords == (0, 1)
    for image in (w.image, w.grid_map, w.scatter_map, w.recon_image, w.posterior_image):
        assert isinstance(image, widgets.Image) and bytes(image.value).startswith(PNG_MAGIC) and shown(w, image)
    assert w.pixels().shape == (280, 280) and w.pixels().dtype == np.uint8
    assert isinstance(w.prior_button, widgets.Button) and shown(w, w.prior_button)
    assert isinstance(w.index, widgets.IntText) and isinstance(w.message, widgets.HTML)
    # the coordinate and base choices exist but are not shown for a 2-D model
    assert isinstance(w.coord_x, widgets.Dropdown) and not shown(w, w.coord_x) and not shown(w, w.base)
    z = w.code()
    assert z.dtype == torch.float32 and z.shape == (2,) and torch.equal(z, torch.zeros(2))
    # one gallery button per digit class, each for a test digit of that class
    assert len(w.gallery_buttons) == 10
    assert [int(y[i]) for i in w.gallery_indices] == list(range(10))
    assert w.last_error is None and 0 < w.last_latency < 5


@pytest.mark.parametrize("latent", [2, 50])
def test_slider_redraws_the_decoded_digit(latent, vae2, vae50, small):
    model = {2: vae2, 50: vae50}[latent]
    x, y = small
    w = latent_explorer(model, x, y, coords="active" if latent == 50 else (0, 1))
    before, redraws = bytes(w.image.value), w.n_redraws
    for value_x, value_y in [(1.3, 0.35), (1.1, -0.7), (-2.2, 2.05)]:  # six changes of value
        w.sliders[0].value = value_x
        w.sliders[1].value = value_y
        z = w.code()
        assert z[w.coords[0]].item() == pytest.approx(value_x) and z[w.coords[1]].item() == pytest.approx(value_y)
        assert max_diff(w.pixels(), upscaled(decoded(model, z), 280)) <= 1
        assert bytes(w.image.value) != before
        before = bytes(w.image.value)
    assert w.n_redraws == redraws + 6  # one redraw per slider change
    assert w.last_error is None and np.isfinite(w.last_latency)


def test_marker_sits_at_the_slider_coordinates(vae2, small):
    x, y = small
    w = latent_explorer(vae2, x, y)
    w.pick(3)  # moves the marker to digit 3's mean; positions are set below
    for value_x, value_y in [(0.0, 0.0), (-3.0, 3.0), (3.0, -3.0), (1.25, 0.4), (-0.6, -2.35)]:
        w.sliders[0].value = value_x
        w.sliders[1].value = value_y
        assert w.marker == pytest.approx((value_x, value_y))
        for which, image in (("grid", w.grid_map), ("scatter", w.scatter_map)):
            col, row = w.marker_pixel(which)
            want_col, want_row = expected_pixel(w, which, value_x, value_y)
            assert abs(col - want_col) <= 1 and abs(row - want_row) <= 1
            picture = rgb(image.value)
            assert tuple(picture[row, col]) == MARKER_RGB
            rows, cols = pixels_of_colour(image.value, MARKER_RGB)
            assert 30 < rows.size < 120  # one small disc, nothing else of that colour
            assert abs(cols.mean() - col) <= 1 and abs(rows.mean() - row) <= 1


def test_map_axes_are_where_the_marker_transform_says(vae2, small):
    """The scatter's frame (black axes lines on white) lies on the box the data → pixel map uses."""
    x, y = small
    w = latent_explorer(vae2, x, y)
    picture = grey(w.scatter_map.value)
    left, top, right, bottom = w.axes_box("scatter")
    inner = slice(top + 10, bottom - 10)

    def dark_fraction(col):
        return float((picture[inner, col] < 80).mean())

    assert max(dark_fraction(c) for c in range(left - 2, left + 2)) > 0.95
    assert max(dark_fraction(c) for c in range(right - 1, right + 3)) > 0.95
    assert dark_fraction(left + 6) < 0.5 and dark_fraction(right - 6) < 0.5


def test_map_pngs_are_well_formed(vae2, small):
    """The maps are 8-bit palette PNGs: every chunk's CRC, the zlib stream and its checksum
    must be right, and the unfiltered rows must be the picture Pillow decodes."""
    x, y = small
    w = latent_explorer(vae2, x, y)
    w.sliders[0].value, w.sliders[1].value = 1.05, -2.3
    for image in (w.grid_map, w.scatter_map):
        data = bytes(image.value)
        assert data.startswith(PNG_MAGIC)
        pos, chunks = 8, {}
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
            (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
            assert crc == zlib.crc32(kind + body), kind
            chunks.setdefault(kind, []).append(body)
            pos += 12 + length
        assert list(chunks) == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]
        width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
        assert (depth, colour_type) == (8, 3)
        raw = zlib.decompress(b"".join(chunks[b"IDAT"]))  # checks the stream's adler32 too
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
        assert not rows[:, 0].any()  # filter type 0 on every row
        with Image.open(io.BytesIO(data)) as im:
            assert np.array_equal(np.asarray(im), rows[:, 1:])


def test_grid_map_shows_the_decoded_digit_of_each_cell(vae2):
    """Cells of the grid map, cut out at the place the axes say, look like the digit decoded there."""
    w = latent_explorer(vae2)  # no images: no scatter, no ellipse; the marker stays at the centre cell
    assert w.scatter_map is None and w.index is None and w.grid_size == 15
    picture = grey(w.grid_map.value)
    values = np.linspace(-3.0, 3.0, 15)
    spacing = values[1] - values[0]
    for k, l in [(1, 12), (13, 2), (2, 1), (11, 13)]:
        cx, cy = values[k], values[l]
        c0, r1 = expected_pixel(w, "grid", cx - spacing / 2, cy - spacing / 2)
        c1, r0 = expected_pixel(w, "grid", cx + spacing / 2, cy + spacing / 2)
        cell = picture[round(r0) + 1 : round(r1) - 1, round(c0) + 1 : round(c1) - 1]
        cell = np.asarray(Image.fromarray(cell.astype(np.uint8)).resize((26, 26), Image.BILINEAR), dtype=np.float64)

        def distance(zx, zy, cell=cell):
            return float(np.mean((cell - decoded(vae2, [zx, zy])[1:27, 1:27]) ** 2))

        right = distance(cx, cy)
        assert right < 0.5 * min(distance(cx, -cy), distance(-cx, cy), distance(cy, cx)), (k, l)


def test_latent50_sliders_move_the_chosen_coordinates(vae50, small):
    x, y = small
    active = latent_explorer(vae50, x, y)  # the default starts on the two most active coordinates
    top = [int(k) for k in torch.argsort(active.activity, descending=True)[:2]]
    assert active.coords == tuple(top) and "unused" not in active.message.value
    idle = tuple(int(k) for k in torch.argsort(active.activity)[:2])  # the two least active coordinates
    w = latent_explorer(vae50, x, y, coords=idle)
    for control in (w.coord_x, w.coord_y, w.base):
        assert shown(w, control)
    assert w.base.options == ("zero", "picked digit") and w.base.value == "zero"
    # the two are unused by this model (29 of its 50 coordinates are), and the message says so
    assert w.activity[idle[0]] < 0.01 and w.activity[idle[1]] < 0.01 and "unused" in w.message.value
    a, b = (int(k) for k in torch.argsort(w.activity, descending=True)[:2])
    grid_before = bytes(w.grid_map.value)
    w.coord_x.value, w.coord_y.value = a, b
    assert w.coords == (a, b) and "unused" not in w.message.value
    assert [s.description for s in w.sliders] == [f"z[{a}]", f"z[{b}]"]
    assert bytes(w.grid_map.value) != grid_before  # the grid is redrawn over the new coordinates
    image_before = bytes(w.image.value)
    w.sliders[0].value = 1.5
    assert torch.nonzero(w.code() != w.base_code()).flatten().tolist() == [a]
    w.sliders[1].value = -1.0
    assert torch.nonzero(w.code() != w.base_code()).flatten().tolist() == sorted([a, b])
    assert bytes(w.image.value) != image_before
    assert max_diff(w.pixels(), upscaled(decoded(vae50, w.code()), 280)) <= 1


def test_base_picked_digit_is_the_encoding_mean(vae50, small):
    x, y = small
    w = latent_explorer(vae50, x, y, coords="active")
    w.base.value = "picked digit"
    w.pick(7)
    mu, _ = encoding(vae50, x[7])
    assert torch.all(mu[list(w.coords)].abs() <= 3.0)  # inside the sliders' range: nothing clipped
    torch.testing.assert_close(w.base_code(), mu, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.code(), mu, atol=1e-5, rtol=0)
    recon = decoded(vae50, mu)
    assert max_diff(w.pixels(), upscaled(recon, 280)) <= 1
    assert max_diff(grey(w.recon_image.value), upscaled(recon, 112)) <= 1
    assert max_diff(grey(w.input_image.value), upscaled(x[7].numpy(), 112)) <= 1
    # the other coordinates stay at the digit's mean while the sliders move
    w.sliders[0].value = -2.0
    rest = [k for k in range(50) if k != w.coords[0]]
    torch.testing.assert_close(w.code()[rest], mu[rest], atol=1e-5, rtol=0)
    # back to zero: the base is zero and the sliders return to the origin
    w.base.value = "zero"
    assert torch.equal(w.base_code(), torch.zeros(50)) and torch.equal(w.code(), torch.zeros(50))


def test_gallery_buttons_pick_a_digit_of_their_class(vae2, small):
    x, y = small
    w = latent_explorer(vae2, x, y)
    w.gallery_buttons[4].click()
    index = w.gallery_indices[4]
    assert w.index.value == index and w.picked == index and int(y[index]) == 4
    mu, _ = encoding(vae2, x[index])
    assert w.marker == pytest.approx(tuple(mu.tolist()), abs=1e-5)  # the sliders moved to the mean
    assert max_diff(grey(w.recon_image.value), upscaled(decoded(vae2, mu), 112)) <= 1


def test_picked_digit_mean_and_one_sigma_ellipse_on_both_maps(vae50, small):
    x, y = small
    # a narrow window (±0.5) on the two most used coordinates, where σ is about 0.05..0.2:
    # the ellipse is tens of pixels wide, and drawn with the variance instead of σ it would not be
    w = latent_explorer(vae50, x, y, extent=0.5, coords="active")
    i, j = w.coords
    with torch.no_grad():
        mus, _ = vae50.encode(x.reshape(-1, 784).float() / 255.0)
    index = int(torch.nonzero((mus[:, i].abs() < 0.15) & (mus[:, j].abs() < 0.15))[0])
    w.pick(index)
    mu, sigma = encoding(vae50, x[index])
    mx, my, sx, sy = float(mu[i]), float(mu[j]), float(sigma[i]), float(sigma[j])
    assert 0.02 < sx < 0.3 and 0.02 < sy < 0.3
    w.sliders[0].value, w.sliders[1].value = -0.45, -0.45  # the marker out of the way
    for which, image in (("grid", w.grid_map), ("scatter", w.scatter_map)):
        rows, cols = pixels_of_colour(image.value, ELLIPSE_RGB)
        c_lo, r_hi = expected_pixel(w, which, mx - sx, my - sy)
        c_hi, r_lo = expected_pixel(w, which, mx + sx, my + sy)
        assert abs(cols.min() - c_lo) <= 2 and abs(cols.max() - 1 - c_hi) <= 2
        assert abs(rows.min() - r_lo) <= 2 and abs(rows.max() - 1 - r_hi) <= 2
        # the centre is marked: magenta pixels on the mean's row and column near the centre
        c0, r0 = expected_pixel(w, which, mx, my)
        near = (np.abs(cols - c0) <= 3) & (np.abs(rows - r0) <= 3)
        assert near.sum() >= 8


def test_posterior_samples_are_decoded_and_reproducible(vae2, small):
    x, y = small
    w = latent_explorer(vae2, x, y, seed=3)
    w.pick(11)
    mu, sigma = encoding(vae2, x[11])
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(w.posterior_codes, mu + sigma * eps, atol=1e-5, rtol=0)
    strip = grey(w.posterior_image.value)
    assert strip.shape == (84, 8 * 88 - 4)
    for k in (0, 5):
        tile = strip[:, k * 88 : k * 88 + 84]
        assert max_diff(tile, upscaled(decoded(vae2, w.posterior_codes[k]), 84)) <= 1
    again = latent_explorer(vae2, x, y, seed=3)
    again.pick(11)
    assert bytes(again.posterior_image.value) == bytes(w.posterior_image.value)
    w.pick(12)
    assert bytes(again.posterior_image.value) != bytes(w.posterior_image.value)


@pytest.mark.parametrize("latent", [2, 50])
def test_prior_button_draws_a_reproducible_code(latent, vae2, vae50, small):
    model = {2: vae2, 50: vae50}[latent]
    x, y = small
    w = latent_explorer(model, x, y, seed=5)
    code_before, image_before = w.code(), bytes(w.image.value)
    w.prior_button.click()
    draw = torch.randn(latent, generator=torch.Generator().manual_seed(5))
    expected = draw.clone() if latent > 2 else torch.zeros(2)
    expected[list(w.coords)] = draw[list(w.coords)].clamp(-3.0, 3.0)
    torch.testing.assert_close(w.code(), expected)
    assert not torch.equal(w.code(), code_before) and bytes(w.image.value) != image_before
    assert "N(0, I)" in w.message.value and w.last_error is None
    assert max_diff(w.pixels(), upscaled(decoded(model, w.code()), 280)) <= 1
    if latent > 2:
        assert w.base.value is None  # the base is the draw, neither of the two options
        torch.testing.assert_close(w.base_code(), draw)
    # the same seed gives the same draws, another seed other ones
    same, other = latent_explorer(model, seed=5), latent_explorer(model, seed=6)
    same.prior_button.click()
    other.prior_button.click()
    assert torch.equal(same.code(), w.code()) and not torch.equal(other.code(), w.code())
    w.prior_button.click()
    assert not torch.equal(w.code(), same.code())  # the next press draws a new code


def test_prior_draw_beyond_the_range_is_clipped_with_a_message(vae2):
    w = latent_explorer(vae2, extent=0.5, seed=0)
    draw = torch.randn(2, generator=torch.Generator().manual_seed(0))
    assert draw.abs().max() > 0.5  # this seed draws outside ±0.5
    w.prior_button.click()
    torch.testing.assert_close(w.code(), draw.clamp(-0.5, 0.5))
    assert "beyond the slider range" in w.message.value


def test_invalid_choices_give_a_message_not_an_exception(vae2, vae50, test_set):
    x, y = test_set
    w = latent_explorer(vae2, x, y)
    w.pick(5)
    for bad in (-1, 10000):
        w.index.value = bad  # would raise here if a callback let an exception escape
        assert f"#{bad}" in w.message.value and "0 to 9999" in w.message.value
        assert w.picked == 5 and w.last_error is None
    w.index.value = 9999
    assert w.picked == 9999 and w.message.value == ""

    v = latent_explorer(vae50)
    v.sliders[0].value = 0.8
    code = v.code()
    v.coord_y.value = v.coord_x.value
    assert "different coordinates" in v.message.value and v.last_error is None
    assert v.coords == (0, 1) and torch.equal(v.code(), code)
    v.coord_x.value = 7  # now the pair (7, 0) is valid again
    assert v.coords == (7, 0) and "different" not in v.message.value
    # with no images there is nothing to pick: a message, not an exception
    v.base.value = "picked digit"
    assert v.base.value == "zero" and "no digit is picked" in v.message.value and v.last_error is None


# --------------------------------------------------------------------------- #
# The interpolation explorer
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("latent", [2, 50])
def test_interpolation_endpoints_and_midpoint(latent, vae2, vae50, small):
    model = {2: vae2, 50: vae50}[latent]
    x, y = small
    w = interpolation_explorer(model, x, y, first=0, second=1)
    assert isinstance(w, InterpolationExplorer) and isinstance(w.t, widgets.FloatSlider)
    assert (w.t.min, w.t.max, w.t.continuous_update) == (0.0, 1.0, True)
    mu_a, _ = encoding(model, x[0])
    mu_b, _ = encoding(model, x[1])
    w.t.value = 0.0
    assert max_diff(w.pixels("latent"), upscaled(decoded(model, mu_a), w.size)) <= 1
    assert max_diff(w.pixels("pixel"), upscaled(x[0].numpy(), w.size)) <= 1
    w.t.value = 1.0
    assert max_diff(w.pixels("latent"), upscaled(decoded(model, mu_b), w.size)) <= 1
    assert max_diff(w.pixels("pixel"), upscaled(x[1].numpy(), w.size)) <= 1
    w.t.value = 0.5
    average = np.rint(0.5 * x[0].numpy().astype(np.float64) + 0.5 * x[1].numpy())
    assert max_diff(w.pixels("pixel"), upscaled(average, w.size)) <= 1
    assert max_diff(w.pixels("latent"), upscaled(decoded(model, 0.5 * (mu_a + mu_b)), w.size)) <= 1
    # the two paths differ halfway: that is what the widget shows
    assert np.abs(w.pixels("latent").astype(int) - w.pixels("pixel")).mean() > 10
    # other endpoints: the pictures follow
    w.second.value = 7
    mu_c, _ = encoding(model, x[7])
    w.t.value = 1.0
    assert w.pair == (0, 7)
    assert max_diff(w.pixels("latent"), upscaled(decoded(model, mu_c), w.size)) <= 1


def test_interpolation_out_of_range_digit_gives_a_message(vae2, small):
    x, y = small
    w = interpolation_explorer(vae2, x, y, first=3, second=4)
    w.t.value = 0.25
    shown_before = bytes(w.latent_image.value)
    w.first.value = N_SMALL
    assert f"#{N_SMALL}" in w.message.value and w.pair == (3, 4) and w.last_error is None
    w.second.value = -1
    assert "#-1" in w.message.value and w.pair == (3, 4)
    assert bytes(w.latent_image.value) == shown_before
    w.first.value, w.second.value = 5, 6
    assert w.pair == (5, 6) and "#5" in w.message.value


# --------------------------------------------------------------------------- #
# The builders refuse what they cannot show
# --------------------------------------------------------------------------- #
def test_builders_reject_bad_inputs(vae2, small):
    x, y = small
    x, y = x[:20], y[:20]
    autoencoder = vaelib.load_pretrained(20, kind="autoencoder")
    with pytest.raises(TypeError, match="VAE"):
        latent_explorer(autoencoder, x, y)
    with pytest.raises(TypeError, match="VAE"):
        interpolation_explorer("a model", x)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\) or \(N, 784\)"):
        latent_explorer(vae2, x[:, :27, :27])
    with pytest.raises(ValueError, match=r"\(N, 28, 28\) or \(N, 784\)"):
        interpolation_explorer(vae2, x.reshape(20, 2, 392))
    with pytest.raises(ValueError, match="one label per image"):
        latent_explorer(vae2, x, y[:19])
    with pytest.raises(ValueError, match="one label per image"):
        interpolation_explorer(vae2, x, y[:5])
    with pytest.raises(ValueError, match="without images"):
        latent_explorer(vae2, labels=y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        latent_explorer(vae2, x.float())  # grey levels 0..255 given as floats
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        latent_explorer(vae2, x.tolist())
    with pytest.raises(ValueError, match="coords"):
        latent_explorer(vae2, x, coords=(1, 1))
    with pytest.raises(ValueError, match="coords"):
        latent_explorer(vae2, x, coords=(0, 2))
    with pytest.raises(ValueError, match="extent"):
        latent_explorer(vae2, extent=0.0)
    with pytest.raises(ValueError, match="size"):
        latent_explorer(vae2, size=10)
    with pytest.raises(ValueError, match="first"):
        interpolation_explorer(vae2, x, first=20)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        interpolation_explorer(vae2, None)
    # numpy images and (N, 784) rows are accepted
    w = interpolation_explorer(vae2, x.numpy().reshape(20, 784), first=2, second=3)
    assert w.pair == (2, 3)


# ---------------------------------------------------------------- found by mutation testing
def test_grey_levels_round_to_the_nearest_level():
    """Decoded probabilities become grey levels by rounding to the nearest of 0..255, clipped."""
    from vaelib.widgets.drawing import grey_levels

    p = np.array([[0.0, 0.6 / 255, 1.4 / 255, 127.7 / 255, 254.6 / 255, 1.0, -0.3, 1.7]], dtype=np.float32)
    assert grey_levels(p).dtype == np.uint8
    assert grey_levels(p).tolist() == [[0, 1, 1, 128, 255, 255, 0, 255]]


def test_prior_draw_below_the_range_is_clipped_with_a_message(vae2):
    w = latent_explorer(vae2, extent=0.5, seed=4)
    draw = torch.randn(2, generator=torch.Generator().manual_seed(4))
    assert draw[0] < -0.5 and abs(draw[1]) <= 0.5  # this seed draws below −0.5 on z[0] only
    w.prior_button.click()
    torch.testing.assert_close(w.code(), draw.clamp(-0.5, 0.5))
    assert "beyond the slider range" in w.message.value
    assert f"z[0] = {float(draw[0]):+.2f}" in w.message.value and "z[1] =" not in w.message.value.split("<br>")[-1]


def test_picking_a_digit_with_base_picked_redraws_the_grid_around_it(vae50, small):
    """With base "picked digit", the grid's other coordinates are the newly picked digit's mean."""
    x, y = small
    a, b = 3, 2  # a zero and a one: their means differ in many coordinates
    assert (int(y[a]), int(y[b])) == (0, 1)
    w = latent_explorer(vae50, x, y, coords="active")
    i, j = w.coords
    w.base.value = "picked digit"
    w.pick(a)
    w.pick(b)
    mu_a, _ = encoding(vae50, x[a])
    mu_b, _ = encoding(vae50, x[b])
    picture = grey(w.grid_map.value)
    values = np.linspace(-3.0, 3.0, 15)
    spacing = values[1] - values[0]
    for k, l in [(1, 1), (13, 13), (1, 13), (13, 1)]:  # corner cells, away from the marker and ellipse
        cx, cy = values[k], values[l]
        c0, r1 = expected_pixel(w, "grid", cx - spacing / 2, cy - spacing / 2)
        c1, r0 = expected_pixel(w, "grid", cx + spacing / 2, cy + spacing / 2)
        cell = picture[round(r0) + 1 : round(r1) - 1, round(c0) + 1 : round(c1) - 1]
        cell = np.asarray(Image.fromarray(cell.astype(np.uint8)).resize((26, 26), Image.BILINEAR), dtype=np.float64)

        def distance(mu, cell=cell, cx=cx, cy=cy):
            z = mu.clone()
            z[i], z[j] = float(cx), float(cy)
            return float(np.mean((cell - decoded(vae50, z)[1:27, 1:27]) ** 2))

        assert distance(mu_b) < 0.5 * distance(mu_a), (k, l)


@pytest.mark.parametrize("extent, grid", [(3.0, 15), (2.0, 5), (1.0, 2)])
def test_map_limits_are_the_outer_edges_of_the_grid_cells(vae2, extent, grid):
    """The grid's codes are linspace(−extent, extent, grid); each cell is one spacing wide, centred on its code."""
    w = latent_explorer(vae2, extent=extent, grid=grid)
    spacing = 2.0 * extent / (grid - 1)
    assert w.map_limits == pytest.approx((-extent - spacing / 2, extent + spacing / 2), abs=1e-12)


def test_builders_reject_bad_grid_sizes(vae2):
    for bad in (1, 0, 65):  # a one-cell grid has no spacing (the map limits would divide by zero)
        with pytest.raises(ValueError, match="grid"):
            latent_explorer(vae2, grid=bad)


@pytest.mark.parametrize("size", [300, 50])
def test_digit_at_a_size_that_is_not_a_multiple_of_28(vae2, size):
    """Nearest-neighbour resizing: the picture upscaled 'size' times and then kept every 28th row and column."""
    w = latent_explorer(vae2, size=size)
    w.sliders[0].value, w.sliders[1].value = 0.7, -1.2
    px = w.pixels()
    assert px.shape == (size, size)
    source = np.repeat(np.arange(28), size)[::28]  # source row (column) of each output row (column)
    want = decoded(vae2, w.code())[np.ix_(source, source)]
    assert max_diff(px, want) <= 1


def test_marker_pixel_is_the_pixel_that_holds_the_point(vae2):
    """Checked against matplotlib's own data → display transform of the map's axes (origin bottom-left)."""
    import math

    w = latent_explorer(vae2)
    ax, height = w._grid.ax, w._grid.height
    for vx, vy in [(0.35, -1.15), (1.25, 2.0), (-2.7, 0.45), (2.95, -2.95), (-0.05, 0.1), (0.6, 1.55), (-1.4, -0.8)]:
        w.sliders[0].value, w.sliders[1].value = vx, vy
        x_disp, y_disp = ax.transData.transform(w.marker)
        assert w.marker_pixel("grid") == (math.floor(x_disp), math.floor(height - y_disp)), (vx, vy)


def test_ellipse_follows_a_change_of_coordinates(vae50, small):
    x, y = small
    w = latent_explorer(vae50, x, y, coords=(0, 1))
    a, b = (int(k) for k in torch.argsort(w.activity, descending=True)[:2])
    assert {a, b}.isdisjoint({0, 1})
    with torch.no_grad():
        mus, _ = vae50.encode(x.reshape(-1, 784).float() / 255.0)
    index = int(torch.nonzero((mus[:, a].abs() < 1.5) & (mus[:, b].abs() < 1.5))[0])
    w.pick(index)
    w.coord_x.value, w.coord_y.value = a, b
    assert w.coords == (a, b)
    w.sliders[0].value, w.sliders[1].value = -2.9, -2.9  # the marker out of the way
    mu, _ = encoding(vae50, x[index])
    for which, image in (("grid", w.grid_map), ("scatter", w.scatter_map)):
        rows, cols = pixels_of_colour(image.value, ELLIPSE_RGB)
        assert rows.size >= 8, which
        c0, r0 = expected_pixel(w, which, float(mu[a]), float(mu[b]))
        assert abs(cols.mean() - c0) <= 3 and abs(rows.mean() - r0) <= 3, which


# --------------------------------------------------------------------------- #
# Pixel-level wiring checks moved here from notebook 07 (which keeps one short check per widget)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def vae20():
    return vaelib.load_pretrained(20)


def exact(model, z) -> np.ndarray:
    """The decoder's mean image for one code in grey levels 0..255, not rounded (float64, 28×28)."""
    with torch.no_grad():
        p = model.decode_mean(torch.as_tensor(z, dtype=torch.float32).reshape(1, -1))
    return p.reshape(28, 28).numpy().astype(np.float64) * 255.0


def flat_blocks(picture: np.ndarray) -> tuple[np.ndarray, int]:
    """A square digit picture of k×k screen pixels per digit pixel, back at 28×28, and the largest
    spread of grey levels inside one block (0 when every block is one flat square)."""
    k = picture.shape[0] // 28
    assert picture.shape == (28 * k, 28 * k)
    b = picture.reshape(28, k, 28, k)
    return b[:, 0, :, 0].astype(np.float64), int((b.max(axis=(1, 3)) - b.min(axis=(1, 3))).max())


HALF_LEVEL = 0.5 + 1e-3  # rounding to the nearest grey level, and float32 noise


def test_digit_pictures_are_flat_blocks_of_the_rounded_decoder_output(vae2, mnist_small):
    """The slider's digit, the reconstruction and every tile of the samples' strip show each digit pixel
    as one block of one grey level: the decoder's output rounded to the nearest of 0..255."""
    _, _, x, y = mnist_small
    w = latent_explorer(vae2, x, y)
    w.sliders[0].value, w.sliders[1].value = 1.0, -0.5
    assert w.code().tolist() == [1.0, -0.5] and w.marker == (1.0, -0.5)
    pictures = [("digit", grey(w.image.value), w.code())]
    w.pick(1)
    mu, _ = encoding(vae2, x[1])
    pictures.append(("reconstruction", grey(w.recon_image.value), mu))
    strip = grey(w.posterior_image.value)
    assert len(w.posterior_codes) == 8
    pictures += [(f"sample {k}", strip[:, 88 * k : 88 * k + 84], w.posterior_codes[k]) for k in range(8)]
    for name, picture, z in pictures:
        digit, spread = flat_blocks(picture)
        assert spread == 0, name
        assert np.abs(digit - exact(vae2, z)).max() <= HALF_LEVEL, name


@pytest.mark.parametrize("latent", [2, 20])
def test_interpolation_pictures_and_strips_follow_both_paths(latent, vae2, vae20, mnist_small):
    """At t = 0, 1/2, 1 both pictures are flat blocks of the expected grey levels; the two strips show
    both whole paths at t = 0, 1/8, ..., 1 (tiles 56 pixels wide, 4-pixel gaps)."""
    model = {2: vae2, 20: vae20}[latent]
    _, _, x, y = mnist_small
    a, b = 3, 2
    w = interpolation_explorer(model, x, y, first=a, second=b)
    mu_a, _ = encoding(model, x[a])
    mu_b, _ = encoding(model, x[b])
    xa, xb = x[a].numpy().astype(np.float64), x[b].numpy().astype(np.float64)
    for t in (0.0, 0.5, 1.0):
        w.t.value = t
        latent_28, s1 = flat_blocks(w.pixels("latent"))
        pixel_28, s2 = flat_blocks(w.pixels("pixel"))
        assert s1 == 0 and s2 == 0, t
        assert np.abs(latent_28 - exact(model, (1 - t) * mu_a + t * mu_b)).max() <= HALF_LEVEL, t
        assert np.abs(pixel_28 - ((1 - t) * xa + t * xb)).max() <= HALF_LEVEL, t
    latent_strip, pixel_strip = grey(w.latent_strip.value), grey(w.pixel_strip.value)
    assert latent_strip.shape == pixel_strip.shape == (56, 9 * 60 - 4)
    for k, t in enumerate(np.linspace(0.0, 1.0, 9)):
        latent_28, s1 = flat_blocks(latent_strip[:, 60 * k : 60 * k + 56])
        pixel_28, s2 = flat_blocks(pixel_strip[:, 60 * k : 60 * k + 56])
        assert s1 == 0 and s2 == 0, k
        assert np.abs(latent_28 - exact(model, (1 - t) * mu_a + t * mu_b)).max() <= HALF_LEVEL, k
        assert np.abs(pixel_28 - ((1 - t) * xa + t * xb)).max() <= HALF_LEVEL, k


def test_slider_on_the_most_active_coordinate_changes_the_digit_far_more(vae20, mnist_small):
    """Notebook 07, section 1: the first slider moves only its coordinate, and on the most active
    coordinate it changes the digit shown far more than on the least active one."""
    _, _, x, y = mnist_small
    w = latent_explorer(vae20, x, y)
    order = [int(k) for k in torch.argsort(w.activity, descending=True)]
    assert w.coords == (order[0], order[1]) and w.base.value == "zero"

    def pixel_change(lo=-2.0, hi=2.0):
        w.sliders[0].value = lo
        before = w.pixels().astype(np.float64)
        w.sliders[0].value = hi
        z = w.code()
        assert z[w.coords[0]].item() == hi and torch.all(z[[u for u in range(20) if u != w.coords[0]]] == 0)
        return np.abs(w.pixels() - before).mean() / 255

    change_active = pixel_change()
    w.coord_x.value = order[-1]
    assert w.coords == (order[-1], order[1])
    change_inactive = pixel_change()
    assert change_active > 0.02 and change_active > 10 * change_inactive


def test_one_sigma_ellipse_lies_on_the_ideal_curve(vae20, mnist_small):
    """The magenta pixels on each map lie within 2.5 pixels of the ideal 1-σ ellipse, and every point of
    the ideal curve inside the box has a magenta pixel within 2.5 pixels (notebook 07, section 2: the
    widget paints a line two pixels thick, so a painted pixel's centre is at most 1.5·√2 ≈ 2.1 from the curve)."""
    _, _, x, y = mnist_small
    order = [int(k) for k in torch.argsort(latent_explorer(vae20, x, y).activity, descending=True)]
    w = latent_explorer(vae20, x, y, coords=(order[0], order[-1]))  # most and least active: a tall thin ellipse
    pick = 1
    w.pick(pick)
    i, j = w.coords
    mu, sigma = encoding(vae20, x[pick])
    mx, my, sx, sy = float(mu[i]), float(mu[j]), float(sigma[i]), float(sigma[j])
    assert sx < 0.5 and 0.9 < sy < 1.1  # the least active coordinate gets the prior's σ
    w.sliders[0].value, w.sliders[1].value = (-2.5 if mx > 0 else 2.5), (-2.5 if my > 0 else 2.5)  # the red dot away
    lo, hi = w.map_limits
    theta = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    for which, image in (("grid", w.grid_map), ("scatter", w.scatter_map)):
        left, top, right, bottom = w.axes_box(which)
        per_unit = ((right - left) / (hi - lo), (bottom - top) / (hi - lo))

        def to_col(v, left=left, per_unit=per_unit):  # the box holds the pixels of lo and hi: their centres
            return left + 0.5 + (v - lo) * per_unit[0]

        def to_row(v, top=top, per_unit=per_unit):
            return top + 0.5 + (hi - v) * per_unit[1]

        rows, cols = pixels_of_colour(image.value, ELLIPSE_RGB)
        c0, r0 = to_col(mx), to_row(my)
        off_cross = (np.abs(rows + 0.5 - r0) > 6) | (np.abs(cols + 0.5 - c0) > 6)  # leave out the × at the mean
        drawn = np.stack([cols[off_cross] + 0.5, rows[off_cross] + 0.5], axis=1)
        curve = np.stack([to_col(mx + sx * np.cos(theta)), to_row(my + sy * np.sin(theta))], axis=1)
        inside = ((curve[:, 0] > left) & (curve[:, 0] < right) & (curve[:, 1] > top) & (curve[:, 1] < bottom)
                  & ((np.abs(curve[:, 1] - r0) > 7) | (np.abs(curve[:, 0] - c0) > 7)))
        assert len(drawn) > 50 and inside.sum() > 500, which
        dist = np.sqrt(((drawn[:, None, :] - curve[None, :, :]) ** 2).sum(-1))
        assert dist.min(axis=1).max() < 2.5, which  # every drawn pixel near the ideal curve
        assert dist[:, inside].min(axis=0).max() < 2.5, which  # every point of the curve drawn
