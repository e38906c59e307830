"""Pictures for the widgets: matplotlib figures, digits as PNG bytes, and the latent maps.

Nothing here uses pyplot: a figure is drawn on its own Agg canvas and saved into bytes, so
no display and no global figure state are involved, and a test can compare the bytes. Every
picture a widget shows is PNG bytes in an ``ipywidgets.Image``; Pillow writes them.

The latent maps of notebook 07 (:class:`MapPicture`) must follow a slider within a few
milliseconds, far less than one matplotlib ``savefig``. So matplotlib draws a map's background
once, when what the map shows changes; a slider move only stamps the marker into a copy of
that background with numpy and lets Pillow encode it as an 8-bit palette PNG.
"""

from __future__ import annotations

import io
import math

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..data import IMAGE_SIDE

__all__ = [
    "MNIST_SIDE",
    "PNG_COMPRESS_LEVEL",
    "MARKER_RGB",
    "ELLIPSE_RGB",
    "new_figure",
    "figure_png",
    "grey_levels",
    "upscale",
    "resize_nearest",
    "encode_png",
    "digit_png",
    "strip",
    "strip_png",
    "png_to_array",
    "image_widget",
    "marker_stamp",
    "MapPicture",
]

MNIST_SIDE = IMAGE_SIDE  # the digits are 28 x 28 pixels

# zlib level 1: the pictures are small and a redraw's time matters more than a few kilobytes
# (benchmarks/widget_latency.py measures the slider redraw with this setting).
PNG_COMPRESS_LEVEL = 1


# --------------------------------------------------------------------------- #
# matplotlib figures
# --------------------------------------------------------------------------- #
def new_figure(size: tuple[float, float], dpi: int, nrows: int = 1, margins=None, **subplot_kw):
    """Return a ``Figure`` on its own Agg canvas and its column of ``nrows`` axes.

    The margins are fixed (``margins``: keyword arguments of ``subplots_adjust``) rather than
    left to a layout engine, which would double the time of every redraw.
    """
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, squeeze=False, **subplot_kw)[:, 0]
    fig.subplots_adjust(**(margins or {}))
    return fig, axes


