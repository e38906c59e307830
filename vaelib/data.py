"""MNIST for the course: finding, downloading, checking and parsing the four IDX files.

Introduced in notebook 06 (training a VAE on MNIST).

The data set is the four standard MNIST files in the IDX format, gzipped or not:

- ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (60,000 examples),
- ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (10,000 examples).

Where the files are looked for (one directory, the first that applies):

1. the ``root`` argument of :func:`load_mnist`;
2. the directory named by the environment variable ``VAELIB_DATA``;
3. a per-user cache, ``$XDG_CACHE_HOME/vaelib/mnist`` (``~/.cache/vaelib/mnist`` by default).

Files missing from that directory are downloaded into it (``download=True``), trying
each mirror of :data:`MIRRORS` in turn. Every download is checked against the md5 of
the official ``.gz`` file before it is given its final name, and every file that is read
is checked against the sha256 of its decompressed content, so a corrupt or truncated
file is refused with an :class:`MNISTError` that names the file and the problem.

The binarization helpers turn grey levels into the 0/1 pixels a Bernoulli decoder
models: :func:`binarize_dynamic` draws a fresh sample every call (the usual choice
for training), :func:`binarize_static` draws one fixed sample for a given seed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import secrets
import struct
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from ._helpers import check_unit_interval, checked

__all__ = [
    "MNISTError",
    "MNISTFormatError",
    "MNISTChecksumError",
    "MNISTDownloadError",
    "MNISTNotFoundError",
    "MNISTFile",
    "FILES",
    "SPLITS",
    "MIRRORS",
    "ENV_VAR",
    "DEFAULT_TIMEOUT",
    "default_cache_dir",
    "data_directory",
    "download_file",
    "load_mnist",
    "mnist_tensors",
    "to_float",
    "binarize_dynamic",
    "binarize_static",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming the directory that holds the MNIST files.
ENV_VAR = "VAELIB_DATA"

#: Seconds to wait for a connection, and then between two reads, during a download.
DEFAULT_TIMEOUT = 10.0

#: Base URLs tried in order for a missing file (the file name is appended).
#: ``yann.lecun.com`` is left out: it has answered 403 to downloads since 2024.
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

IMAGE_SIDE = 28  # MNIST images are 28 x 28 pixels
IMAGE_SIZE = IMAGE_SIDE * IMAGE_SIDE  # 784 pixels per image
_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


# --------------------------------------------------------------------------- errors


class MNISTError(RuntimeError):
    """Base class of every error this module raises about the MNIST files."""


class MNISTFormatError(MNISTError):
    """A file is not a valid MNIST IDX file (bad magic, wrong size, corrupt gzip...)."""


class MNISTChecksumError(MNISTFormatError):
    """A file is well formed but its content is not the official MNIST content."""


class MNISTDownloadError(MNISTError):
    """A file could not be downloaded from any mirror."""


class MNISTNotFoundError(MNISTError):
    """Files of a split are missing and could not be downloaded."""


# ------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MNISTFile:
    """One of the four MNIST files.

    ``name`` is the gzipped name as published; ``md5`` the md5 of that official ``.gz``
    file; ``sha256`` the sha256 of the decompressed IDX content; ``count`` the number of
    examples it holds.
    """

    name: str
    md5: str
    sha256: str
    count: int
    is_images: bool

    @property
    def raw_name(self) -> str:
        """The file name without ``.gz``."""
        return self.name[: -len(".gz")]

    @property
    def magic(self) -> int:
        return _IMAGE_MAGIC if self.is_images else _LABEL_MAGIC

    @property
    def header_size(self) -> int:
        return 16 if self.is_images else 8

    @property
    def size(self) -> int:
        """Length in bytes of the decompressed file."""
        per_item = IMAGE_SIZE if self.is_images else 1
        return self.header_size + self.count * per_item


FILES: dict[str, MNISTFile] = {
    f.name: f
    for f in (
        MNISTFile(
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            60000,
            True,
        ),
        MNISTFile(
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            60000,
            False,
        ),
        MNISTFile(
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            10000,
            True,
        ),
        MNISTFile(
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            10000,
            False,
        ),
    )
}

#: For each split, the (images, labels) file names.
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _file_spec(name: str) -> MNISTFile:
    key = name if name.endswith(".gz") else name + ".gz"
    if key not in FILES:
        raise ValueError(f"unknown MNIST file {name!r}; known files: {', '.join(FILES)}")
    return FILES[key]


# ---------------------------------------------------------------------- directories


def default_cache_dir() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/vaelib/mnist``, else ``~/.cache/vaelib/mnist``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "vaelib" / "mnist"


def _resolve_directory(root: PathLike | None) -> tuple[Path, str]:
    """The data directory and a few words on where it came from."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser(), f"the environment variable {ENV_VAR}"
    return default_cache_dir(), "the default per-user cache"


