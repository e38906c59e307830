"""How long the latent explorer takes to redraw after a slider moves, against a matplotlib redraw.

Usage::

    python benchmarks/widget_latency.py [--repeats 300] [--baseline-repeats 60] [--latent 2 50] [--compress-level 1]

For each shipped VAE (latent sizes 2 and 50 by default) with the MNIST test set (found as
``vaelib.load_mnist`` finds it: ``$VAELIB_DATA`` or the download cache), the script builds
``vaelib.widgets.latent_explorer`` (the function) and moves its two sliders in turn through ``--repeats``
values. Headless, a slider's observer runs synchronously when ``.value`` is set, so the time
from setting ``.value`` until the assignment returns is the time until the new PNG pictures
(the digit and both maps with the marker) are in the ``Image`` widgets. Pillow encodes those
PNGs at the zlib level ``vaelib.widgets.drawing.PNG_COMPRESS_LEVEL``; ``--compress-level``
times another level (0 stores the pictures uncompressed, 9 compresses hardest).

In the same process it times a plain matplotlib version of the same redraw: the digit with
``imshow`` and the marker on the decoded-grid map and on the scatter of encoded means, each
figure kept between redraws (only the image data and the marker move) and saved as PNG into
an ``Image`` widget by the slider's observer.

It prints the median and 95th percentile of both, their ratio, the machine, and, as its last
line, one JSON object with all the numbers. Set ``OMP_NUM_THREADS`` (or ``--threads``) to
choose how many threads torch uses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time

import numpy as np
import torch

TARGET_MEDIAN_MS = 16.0
TARGET_P95_MS = 33.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min_before"] = round(os.getloadavg()[0], 2)
    return info


def slider_values(n: int, extent: float, seed: int) -> list[tuple[int, float]]:
    """(slider, value) pairs: the two sliders in turn, each value on the 0.05 grid and different
    from that slider's previous value (an unchanged value would not fire the observer)."""
    rng = np.random.default_rng(seed)
    steps = round(extent / 0.05)
    last = [0.0, 0.0]
    out = []
    for k in range(n):
        which = k % 2
        while True:
            value = round(float(rng.integers(-steps, steps + 1)) * 0.05, 2)
            if value != last[which]:
                break
        last[which] = value
        out.append((which, value))
    return out


def time_changes(sliders, changes) -> np.ndarray:
    """Seconds from setting each slider value until the observer (the redraw) has returned."""
    times = np.empty(len(changes))
    for k, (which, value) in enumerate(changes):
        start = time.perf_counter()
        sliders[which].value = value
        times[k] = time.perf_counter() - start
    return times