def figure_png(fig) -> bytes:
    """Return ``fig`` as PNG bytes, without the software tag, so that equal figures give equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Grey pictures as arrays and PNG bytes
# --------------------------------------------------------------------------- #
def grey_levels(p) -> np.ndarray:
    """Return pixel values in [0, 1] as uint8 grey levels (0 black, 255 white), rounded to nearest."""
    return np.rint(np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Return a 2-D array made ``factor`` times larger by repeating each pixel (nearest neighbour)."""
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """Return a square 2-D array resized to ``size`` × ``size`` by nearest neighbour.

    A whole multiple of the side is a plain :func:`upscale`; any other size picks, for each
    output row and column, the source row and column it falls in.
    """
    n = img.shape[0]
    if size % n == 0:
        return upscale(img, size // n)
    idx = (np.arange(size) * n) // size
    return img[idx[:, None], idx[None, :]]


def encode_png(img: np.ndarray, palette: bytes | None = None) -> bytes:
    """Return PNG bytes of a 2-D uint8 array: grey levels, or palette indices when ``palette`` is given.

    ``palette`` holds 768 bytes (256 RGB colours); with it the PNG is an 8-bit palette image.
    """
    im = Image.fromarray(img)
    if palette is not None:
        im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def digit_png(pixels, size: int) -> bytes:
    """Return one digit (784 values in [0, 1], any shape) as a ``size`` × ``size`` grey PNG."""
    digit = np.asarray(pixels).reshape(MNIST_SIDE, MNIST_SIDE)
    return encode_png(resize_nearest(grey_levels(digit), size))


def strip(images: np.ndarray, factor: int, gap: int = 4, gap_level: int = 128) -> np.ndarray:
    """Return grey digits (k, 28, 28) uint8 side by side, each upscaled by ``factor``, with grey gaps."""
    tiles = [upscale(im, factor) for im in images]
    h = tiles[0].shape[0]
    out = np.full((h, len(tiles) * (h + gap) - gap), gap_level, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        out[:, k * (h + gap) : k * (h + gap) + h] = tile
    return out


def strip_png(digits, factor: int) -> bytes:
    """Return digits in [0, 1] (k, 28, 28) as one grey PNG, side by side, each upscaled by ``factor``."""
    return encode_png(strip(grey_levels(digits), factor))


def png_to_array(data: bytes, mode: str | None = None) -> np.ndarray:
    """Decode PNG bytes (for instance an ``ipywidgets.Image``'s value) into a numpy array.

    ``mode`` converts first (``"RGB"``, ``"L"``); by default the stored mode is kept (grey
    images give (H, W) uint8 arrays). Introduced in notebook 07.
    """
    with Image.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert(mode) if mode else im.convert(im.mode)).copy()


def image_widget(width: int, height: int | None = None) -> widgets.Image:
    """Return an empty PNG ``Image`` widget of a fixed size in pixels (square unless ``height`` is given)."""
    return widgets.Image(format="png", width=int(width), height=int(height if height is not None else width))


# --------------------------------------------------------------------------- #
# The latent maps: a palette picture with a marker and an ellipse on top
# --------------------------------------------------------------------------- #
# The rendered map is reduced to at most 252 colours (palette entries 0..251); the last four
# entries are kept for what numpy draws on top, so those pixels have exact colours that a test
# can look for, and no pixel of the map itself has them.
_N_FREE_COLOURS = 252
_MARKER, _WHITE, _BLACK, _ELLIPSE = 255, 254, 253, 252
_RESERVED_RGB = {_MARKER: (255, 0, 0), _WHITE: (255, 255, 255), _BLACK: (0, 0, 0), _ELLIPSE: (255, 0, 255)}
MARKER_RGB = _RESERVED_RGB[_MARKER]
"""Colour of the current-point marker on the maps (pure red; no map pixel has it otherwise)."""
ELLIPSE_RGB = _RESERVED_RGB[_ELLIPSE]
"""Colour of the picked digit's mean and 1-σ ellipse on the maps (magenta)."""


def marker_stamp(r_red: float = 4.5, r_white: float = 6.0, r_black: float = 7.5):
    """Return the marker as row offsets, column offsets and palette indices of its pixels.

    The marker is a red disc in a white and a black ring, so that it stands out on the dark
    grid of digits and on the white scatter alike.
    """
    k = int(math.ceil(r_black))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    r = np.hypot(dy, dx)
    keep = r < r_black
    val = np.where(r < r_red, _MARKER, np.where(r < r_white, _WHITE, _BLACK)).astype(np.uint8)
    return dy[keep], dx[keep], val[keep]


_STAMP = marker_stamp()


class MapPicture:
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
        self.overlay = self.background
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
        quant = Image.fromarray(np.ascontiguousarray(rgb)).quantize(
            colors=_N_FREE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        self.background = np.asarray(quant).copy()
        palette = bytearray(768)
        used = bytes(quant.getpalette("RGB"))[: 3 * _N_FREE_COLOURS]
        palette[: len(used)] = used
        for index, colour in _RESERVED_RGB.items():
            palette[3 * index : 3 * index + 3] = bytes(colour)
        self.palette = bytes(palette)
        # matplotlib's display coordinates start at the bottom-left corner, the array's rows at
        # the top; with linear axes the transform is one scale and one offset per axis
        (x0, y0), (x1, y1) = ax.transData.transform([(self.lo, self.lo), (self.hi, self.hi)])
        self._scale = ((x1 - x0) / (self.hi - self.lo), (y1 - y0) / (self.hi - self.lo))
        self._offset = (x0 - self._scale[0] * self.lo, y0 - self._scale[1] * self.lo)
        c0, r1 = self.to_pixel(self.lo, self.lo)
        c1, r0 = self.to_pixel(self.hi, self.hi)
        self.axes_box = (c0, r0, c1, r1)  # (left, top, right, bottom) pixel columns/rows inside the axes
        self.overlay = self.background

    def to_pixel_float(self, x, y):
        """Return data coordinates as (column, row) in the picture, floats (pixel k spans [k, k+1))."""
        col = self._scale[0] * np.asarray(x, dtype=np.float64) + self._offset[0]
        row = self.height - (self._scale[1] * np.asarray(y, dtype=np.float64) + self._offset[1])
        return col, row

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """Return the (column, row) of the pixel that holds data point (x, y)."""
        col, row = self.to_pixel_float(x, y)
        return int(math.floor(col)), int(math.floor(row))

    def set_ellipse(self, centre, half_axes) -> None:
        """Draw an axis-aligned ellipse and its centre (a small ×) over the background; ``None`` removes it."""
        if centre is None:
            self.overlay = self.background
            return
        out = self.background.copy()
        (cx, cy), (sx, sy) = centre, half_axes
        left, top, right, bottom = self.axes_box
        scale = max(abs(self._scale[0]), abs(self._scale[1]))
        # enough points along the outline that neighbouring ones are less than a pixel apart
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
        self.overlay = out

    def frame(self, x: float, y: float) -> np.ndarray:
        """Return the map's palette indices with the marker at data point (x, y).

        The marker goes into a copy of the overlay, so the next move starts from a clean map.
        """
        frame = self.overlay.copy()
        col, row = self.to_pixel(x, y)
        dy, dx, val = _STAMP
        r, c = row + dy, col + dx
        inside = (r >= 0) & (r < self.height) & (c >= 0) & (c < self.width)
        frame[r[inside], c[inside]] = val[inside]
        return frame

    def png(self, x: float, y: float) -> bytes:
        """Return the map with the marker at data point (x, y) as PNG bytes (an 8-bit palette image)."""
        return encode_png(self.frame(x, y), self.palette)