def data_directory(root: PathLike | None = None) -> Path:
    """The directory :func:`load_mnist` uses: ``root``, else ``$VAELIB_DATA``, else the cache."""
    return _resolve_directory(root)[0]


def _find_file(directory: Path, spec: MNISTFile) -> Path | None:
    """The uncompressed file if present, else the gzipped one, else None."""
    for candidate in (directory / spec.raw_name, directory / spec.name):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------- download


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, deepest last."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created = []
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        created.append(path)
    return created


def _remove_empty_dirs(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def _fetch(url: str, destination: Path, spec: MNISTFile, timeout: float) -> None:
    """Download ``url`` into ``destination`` (a new file) and check its md5; raise on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "vaelib (MNIST download)"})
    md5 = hashlib.md5()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        with open(destination, "xb") as out:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                md5.update(chunk)
                out.write(chunk)
                received += len(chunk)
    if declared is not None and declared.isdigit() and received != int(declared):
        raise MNISTDownloadError(
            f"interrupted download: expected {declared} bytes, got {received}"
        )
    if md5.hexdigest() != spec.md5:
        raise MNISTDownloadError(
            f"wrong checksum: md5 {md5.hexdigest()}, expected {spec.md5} ({received} bytes)"
        )


def download_file(
    name: str,
    directory: PathLike,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download one MNIST ``.gz`` file into ``directory`` and return its path.

    Each base URL of ``mirrors`` (default :data:`MIRRORS`) is tried in order. The bytes
    go to a temporary ``<name>.part-<random>`` file in ``directory``, whose md5 is checked
    against the official one; only then is it renamed to ``<name>``. Any failure (HTTP
    error, no connection, timeout, short body, wrong checksum) removes the temporary
    file and moves on to the next mirror. Raises :class:`MNISTDownloadError`, listing
    what went wrong with each mirror, when none succeeds.
    """
    spec = _file_spec(name)
    if mirrors is None:
        mirrors = MIRRORS
    elif isinstance(mirrors, str):
        mirrors = [mirrors]
    directory = Path(directory).expanduser()
    target = directory / spec.name
    failures: list[str] = []
    created: list[Path] = []
    try:
        created = _make_dirs(directory)
    except OSError as exc:
        raise MNISTDownloadError(f"cannot create the directory {directory}: {exc}") from exc

    for base in mirrors:
        url = base.rstrip("/") + "/" + spec.name
        part = directory / f"{spec.name}.part-{secrets.token_hex(6)}"
        done = False
        try:
            print(f"Downloading {url}", file=sys.stderr)
            _fetch(url, part, spec, timeout)
            os.replace(part, target)
            done = True
            return target
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            failures.append(f"{url}: {exc.reason}")
        except MNISTDownloadError as exc:
            failures.append(f"{url}: {exc}")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            if not done:
                try:
                    part.unlink()
                except FileNotFoundError:
                    pass

    _remove_empty_dirs(created)
    detail = "\n".join("  - " + f for f in failures) or "  - (no mirror given)"
    raise MNISTDownloadError(f"could not download {spec.name} into {directory}:\n{detail}")


# -------------------------------------------------------------------------- parsing


def _read_decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise MNISTFormatError(
                f"{path}: corrupt gzip stream ({type(exc).__name__}: {exc}); "
                "delete the file so that it can be downloaded again"
            ) from exc
    return data


def _parse_idx(data: bytes, spec: MNISTFile, path: Path) -> torch.Tensor:
    """Check the IDX header, the length and the sha256 of ``data``; return its array."""
    kind = "images" if spec.is_images else "labels"
    if len(data) < spec.header_size:
        raise MNISTFormatError(
            f"{path}: truncated: expected {spec.size} bytes, got {len(data)} "
            f"(too short even for the {spec.header_size}-byte header)"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != spec.magic:
        hint = ""
        if data[:2] == b"\x1f\x8b":
            hint = " (the content is gzip-compressed: the name should end in .gz)"
        raise MNISTFormatError(
            f"{path}: bad magic number {magic} (0x{magic:08x}), "
            f"expected {spec.magic} for an IDX {kind} file{hint}"
        )
    dims = struct.unpack(">" + "I" * ((spec.header_size - 4) // 4), data[4 : spec.header_size])
    if dims[0] != spec.count:
        raise MNISTFormatError(
            f"{path}: declares {dims[0]} {kind}, expected {spec.count} for this file"
        )
    if spec.is_images and tuple(dims[1:]) != (IMAGE_SIDE, IMAGE_SIDE):
        raise MNISTFormatError(
            f"{path}: wrong dimensions: declares images of {dims[1]}x{dims[2]} pixels, "
            f"expected {IMAGE_SIDE}x{IMAGE_SIDE}"
        )
    if len(data) != spec.size:
        what = "truncated" if len(data) < spec.size else "wrong length (trailing bytes)"
        raise MNISTFormatError(f"{path}: {what}: expected {spec.size} bytes, got {len(data)}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise MNISTChecksumError(
            f"{path}: wrong checksum: the sha256 of its decompressed content is {digest}, "
            f"expected {spec.sha256}; the file is corrupt or not the official MNIST file"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=spec.header_size)
    if spec.is_images:
        return torch.from_numpy(array.reshape(spec.count, IMAGE_SIDE, IMAGE_SIDE).copy())
    return torch.from_numpy(array.astype(np.int64))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int, name: str) -> torch.Tensor:
    # mtime_ns and size are part of the key only: a changed file is read again.
    return _parse_idx(_read_decompressed(Path(path)), FILES[name], Path(path))


def _load_file(path: Path, spec: MNISTFile) -> torch.Tensor:
    resolved = path.resolve()
    stat = resolved.stat()
    return _load_cached(str(resolved), stat.st_mtime_ns, stat.st_size, spec.name).clone()


# ----------------------------------------------------------------------- public API


def _not_found_message(
    split: str, directory: Path, source: str, missing: list[MNISTFile], reason: str
) -> str:
    names = ", ".join(f.name for f in missing)
    everything = "\n".join(
        f"  {f.name}  (or uncompressed: {f.raw_name})" for f in FILES.values()
    )
    return (
        f"Cannot load the MNIST {split} split: {names} not found in {directory}.\n"
        f"{reason}\n"
        f"Directories looked in: {directory} (from {source}).\n"
        f"The loader reads the four MNIST files, gzipped or not:\n{everything}\n"
        f"To fix this, put the files in {directory}, or set the environment variable "
        f"{ENV_VAR} to a directory that holds them (or pass root=...). Without either, "
        f"the files are looked for in {default_cache_dir()}."
    )


def load_mnist(
    split: str = "train",
    root: PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of MNIST as ``(images, labels)``.

    ``images`` is a ``torch.uint8`` tensor of shape ``(N, 28, 28)`` with values 0..255,
    ``labels`` a ``torch.int64`` tensor of shape ``(N,)`` with values 0..9; N is 60,000
    for ``"train"`` and 10,000 for ``"test"``.

    The directory is ``root``, else ``$VAELIB_DATA``, else :func:`default_cache_dir`.
    Missing files are downloaded into it when ``download`` is true, from ``mirrors``
    (default :data:`MIRRORS`). Files are parsed once per process and kept in memory;
    each call returns fresh copies, which the caller may modify freely.

    Raises :class:`MNISTNotFoundError` when files are missing and cannot be downloaded,
    :class:`MNISTFormatError` (or its subclass :class:`MNISTChecksumError`) when a file
    is corrupt.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory, source = _resolve_directory(root)
    specs = [FILES[name] for name in SPLITS[split]]

    paths: dict[str, Path] = {}
    missing: list[MNISTFile] = []
    for spec in specs:
        found = _find_file(directory, spec)
        if found is None:
            missing.append(spec)
        else:
            paths[spec.name] = found

    if missing:
        if not download:
            reason = "Downloading is switched off (download=False)."
            raise MNISTNotFoundError(_not_found_message(split, directory, source, missing, reason))
        for spec in missing:
            try:
                paths[spec.name] = download_file(spec.name, directory, mirrors, timeout)
            except MNISTDownloadError as exc:
                reason = f"Downloading failed: {exc}"
                raise MNISTNotFoundError(
                    _not_found_message(split, directory, source, missing, reason)
                ) from exc

    images = _load_file(paths[specs[0].name], specs[0])
    labels = _load_file(paths[specs[1].name], specs[1])
    if images.shape[0] != labels.shape[0]:  # pragma: no cover - guarded by the checksums
        raise MNISTFormatError(
            f"{paths[specs[0].name]} holds {images.shape[0]} images but "
            f"{paths[specs[1].name]} holds {labels.shape[0]} labels"
        )
    return images, labels


def _check_images(images, flatten: bool = False) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or floating point in [0, 1], got {images.dtype}")
    check_unit_interval(images, "float images")


@checked(_check_images)
def to_float(images: torch.Tensor, flatten: bool = False) -> torch.Tensor:
    """Pixels as floats in [0, 1]: uint8 grey levels divided by 255 (float32); floats kept as they are.

    The one normalisation of the course. ``flatten=True`` merges the last two axes: (N, 28, 28) →
    (N, 784).
    """
    x = images.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else images
    return x.reshape(*x.shape[:-2], -1) if flatten else x


@checked(lambda images, generator=None: _check_images(images))
def binarize_dynamic(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh 0/1 draw of every pixel, on with probability equal to its intensity (float32, same shape).

    The one binarization of the course: pixel j is on when u_j < p_j for u_j ~ U(0, 1), drawn from
    ``generator`` (else torch's global one) on the images' device. Each call draws anew, as the
    training loops do for every batch (dynamic binarization).
    """
    p = to_float.unchecked(images).to(torch.float32)
    return (torch.rand(p.shape, generator=generator, device=p.device) < p).to(torch.float32)


@checked(lambda images, seed=0: _check_images(images))
def binarize_static(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed 0/1 draw of every pixel (:func:`binarize_dynamic` with a CPU generator seeded with
    ``seed``): the same on every device and unaffected by the global random state."""
    return binarize_dynamic.unchecked(images.cpu(), torch.Generator().manual_seed(seed)).to(images.device)


#: The seed of the one static binarization of the test set (:func:`binarized_test_set`).
TEST_SEED = 1


def binarized_test_set(images: torch.Tensor, seed: int = TEST_SEED) -> torch.Tensor:
    """The test images as the course scores them: :func:`binarize_static` with ``seed``, flattened
    to (N, 784), on the CPU. Training records, ``evaluate``, ``python -m vaelib.evaluate`` and the
    notebooks all use this draw (seed 1: the training seed 0 plus one), so their numbers are on the
    same binary images."""
    images = images[0] if isinstance(images, (tuple, list)) else images
    return binarize_static(images, seed).reshape(images.shape[0], -1)


def mnist_tensors(
    split: str = "train",
    root: PathLike | None = None,
    device: torch.device | str | None = None,
    *,
    flatten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_mnist`, with images as float32 in [0, 1] (:func:`to_float`), on ``device``."""
    images, labels = load_mnist(split, root)
    return to_float(images, flatten=flatten).to(device), labels.to(device)
