"""Figure helpers: digit tiling and saving to the figures folder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from vaelib.plotting import figures_dir, image_grid, save_figure


def test_image_grid_places_each_digit_in_its_cell():
    imgs = torch.stack([torch.full((784,), float(i) / 10) for i in range(5)])
    grid = image_grid(imgs, nrow=3, pad=2, pad_value=1.0)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    for i in range(5):
        r, c = divmod(i, 3)
        cell = grid[2 + r * 30 : 2 + r * 30 + 28, 2 + c * 30 : 2 + c * 30 + 28]
        np.testing.assert_allclose(cell, i / 10, rtol=0, atol=1e-7)
    # the unused sixth cell and the gutters keep the padding value
    np.testing.assert_array_equal(grid[32:60, 62:90], 1.0)
    np.testing.assert_array_equal(grid[:2, :], 1.0)


def test_save_figure_writes_a_png_of_the_requested_size(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    assert figures_dir() == tmp_path
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, "line", size=(4, 3), dpi=50)
    plt.close(fig)
    assert path == tmp_path / "line.png"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = plt.imread(path)
    assert 100 <= img.shape[1] <= 200 and 80 <= img.shape[0] <= 150  # about 4×3 inches at 50 dpi


def test_figures_dir_finds_the_project_folder_from_a_notebook_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("VAELIB_FIGURES", raising=False)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "figures").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert figures_dir() == (tmp_path / "figures").resolve()


# ---------------------------------------------------------------- inputs found by the input audit
def test_an_interrupted_save_leaves_the_previous_figure(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    path = save_figure(fig, "line", dpi=30)
    before = path.read_bytes()

    def broken_savefig(target, *args, **kwargs):  # writes part of a PNG, then fails
        if hasattr(target, "write"):
            target.write(b"\x89PNG half a picture")
        else:
            Path(target).write_bytes(b"\x89PNG half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, "line", dpi=30)
    assert path.read_bytes() == before  # used to be left holding the broken bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png"]  # no temporary file left behind


def test_image_grid_refuses_bad_row_counts_and_shapes():
    from vaelib._validate import ShapeError

    with pytest.raises(ValueError, match="nrow must be >= 1"):  # used to divide by zero
        image_grid(torch.rand(4, 784), nrow=0)
    with pytest.raises(ShapeError, match=r"\(784,\)"):  # used to be a numpy reshape error
        image_grid(torch.rand(784), nrow=2)
    with pytest.raises(ShapeError, match=r"\(4, 783\)"):
        image_grid(torch.rand(4, 783), nrow=2)
