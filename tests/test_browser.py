"""Notebook 07 in a real browser: Voilà runs the notebook, headless Chromium moves a latent slider.

The headless tests (test_latent_explorer.py) check what the widgets draw from Python; this one
checks what a person sees. It starts a Voilà server on 127.0.0.1 that executes a copy of
``notebooks/07_latent_explorer.ipynb`` in a kernel of this Python environment, opens the page in
Debian's Chromium driven by Playwright, waits for the first latent explorer (the latent-2 model)
to render, moves its first slider with the keyboard, and asserts that the readout and the pixels
of the digit shown on screen change. It saves the screenshot that the README shows.

Needs Debian's ``chromium`` and Playwright's Python package (``requirements.txt``). Outside CI the
test skips with a message when either is missing; in CI (``$CI`` set) it fails.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "07_latent_explorer.ipynb"
# the README's screenshot; $VAELIB_FIGURES sends it elsewhere, as it does the notebooks' figures
SCREENSHOT = Path(os.environ.get("VAELIB_FIGURES") or ROOT / "figures") / "07_latent_explorer.png"
VIEWPORT = {"width": 1600, "height": 1400}  # wide and tall enough for the whole explorer

INSTALL_HINT = (
    "install Debian's Chromium with `apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends chromium` (as root) and Playwright's Python package with "
    "`pip install -r requirements.txt`; do not run `playwright install`"
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 60     # until the server accepts connections
NOTEBOOK_RUN_S = 300    # Voilà executes the whole notebook before the widgets appear
CHANGE_S = 20           # for a slider move to reach the screen
KEY_PRESSES = 10        # arrow-key steps of 0.05 each: the first coordinate moves by 0.5
LAST_OUTPUT = "notebook ran in"  # printed by the notebook's last cell

SLIDER = ".widget-slider"
HANDLE = ".noUi-handle"
READOUT = ".widget-readout"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _chromium() -> str:
    """Path of Debian's Chromium; skip (fail in CI) with the install hint when something is missing."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright's Python package is not installed")
    path = shutil.which("chromium")
    if path is None:
        problems.append("no `chromium` on PATH")
    if problems:
        message = f"the browser test needs a browser: {'; '.join(problems)}. To run it, {INSTALL_HINT}."
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    # In single-notebook mode Voilà answers /api/status with 403, so wait for the TCP port instead.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Voilà exited with code {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"Voilà did not accept connections on port {port} within {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def voila_url(tmp_path_factory, mnist_dir):
    """A Voilà server on 127.0.0.1 serving a copy of notebook 07; stopped through its handle afterwards."""
    _chromium()  # skip before starting a server when no browser can be had
    folder = tmp_path_factory.mktemp("voila")
    served = folder / NOTEBOOK.name
    shutil.copy(NOTEBOOK, served)  # the server runs in a scratch folder, never in notebooks/
    jupyter = folder / "jupyter"
    env = {
        **os.environ,
        "VAELIB_DATA": str(mnist_dir),  # the kernel inherits the server's environment
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    log = folder / "voila.log"
    with open(log, "w") as log_file:
        # sys.executable's own environment: the kernel finds vaelib (jupyter_client starts a kernel
        # whose command is `python` with the server's interpreter)
        process = subprocess.Popen(
            [sys.executable, "-m", "voila", str(served), "--no-browser", f"--port={port}",
             "--Voila.ip=127.0.0.1", "--Voila.show_tracebacks=True"],
            cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, log, SERVER_START_S)
        yield f"http://127.0.0.1:{port}/", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def page(voila_url):
    """The served notebook in headless Chromium, after the notebook ran and the widgets rendered."""
    from playwright.sync_api import sync_playwright

    url, log = voila_url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            pg = browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            started = time.monotonic()
            pg.goto(url, timeout=NOTEBOOK_RUN_S * 1000, wait_until="commit")
            try:
                # Widgets can appear while later cells still run (and still move the sliders), so
                # wait for the output of the notebook's last cell before touching anything.
                pg.get_by_text(LAST_OUTPUT).first.wait_for(state="attached", timeout=NOTEBOOK_RUN_S * 1000)
                pg.wait_for_load_state("load", timeout=NOTEBOOK_RUN_S * 1000)
                pg.locator(f"{SLIDER} {HANDLE}").first.wait_for(state="visible", timeout=CHANGE_S * 1000)
            except Exception as e:  # show what the server said (a failing cell, a missing package)
                raise AssertionError(
                    f"the notebook did not finish with its widgets shown within {NOTEBOOK_RUN_S} s ({e}); "
                    f"page errors: {errors}\nserver log:\n{log.read_text()[-4000:]}"
                ) from None
            print(f"notebook 07 executed and rendered by Voilà in {time.monotonic() - started:.1f} s")
            yield pg
        finally:
            browser.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_moving_a_latent_slider_redraws_the_digit(page):
    # ipywidgets 8 markup: the explorer is a VBox; its first slider sits in a VBox with the digit below it
    slider = page.locator(SLIDER).first
    explorer = slider.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][last()]")
    digit = slider.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]").locator("img.widget-image").first
    digit.scroll_into_view_if_needed()
    digit.wait_for(state="visible")
    box = digit.bounding_box()
    assert box and box["width"] >= 200 and abs(box["width"] - box["height"]) < 2, f"not the 280x280 digit: {box}"
    readout = slider.locator(READOUT)
    readout_before = readout.inner_text().strip()
    src_before = digit.get_attribute("src")
    before = _pixels(digit.screenshot())

    # move away from the nearer end of the slider's range
    key, sign = ("ArrowRight", 1) if float(readout_before) <= 0 else ("ArrowLeft", -1)
    handle = slider.locator(HANDLE)
    handle.focus()
    for _ in range(KEY_PRESSES):
        handle.press(key)

    # the readout follows the handle; the image's src changes before the new picture is painted,
    # so poll the element's own pixels until they differ
    deadline = time.monotonic() + CHANGE_S
    while readout.inner_text().strip() == readout_before and time.monotonic() < deadline:
        time.sleep(0.05)
    readout_after = readout.inner_text().strip()
    expected = float(readout_before) + sign * KEY_PRESSES * 0.05
    assert abs(float(readout_after) - expected) < 1e-6, (
        f"readout {readout_before!r} -> {readout_after!r} after {KEY_PRESSES} x {key}; expected {expected:.2f}"
    )

    changed = 0.0
    while time.monotonic() < deadline:
        if digit.get_attribute("src") != src_before:
            changed = float(np.mean(np.any(_pixels(digit.screenshot()) != before, axis=-1)))
            if changed > 0.01:
                break
        time.sleep(0.1)
    assert digit.get_attribute("src") != src_before, f"the digit's image source did not change within {CHANGE_S} s"
    assert changed > 0.01, f"only {100 * changed:.2f}% of the digit's screen pixels changed within {CHANGE_S} s"
    print(f"readout {readout_before} -> {readout_after}; {100 * changed:.1f}% of the digit's screen pixels changed")

    # the maps' markers are redrawn after the digit: save the screenshot once two taken 0.3 s apart agree,
    # so that the README's picture shows one finished redraw rather than whatever was half done
    shot_png = explorer.screenshot()
    while time.monotonic() < deadline + CHANGE_S:
        time.sleep(0.3)
        again = explorer.screenshot()
        if again == shot_png:
            break
        shot_png = again
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(shot_png)
    shot = _pixels(shot_png)
    assert shot.shape[0] >= box["height"] and shot.shape[1] >= 3 * box["width"], shot.shape  # digit and two maps
