"""Switches for every test run in this project: the short notebook mode and where figures go.

This file sits at the project root so that pytest loads it for any selection of tests, including
a run of notebooks alone (``python -m pytest notebooks/06_training_a_vae.ipynb``); the fixtures
live in ``tests/conftest.py``. See ``docs/testing.md``.

- By default the notebooks run in their short mode: ``VAELIB_QUICK=1`` is set in this process
  before nbval starts a kernel, and each kernel inherits it. ``--full`` runs them as a reader gets
  them (``VAELIB_QUICK=0``).
- Figures go to a temporary folder (``VAELIB_FIGURES``), removed at the end, so that a test run
  leaves ``figures/`` as it was. ``--full --update-figures`` writes them into ``figures/``. A
  ``VAELIB_FIGURES`` you set yourself is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

QUICK_VARIABLE = "VAELIB_QUICK"
FIGURES_VARIABLE = "VAELIB_FIGURES"
TEMPORARY_FIGURES = pytest.StashKey[str]()


def pytest_addoption(parser):
    group = parser.getgroup("vaelib", "the course's test modes")
    group.addoption(
        "--full",
        action="store_true",
        default=False,
        help="run the notebooks as a reader gets them (notebook 08 alone takes about 2 minutes on a 2-core CPU), "
        "not in their short mode",
    )
    group.addoption(
        "--update-figures",
        action="store_true",
        default=False,
        help="with --full: write the figures into figures/ (the README's pictures) instead of a temporary folder",
    )


def pytest_configure(config):
    full = config.getoption("full")
    if config.getoption("update_figures") and not full:
        raise pytest.UsageError("--update-figures needs --full: the README's figures come from the full run")
    os.environ[QUICK_VARIABLE] = "0" if full else "1"  # kernels started later inherit this environment
    if config.getoption("update_figures"):
        os.environ.pop(FIGURES_VARIABLE, None)  # figures/ of the project, found by vaelib.plotting
    elif not os.environ.get(FIGURES_VARIABLE):
        folder = tempfile.mkdtemp(prefix="vaelib-figures-")
        os.environ[FIGURES_VARIABLE] = folder
        config.stash[TEMPORARY_FIGURES] = folder


def pytest_unconfigure(config):
    folder = config.stash.get(TEMPORARY_FIGURES, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get(FIGURES_VARIABLE) == folder:
            del os.environ[FIGURES_VARIABLE]


def pytest_report_header(config):
    mode = "full" if config.getoption("full") else "short (VAELIB_QUICK=1; --full for the reader's version)"
    return [f"notebooks: {mode}", f"figures: {os.environ.get(FIGURES_VARIABLE) or 'figures/'}"]
