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
    from vaelib.errors import ShapeError

    with pytest.raises(ValueError, match="nrow must be >= 1"):  # used to divide by zero
        image_grid(torch.rand(4, 784), nrow=0)
    with pytest.raises(ShapeError, match=r"\(784,\)"):  # used to be a numpy reshape error
        image_grid(torch.rand(784), nrow=2)
    with pytest.raises(ShapeError, match=r"\(4, 783\)"):
        image_grid(torch.rand(4, 783), nrow=2)


# ---------------------------------------------------------------- found by mutation testing
def test_image_grid_refuses_a_bool_or_fractional_row_count():
    with pytest.raises(TypeError, match="nrow must be an integer"):
        image_grid(torch.rand(4, 784), nrow=True)
    with pytest.raises(TypeError, match="nrow must be an integer"):
        image_grid(torch.rand(4, 784), nrow=2.0)


def test_image_grid_pads_with_white_by_default_and_keeps_float32():
    imgs = np.zeros((3, 28, 28), dtype=np.float32)
    grid = image_grid(imgs, nrow=2)
    assert grid.dtype == np.float32 and grid.shape == (2 * 30 + 2, 2 * 30 + 2)
    np.testing.assert_array_equal(grid[:2, :], 1.0)  # the default gutter is 2 white pixels
    np.testing.assert_array_equal(grid[2:30, 2:30], 0.0)
    np.testing.assert_array_equal(grid[32:60, 32:60], 1.0)  # the unused fourth cell


def test_image_grid_refuses_non_square_three_dimensional_images():
    from vaelib.errors import ShapeError

    with pytest.raises(ShapeError, match=r"\(4, 28, 27\)"):
        image_grid(np.zeros((4, 28, 27), dtype=np.float32), nrow=2)


def test_figures_dir_needs_both_folders_and_prefers_the_nearest_project(tmp_path, monkeypatch):
    monkeypatch.delenv("VAELIB_FIGURES", raising=False)
    # a folder with notebooks/ but no figures/ is not a project: the fallback is ./figures
    (tmp_path / "lone" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "lone" / "notebooks")
    assert figures_dir() == (tmp_path / "lone" / "notebooks" / "figures").resolve()
    # a project inside another project: the working directory's own project wins
    for folder in ("notebooks", "figures", "inner/notebooks", "inner/figures"):
        (tmp_path / "outer" / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "outer" / "inner")
    assert figures_dir() == (tmp_path / "outer" / "inner" / "figures").resolve()


def test_save_figure_takes_a_name_with_extension_makes_folders_and_uses_the_default_dpi(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    target = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("VAELIB_FIGURES", str(target))
    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, "curve.png")
    assert path == target / "curve.png" and sorted(p.name for p in target.iterdir()) == ["curve.png"]
    with Image.open(path) as im:
        assert im.info["dpi"] == pytest.approx((110, 110), abs=0.5)


def test_save_figure_keeps_dots_in_names_and_refuses_folders(tmp_path, monkeypatch):
    """Names such as beta_0.1 and beta_0.5 used to be cut at the first dot, both becoming beta_0.png."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = Figure(figsize=(1, 1))
    paths = [save_figure(fig, name) for name in ("beta_0.1", "beta_0.5", "beta_2.PNG")]
    assert [p.name for p in paths] == ["beta_0.1.png", "beta_0.5.png", "beta_2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beta_0.1.png", "beta_0.5.png", "beta_2.png"]
    for bad in ("sub/figure", "", ".png", ".."):
        with pytest.raises(ValueError, match="file name without a folder"):
            save_figure(fig, bad)
    assert len(list(tmp_path.iterdir())) == 3