class MatplotlibBaseline:
    """The same redraw done the usual way: matplotlib figures saved to PNG on every slider change."""

    def __init__(self, model, mu: np.ndarray, labels: np.ndarray, coords, extent: float, grid: int = 15):
        import ipywidgets as widgets
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.model, self.coords = model, coords
        self.base = torch.zeros(model.latent_dim)
        i, j = coords
        values = torch.linspace(-extent, extent, grid)
        z = self.base.repeat(grid * grid, 1)
        z[:, i] = values.repeat(grid)
        z[:, j] = values.flip(0).repeat_interleave(grid)
        with torch.inference_mode():
            digits = model.decode_mean(z).reshape(grid, grid, 28, 28).numpy()
        tiled = digits.transpose(0, 2, 1, 3).reshape(grid * 28, grid * 28)
        half = extent / (grid - 1)
        lim = (-extent - half, extent + half)

        def figure(w, h):
            fig = Figure(figsize=(w / 100, h / 100), dpi=100)
            FigureCanvasAgg(fig)
            return fig

        self.digit_fig = figure(280, 280)
        ax = self.digit_fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        self.digit_artist = ax.imshow(np.zeros((28, 28)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")

        self.grid_fig = figure(444, 452)
        ax = self.grid_fig.add_axes((50 / 444, 40 / 452, 384 / 444, 384 / 452))
        ax.imshow(tiled, cmap="gray", vmin=0, vmax=1, extent=(*lim, *lim))
        ax.set(xlim=lim, ylim=lim, xlabel=f"z[{i}]", ylabel=f"z[{j}]")
        (self.grid_marker,) = ax.plot([0], [0], "o", color="red", mec="black", ms=9)

        self.scatter_fig = figure(520, 452)
        ax = self.scatter_fig.add_axes((50 / 520, 40 / 452, 384 / 520, 384 / 452))
        ax.scatter(mu[:, i], mu[:, j], c=labels, cmap="tab10", s=2, lw=0)
        ax.set(xlim=lim, ylim=lim, xlabel=f"z[{i}]", ylabel=f"z[{j}]")
        (self.scatter_marker,) = ax.plot([0], [0], "o", color="red", mec="black", ms=9)

        self.sliders = [widgets.FloatSlider(min=-extent, max=extent, step=0.05) for _ in range(2)]
        self.images = [widgets.Image(format="png") for _ in range(3)]
        for slider in self.sliders:
            slider.observe(self.redraw, names="value")

    @staticmethod
    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        return buf.getvalue()

    def redraw(self, _change=None) -> None:
        z = self.base.clone()
        x, y = (float(s.value) for s in self.sliders)
        z[self.coords[0]], z[self.coords[1]] = x, y
        with torch.inference_mode():
            digit = self.model.decode_mean(z[None])[0].reshape(28, 28).numpy()
        self.digit_artist.set_data(digit)
        self.grid_marker.set_data([x], [y])
        self.scatter_marker.set_data([x], [y])
        self.images[0].value = self.png(self.digit_fig)
        self.images[1].value = self.png(self.grid_fig)
        self.images[2].value = self.png(self.scatter_fig)


def stats_ms(times: np.ndarray) -> dict:
    ms = np.asarray(times) * 1e3
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": int(ms.size),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=300, help="slider changes timed per model (default 300)")
    parser.add_argument("--baseline-repeats", type=int, default=60,
                        help="slider changes timed for the matplotlib baseline per model (default 60)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed changes before each timing (default 20)")
    parser.add_argument("--latent", type=int, nargs="+", default=[2, 50], help="latent sizes of shipped VAEs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as set up)")
    parser.add_argument("--compress-level", type=int, choices=range(10), default=None, metavar="0..9",
                        help="zlib level of the explorer's PNGs (default: the one vaelib.widgets uses)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 2 or args.baseline_repeats < 2:
        parser.error("--repeats and --baseline-repeats must be at least 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import matplotlib

    matplotlib.use("Agg")
    import PIL

    import vaelib
    from vaelib.data import load_mnist
    from vaelib.widgets import drawing, latent_explorer

    if args.compress_level is not None:
        drawing.PNG_COMPRESS_LEVEL = args.compress_level  # read by drawing.encode_png at each call
    encoder = {"library": "Pillow", "version": PIL.__version__, "compress_level": drawing.PNG_COMPRESS_LEVEL}
    device = device_info()
    print(f"device: {device['cpu']}, {device['logical_cpus']} logical CPUs, torch {device['torch']} "
          f"with {device['torch_threads']} thread{'s' if device['torch_threads'] != 1 else ''} "
          f"(OMP_NUM_THREADS={device['OMP_NUM_THREADS']}), load average {device.get('load_average_1min_before')}")
    print(f"encoder: Pillow {encoder['version']}, PNG compress_level {encoder['compress_level']}")
    images, labels = load_mnist("test")
    print(f"data: MNIST test set, {images.shape[0]} digits; {args.repeats} slider changes per model "
          f"({args.baseline_repeats} for the matplotlib baseline), the two sliders in turn, "
          f"after {args.warmup} untimed")

    results = {}
    for latent in args.latent:
        model = vaelib.load_pretrained(latent)
        coords = "active" if latent > 2 else (0, 1)
        start = time.perf_counter()
        w = latent_explorer(model, images, labels, coords=coords)
        build_s = time.perf_counter() - start
        changes = slider_values(args.warmup + args.repeats, w.extent, args.seed)
        time_changes(w.sliders, changes[: args.warmup])
        internal = []
        times = np.empty(args.repeats)
        for k, change in enumerate(changes[args.warmup :]):
            times[k] = time_changes(w.sliders, [change])[0]
            internal.append(w.last_latency)
        ours = stats_ms(times)
        ours_internal = stats_ms(np.array(internal))

        base = MatplotlibBaseline(model, w.means.numpy(), labels.numpy(), w.coords, w.extent)
        warm = min(args.warmup, 5)  # each matplotlib redraw is slow: a few untimed ones suffice
        bchanges = slider_values(warm + args.baseline_repeats, w.extent, args.seed + 1)
        time_changes(base.sliders, bchanges[:warm])
        baseline = stats_ms(time_changes(base.sliders, bchanges[warm:]))
        ratio = baseline["median_ms"] / ours["median_ms"]
        ok = ours["median_ms"] < TARGET_MEDIAN_MS and ours["p95_ms"] < TARGET_P95_MS
        results[f"latent{latent}"] = {
            "coords": list(w.coords),
            "build_s": round(build_s, 3),
            "explorer": ours,
            "explorer_last_latency": ours_internal,
            "matplotlib_baseline": baseline,
            "ratio_median_baseline_over_explorer": round(ratio, 1),
            "meets_target": bool(ok),
        }
        print(f"\nlatent {latent} (sliders on z[{w.coords[0]}], z[{w.coords[1]}]; explorer built in {build_s:.2f} s)")
        print(f"  explorer   : median {ours['median_ms']:7.2f} ms   p95 {ours['p95_ms']:7.2f} ms   "
              f"max {ours['max_ms']:7.2f} ms   (its own last_latency: median {ours_internal['median_ms']:.2f} ms)")
        print(f"  matplotlib : median {baseline['median_ms']:7.2f} ms   p95 {baseline['p95_ms']:7.2f} ms   "
              f"max {baseline['max_ms']:7.2f} ms")
        print(f"  baseline / explorer (medians): {ratio:.1f}×   target median < {TARGET_MEDIAN_MS:g} ms and "
              f"p95 < {TARGET_P95_MS:g} ms: {'met' if ok else 'NOT met'}")

    if hasattr(os, "getloadavg"):
        device["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    summary = {
        "benchmark": "latent_explorer slider latency",
        "targets_ms": {"median": TARGET_MEDIAN_MS, "p95": TARGET_P95_MS},
        "device": device,
        "encoder": encoder,
        "repeats": args.repeats,
        "baseline_repeats": args.baseline_repeats,
        "results": results,
    }
    print(json.dumps(summary))
    return 0 if all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
