"""Shared fixtures. Tests that need real MNIST fail (never skip) when VAELIB_DATA is not set."""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    value = os.environ.get("VAELIB_DATA")
    if not value or not Path(value).is_dir():
        pytest.fail(
            "this test needs the real MNIST files: set VAELIB_DATA to a folder holding "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
            f"and t10k-labels-idx1-ubyte.gz (VAELIB_DATA is {value!r})"
        )
    return Path(value)


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
