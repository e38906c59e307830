"""Hardware probes and precision settings of the fast trainer: matrix-product speed, bfloat16, TF32."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


def matmul_flops_per_s(
    device: str | torch.device = "cpu", batch: int = 128, dtype: torch.dtype = torch.float32, seconds: float = 0.0
) -> float:
    """Measured speed (FLOP/s) of a matrix product of the fast trainer's largest shape, ``batch`` × 784
    by 784 × 512, in ``dtype`` on ``device``.

    With ``seconds=0`` a quick check: two warm-up products, then three timed one by one, of which
    the fastest counts (a pause of the machine during one of them must not pass for a slow
    product). Otherwise five warm-ups, then products in groups of ten (the device synchronized
    after each group) until ``seconds`` have passed, as ``benchmarks/train_speed.py`` measures.
    """
    dev = torch.device(device)
    a = torch.randn(batch, 784, device=dev).to(dtype)
    b = torch.randn(784, 512, device=dev).to(dtype)
    flop = 2 * batch * 784 * 512

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(5 if seconds > 0 else 2):
        a @ b
    sync()
    if seconds <= 0:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - start)
        return flop / min(times)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        sync()
    return flop * reps / (time.perf_counter() - start)


def bf16_matmul_speedup(device: str | torch.device = "cpu", batch: int = 128) -> float:
    """How many times as fast a bfloat16 matrix product runs as a float32 one on ``device``, for the
    fast trainer's largest shape (:func:`matmul_flops_per_s`, quick check); above 1 where the hardware
    multiplies bfloat16 natively.

    A few milliseconds where bfloat16 is native; where it is emulated each product can take 50 ms
    (with oneDNN limited to AVX2 one ran at 2 GFLOP/s against float32's 148). For a careful
    measurement use ``benchmarks/train_speed.py``, which times each product for a second.
    """
    return matmul_flops_per_s(device, batch, torch.bfloat16) / matmul_flops_per_s(device, batch, torch.float32)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """While the block runs, CUDA float32 matrix products use TF32 (``enabled``) or full float32.

    Afterwards the setting is exactly what it was, so training does not change the precision of
    what the caller computes next (an importance-weighted bound at large K, say). With torch 2.9
    and later this goes through ``torch.backends.cuda.matmul.fp32_precision``: reading the older
    ``allow_tf32`` flag raises an error once a program has set the newer one, and setting the older
    one would leave the newer one changed. Earlier versions have only ``allow_tf32``.
    """
    flags = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32" if enabled else "ieee") if hasattr(flags, "fp32_precision") \
        else ("allow_tf32", bool(enabled))
    saved = getattr(flags, name)
    setattr(flags, name, value)
    try:
        yield
    finally:
        setattr(flags, name, saved)
