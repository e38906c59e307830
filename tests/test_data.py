"""Tests of vaelib.data: IDX parsing and checks, downloads, binarization.

The real-data tests read the MNIST files through the ``mnist_dir`` fixture (conftest.py):
the folder named by VAELIB_DATA, or the per-user cache; they fail (they are not skipped)
when the files cannot be had. Downloads are
simulated with a local HTTP server on 127.0.0.1 serving the test-split files.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import math
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from vaelib import data
from vaelib.data import (
    FILES,
    MIRRORS,
    MNISTChecksumError,
    MNISTDownloadError,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
    binarize_dynamic,
    binarize_static,
    download_file,
    load_mnist,
    to_float,
)

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
ALL_NAMES = list(FILES)

TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def test_split(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("test", root=mnist_dir)


def _raw(mnist_dir: Path, name: str) -> bytes:
    return gzip.decompress((mnist_dir / name).read_bytes())


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


class _Server:
    """A local HTTP server whose first path segment chooses a behaviour."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                _, mode, name = self.path.split("/", 2)
                body = outer.files.get(name)
                try:
                    if body is None or mode == "404":
                        self.send_error(404)
                    elif mode == "500":
                        self.send_error(500)
                    elif mode in ("good", "bad"):
                        if mode == "bad":  # same length, one byte changed
                            body = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
                        self._send(body, len(body))
                    elif mode == "short":  # promises more than it sends, then closes
                        self._send(body[: len(body) // 2], len(body))
                    elif mode == "hang":  # headers, then silence
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.flush()
                        time.sleep(1.0)
                except OSError:
                    pass
                self.close_connection = True

            def _send(self, payload: bytes, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(mnist_dir: Path):
    # The test-split files are the canonical downloads (their gz md5 is the official one).
    files = {n: (mnist_dir / n).read_bytes() for n in (TEST_IMAGES, TEST_LABELS)}
    srv = _Server(files)
    yield srv
    srv.close()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------- the registry


def test_registry_and_mirrors() -> None:
    assert MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "https://storage.googleapis.com/cvdf-datasets/mnist/" in MIRRORS
    assert all("lecun" not in m for m in MIRRORS[:-1])
    assert ALL_NAMES == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert FILES["train-images-idx3-ubyte.gz"].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert FILES["t10k-labels-idx1-ubyte.gz"].size == 10008
    assert issubclass(MNISTError, RuntimeError)
    assert issubclass(MNISTChecksumError, MNISTFormatError)


def test_data_directory_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAELIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "vaelib" / "mnist"
    assert data.data_directory() == tmp_path / "xdg" / "vaelib" / "mnist"
    monkeypatch.setenv("VAELIB_DATA", str(tmp_path / "env"))
    assert data.data_directory() == tmp_path / "env"
    assert data.data_directory(tmp_path / "root") == tmp_path / "root"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_cache_dir() == Path.home() / ".cache" / "vaelib" / "mnist"


# ------------------------------------------------------------------------ real data


def test_train_split_from_env(mnist_dir: Path) -> None:
    images, labels = load_mnist("train")  # found through VAELIB_DATA
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.bincount(labels, minlength=10).tolist() == TRAIN_LABEL_COUNTS
    mean = images.double().mean().item() / 255.0
    assert mean == pytest.approx(0.13066, abs=5e-5)


def test_test_split(test_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_split
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS
    assert int(images.max()) == 255 and int(images.min()) == 0


def test_bad_split_name(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", root=mnist_dir)


def test_cache_returns_independent_copies(mnist_dir: Path) -> None:
    first, first_labels = load_mnist("test", root=mnist_dir)
    hits = data._load_cached.cache_info().hits
    first.zero_()
    first_labels.fill_(3)
    second, second_labels = load_mnist("test", root=mnist_dir)
    assert data._load_cached.cache_info().hits >= hits + 2  # served from memory
    assert second_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert int(second.max()) == 255
    assert second.data_ptr() != first.data_ptr()


def test_reads_uncompressed_files(tmp_path: Path, mnist_dir: Path, test_split) -> None:
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name[:-3]).write_bytes(_raw(mnist_dir, name))
    images, labels = load_mnist("test", root=tmp_path, download=False)
    assert torch.equal(images, test_split[0])
    assert torch.equal(labels, test_split[1])


def test_uncompressed_file_is_preferred_to_the_gzipped_one(
    tmp_path: Path, mnist_dir: Path, test_split
) -> None:
    # with both names present the uncompressed file is read; the .gz beside it is ignored
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name[:-3]).write_bytes(_raw(mnist_dir, name))
        (tmp_path / name).write_bytes(b"not a gzip stream")
    images, labels = load_mnist("test", root=tmp_path, download=False)
    assert torch.equal(images, test_split[0])
    assert torch.equal(labels, test_split[1])


def test_changed_file_is_read_again(tmp_path: Path, mnist_dir: Path) -> None:
    for name in (TEST_IMAGES, TEST_LABELS):
        shutil.copy(mnist_dir / name, tmp_path / name)
    load_mnist("test", root=tmp_path, download=False)
    (tmp_path / TEST_LABELS).write_bytes(gzip.compress(_raw(mnist_dir, TEST_LABELS)[:-1]))
    with pytest.raises(MNISTFormatError, match="truncated"):
        load_mnist("test", root=tmp_path, download=False)


# -------------------------------------------------------------------- corrupt files


def _flip(buf: bytes, index: int) -> bytes:
    return buf[:index] + bytes([buf[index] ^ 0x01]) + buf[index + 1 :]


def _bad_magic(raw: bytes) -> bytes:
    return (2050).to_bytes(4, "big") + raw[4:]


def _truncated(raw: bytes) -> bytes:
    return raw[:-1]


def _trailing(raw: bytes) -> bytes:
    return raw + b"\x00"


def _rows_27(raw: bytes) -> bytes:
    return raw[:8] + (27).to_bytes(4, "big") + raw[12:]


def _count_9999(raw: bytes) -> bytes:
    return raw[:4] + (9999).to_bytes(4, "big") + raw[8:]


def _pixel_flipped(raw: bytes) -> bytes:
    return _flip(raw, 16 + 5 * 784 + 400)


@pytest.mark.parametrize(
    "target, corrupt, error, pattern",
    [
        (TEST_LABELS, _bad_magic, MNISTFormatError, r"bad magic number 2050.*expected 2049"),
        (TEST_IMAGES, _bad_magic, MNISTFormatError, r"bad magic number 2050.*expected 2051"),
        (TEST_LABELS, _truncated, MNISTFormatError, r"truncated: expected 10008 bytes, got 10007"),
        (
            TEST_IMAGES, _truncated, MNISTFormatError,
            r"truncated: expected 7840016 bytes, got 7840015",
        ),
        (TEST_LABELS, _trailing, MNISTFormatError, r"expected 10008 bytes, got 10009"),
        (TEST_IMAGES, _rows_27, MNISTFormatError, r"wrong dimensions.*27x28.*expected 28x28"),
        (TEST_LABELS, _count_9999, MNISTFormatError, r"declares 9999 labels, expected 10000"),
        (TEST_IMAGES, _pixel_flipped, MNISTChecksumError, r"wrong checksum.*sha256"),
        (TEST_LABELS, lambda raw: _flip(raw, 8), MNISTChecksumError, r"wrong checksum"),
    ],
    ids=[
        "labels-magic", "images-magic", "labels-truncated", "images-truncated",
        "labels-trailing", "images-dimension", "labels-count", "images-sha256", "labels-sha256",
    ],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_corrupt_file_is_refused(
    tmp_path: Path, mnist_dir: Path, target, corrupt, error, pattern, compressed
) -> None:
    other = TEST_LABELS if target == TEST_IMAGES else TEST_IMAGES
    shutil.copy(mnist_dir / other, tmp_path / other)
    bad = corrupt(_raw(mnist_dir, target))
    path = tmp_path / (target if compressed else target[:-3])
    path.write_bytes(gzip.compress(bad, compresslevel=1) if compressed else bad)
    with pytest.raises(error, match=pattern) as info:
        load_mnist("test", root=tmp_path, download=False)
    assert path.name in str(info.value)


def test_gzipped_content_under_raw_name(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copy(mnist_dir / TEST_IMAGES, tmp_path / TEST_IMAGES)
    shutil.copy(mnist_dir / TEST_LABELS, tmp_path / TEST_LABELS[:-3])
    with pytest.raises(MNISTFormatError, match=r"bad magic number.*gzip-compressed"):
        load_mnist("test", root=tmp_path, download=False)


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],  # stream cut short
        lambda gz: gz[:200] + b"\xde\xad\xbe\xef" * 64 + gz[456:],  # garbage in the stream
        lambda gz: gz[:-8] + _flip(gz[-8:], 0),  # CRC of the content wrong
        lambda gz: b"this is not gzip at all" * 10,
    ],
    ids=["cut", "garbage", "crc", "not-gzip"],
)
def test_corrupt_gzip_stream(tmp_path: Path, mnist_dir: Path, damage) -> None:
    shutil.copy(mnist_dir / TEST_IMAGES, tmp_path / TEST_IMAGES)
    (tmp_path / TEST_LABELS).write_bytes(damage((mnist_dir / TEST_LABELS).read_bytes()))
    with pytest.raises(MNISTFormatError, match=rf"{re.escape(TEST_LABELS)}: corrupt gzip stream"):
        load_mnist("test", root=tmp_path, download=False)


# ------------------------------------------------------------------------ downloads


def test_download_into_root(tmp_path: Path, server: _Server, test_split) -> None:
    root = tmp_path / "new" / "dir"
    images, labels = load_mnist("test", root=root, mirrors=[server.url("good")], timeout=2)
    assert _leftovers(root) == sorted([TEST_IMAGES, TEST_LABELS])
    for name in (TEST_IMAGES, TEST_LABELS):
        assert hashlib.md5((root / name).read_bytes()).hexdigest() == FILES[name].md5
    assert torch.equal(images, test_split[0]) and torch.equal(labels, test_split[1])


def test_download_into_env_directory(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAELIB_DATA", str(tmp_path / "env"))
    images, labels = load_mnist("test", mirrors=[server.url("good")], timeout=2)
    assert images.shape == (10000, 28, 28)
    assert _leftovers(tmp_path / "env") == sorted([TEST_IMAGES, TEST_LABELS])


def test_download_falls_back_to_next_mirror(tmp_path: Path, server: _Server) -> None:
    start = len(server.requests)
    mirrors = [_closed_port_url(), server.url("404"), server.url("500"), server.url("good")]
    path = download_file(TEST_LABELS, tmp_path, mirrors=mirrors, timeout=2)
    assert path == tmp_path / TEST_LABELS
    assert _leftovers(tmp_path) == [TEST_LABELS]
    assert server.requests[start:] == [f"/{m}/{TEST_LABELS}" for m in ("404", "500", "good")]


@pytest.mark.parametrize(
    "mode, pattern",
    [
        ("short", r"IncompleteRead|interrupted"),
        ("bad", r"wrong checksum: md5"),
        ("hang", r"timed out"),
        ("404", r"HTTP 404"),
        ("500", r"HTTP 500"),
    ],
)
def test_failed_download_leaves_nothing(
    tmp_path: Path, server: _Server, mode: str, pattern: str
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with pytest.raises(MNISTDownloadError, match=pattern) as info:
        download_file(TEST_LABELS, directory, mirrors=[server.url(mode)], timeout=0.3)
    assert TEST_LABELS in str(info.value)
    assert _leftovers(directory) == []


def test_interrupted_download_then_good_mirror(tmp_path: Path, server: _Server) -> None:
    mirrors = [server.url("short"), server.url("bad"), server.url("good")]
    download_file(TEST_IMAGES, tmp_path, mirrors=mirrors, timeout=2)
    assert _leftovers(tmp_path) == [TEST_IMAGES]
    assert hashlib.md5((tmp_path / TEST_IMAGES).read_bytes()).hexdigest() == FILES[TEST_IMAGES].md5


def test_offline_error_is_clear(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    mirrors = [_closed_port_url(), _closed_port_url()]
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist("test", root=root, mirrors=mirrors, timeout=1)
    message = str(info.value)
    for name in ALL_NAMES:
        assert name in message
    assert "VAELIB_DATA" in message
    assert str(root) in message
    assert "Downloading failed" in message and "127.0.0.1" in message
    assert not root.exists()  # the directory made for the download is removed again


def test_missing_without_download(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copy(mnist_dir / TEST_LABELS, tmp_path / TEST_LABELS)
    with pytest.raises(MNISTNotFoundError, match=re.escape(TEST_IMAGES)) as info:
        load_mnist("test", root=tmp_path, download=False)
    assert "VAELIB_DATA" in str(info.value) and str(tmp_path) in str(info.value)


def test_download_file_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown MNIST file"):
        download_file("emnist.gz", tmp_path, mirrors=[])


# --------------------------------------------------------------------- binarization


def _standard_error(p: torch.Tensor) -> float:
    """Standard error of the mean of independent Bernoulli(p) draws."""
    p = p.double()
    return math.sqrt(float((p * (1 - p)).sum())) / p.numel()


def test_to_float(test_split) -> None:
    images = test_split[0][:100]
    x = to_float(images)
    assert x.dtype == torch.float32 and x.shape == (100, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x, images.float() / 255)
    assert to_float(images, flatten=True).shape == (100, 784)
    assert to_float(images[0], flatten=True).shape == (784,)
    # floats in [0, 1] keep their dtype and values
    x64 = to_float(x.double())
    assert x64.dtype == torch.float64 and torch.equal(x64, x.double())
    half = torch.full((2, 28, 28), 0.5, dtype=torch.float16)
    assert to_float(half).dtype == torch.float16 and to_float(half, flatten=True).shape == (2, 784)
    assert torch.equal(to_float(half), half)


def test_image_size_constants() -> None:
    # IMAGE_SIZE counts the pixels of an image, IMAGE_SIDE its side
    assert data.IMAGE_SIDE == 28 and data.IMAGE_SIZE == 784 == data.IMAGE_SIDE**2


def test_binarize_dynamic(test_split) -> None:
    images = test_split[0]
    p = to_float(images)
    generator = torch.Generator().manual_seed(1)
    b = binarize_dynamic(images, generator=generator)
    assert b.dtype == torch.float32 and b.shape == images.shape
    assert set(torch.unique(b).tolist()) <= {0.0, 1.0}
    assert torch.all(b[p == 0] == 0) and torch.all(b[p == 1] == 1)
    assert abs(float(b.double().mean() - p.double().mean())) < 5 * _standard_error(p)
    # Per pixel position, averaged over images: each mean within 5 standard errors.
    per_pixel_se = (p.double() * (1 - p.double())).sum(0).sqrt() / p.shape[0]
    gap = (b.double().mean(0) - p.double().mean(0)).abs()
    assert torch.all(gap <= 5 * per_pixel_se + 1e-12)


def test_binarize_dynamic_randomness(test_split) -> None:
    images = test_split[0][:200]
    a = binarize_dynamic(images)
    b = binarize_dynamic(images)
    assert not torch.equal(a, b)  # fresh draws each call
    same1 = binarize_dynamic(images, generator=torch.Generator().manual_seed(7))
    same2 = binarize_dynamic(to_float(images), generator=torch.Generator().manual_seed(7))
    assert torch.equal(same1, same2)  # uint8 and float inputs agree
    # the one binarization: pixel j is on when u_j < p_j, with u = torch.rand(p.shape, generator=...)
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(same1, (u < to_float(images)).float())


def test_binarize_static(test_split) -> None:
    images = test_split[0][:2000]
    torch.manual_seed(123)
    a = binarize_static(images, seed=0)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(1000)  # a different global state must not matter
    b = binarize_static(images, seed=0)
    torch.manual_seed(123)
    binarize_static(images, seed=5)
    assert torch.equal(torch.rand(3), after_a)  # the global generator is left alone
    assert torch.equal(a, b)
    c = binarize_static(images, seed=1)
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32 and set(torch.unique(a).tolist()) <= {0.0, 1.0}
    assert torch.equal(binarize_static(to_float(images), seed=0), a)
    # binarize_dynamic with a CPU generator seeded with the seed
    assert torch.equal(binarize_dynamic(images, generator=torch.Generator().manual_seed(1)), c)
    p = to_float(images)
    assert abs(float(a.double().mean() - p.double().mean())) < 5 * _standard_error(p)


@pytest.mark.parametrize("fn", [binarize_dynamic, binarize_static, to_float])
def test_binarize_rejects_bad_input(fn) -> None:
    with pytest.raises(TypeError, match="uint8"):
        fn(torch.zeros(2, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(torch.full((2, 28, 28), 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(torch.full((2, 28, 28), -0.1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(torch.full((2, 28, 28), float("nan")))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn([[0.5]])


def test_mnist_tensors(mnist_dir: Path) -> None:
    x, y = data.mnist_tensors("test", root=mnist_dir, device="cpu", flatten=True)
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
