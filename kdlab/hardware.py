"""The peak a run's MFU is measured against: the device's dense-matmul FLOP/s."""

from __future__ import annotations

import functools
import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops


def measure_matmul_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 7
) -> float:
    """FLOP/s of an n x n x n matmul on ``device``: the best of ``repeats`` timings."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


@functools.cache
def matmul_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Datasheet peak on known GPUs; on CPUs, measured once per process.

    CPUs have no datasheet entry, and what matters for MFU is what this machine's BLAS
    reaches with the threads the run uses.
    """
    if torch.device(device).type == "cuda":
        known = get_available_flops(torch.device(device), dtype)
        if known:
            return float(known)
    return measure_matmul_flops(device, dtype)
