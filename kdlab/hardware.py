"""The peak a run's MFU is measured against: the device's dense-matmul FLOP/s."""

from __future__ import annotations

import functools
import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops


@functools.cache
def matmul_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Datasheet peak on known GPUs; on CPUs, measured with large square matmuls.

    CPUs have no datasheet entry, and what matters for MFU is what this machine's BLAS
    reaches with the threads the run uses.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        known = get_available_flops(dev, dtype)
        if known:
            return float(known)
    n = 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best
