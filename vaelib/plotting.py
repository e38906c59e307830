"""Small plotting helpers shared by the notebooks.

The notebooks write their figures (the ones docs/figures.md and the README show) through
:func:`save_figure`, at a fixed size and resolution, into the project's ``figures/`` folder, or
into ``$VAELIB_FIGURES`` (the tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FIGURE_DPI = 110


def figures_dir() -> Path:
    """The folder figures are saved to.

    ``$VAELIB_FIGURES`` if set; otherwise the ``figures/`` folder of the project the notebook
    runs in (found by walking up from the working directory to a folder that holds both
    ``notebooks/`` and ``figures/``); otherwise ``./figures``.
    """
    env = os.environ.get("VAELIB_FIGURES")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "figures").is_dir():
            return folder / "figures"
    return here / "figures"


def save_figure(fig, name: str, size: tuple[float, float] | None = None, dpi: int = FIGURE_DPI) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (size in inches, if given, is applied first).

    ``name`` may end in ``.png``; any other dot belongs to the name (``"beta_0.5"`` gives
    ``beta_0.5.png``). The file is written atomically: an interrupted save leaves the previous
    figure, never half a PNG.
    """
    from .checkpoints import write_atomic

    stem = name[: -len(".png")] if isinstance(name, str) and name.lower().endswith(".png") else name
    if not isinstance(stem, str) or stem in ("", ".", "..") or "/" in stem or os.sep in stem:
        raise ValueError(f"name must be a file name without a folder, e.g. '06_manifold_2d'; got {name!r}")
    if size is not None:
        fig.set_size_inches(*size)
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.png"
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None}))
    return path


def image_grid(images, nrow: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images of shape (N, 784) or (N, 28, 28) into one 2-D array with ``nrow`` images per row."""
    from ._helpers import check_positive_int
    from .errors import ShapeError

    nrow = check_positive_int(nrow, "nrow")
    imgs = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    side = int(round(np.sqrt(imgs.shape[-1]))) if imgs.ndim == 2 else imgs.shape[-1]
    square = imgs.ndim == 2 and side * side == imgs.shape[-1] or imgs.ndim == 3 and imgs.shape[-2] == side
    if not square:
        raise ShapeError(
            f"images must have shape (N, side*side), e.g. (N, 784), or (N, side, side); got {imgs.shape}"
        )
    imgs = imgs.reshape(-1, side, side)
    n = imgs.shape[0]
    ncol = nrow
    nrows = int(np.ceil(n / ncol))
    out = np.full((nrows * (side + pad) + pad, ncol * (side + pad) + pad), pad_value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (side + pad), pad + c * (side + pad)
        out[y : y + side, x : x + side] = imgs[i]
    return out
