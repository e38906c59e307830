"""Shared fixtures. Tests that need real MNIST fail (never skip) when the files cannot be had.

The switches of a test run (the notebooks' short mode, ``--full``, ``--update-figures``, the
temporary figures folder) live in the ``conftest.py`` at the project root, which pytest loads for
every selection, a run of notebooks alone included; this file is loaded only for ``tests/``.
"""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder holding the four real MNIST files.

    ``$VAELIB_DATA`` when set (CI points it at a local copy); otherwise the loader's per-user
    cache, downloading the files there once. When neither works the test fails with the
    loader's message: these tests are never skipped for lack of data.
    """
    from vaelib.data import FILES, MNISTError, data_directory, load_mnist

    value = os.environ.get("VAELIB_DATA")
    if value:
        directory = Path(value).expanduser()
        absent = [n for n in FILES if not (directory / n).is_file()]
        if absent:
            pytest.fail(f"VAELIB_DATA={value} lacks {', '.join(absent)}", pytrace=False)
        return directory
    try:
        for split in ("train", "test"):
            load_mnist(split)
    except MNISTError as e:
        pytest.fail(f"these tests need the real MNIST files: {e}", pytrace=False)
    return data_directory()


@pytest.fixture(scope="session")
def mnist_small(mnist_dir):
    """A fixed subset of real MNIST: 6,000 training and 2,000 test images (uint8) with labels."""
    from vaelib.data import load_mnist

    train_x, train_y = load_mnist("train", root=mnist_dir)
    test_x, test_y = load_mnist("test", root=mnist_dir)
    return train_x[:6000], train_y[:6000], test_x[:2000], test_y[:2000]


@pytest.fixture(autouse=True)
def _fixed_torch_state():
    torch.manual_seed(0)
    yield
