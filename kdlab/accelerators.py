"""Common accelerators: memory and dense bf16 peak, for planning before launch.

Used where a job's memory per GPU, wall time or cost is estimated (``kdlab sweep plan
--gpu``, ``kdlab dashboard``). Peaks are the vendors' datasheet numbers for dense bf16
tensor-core matmuls (without structured sparsity); memory is what the card reports to
the driver, a little under the nominal size on some cards. A run's measured MFU says how
much of the peak a real job reaches.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    memory_bytes: int
    bf16_peak_flops: float  # dense, per device
    description: str


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("a100-40gb", 40 * GIB, 312e12, "NVIDIA A100 SXM 40 GB"),
        Accelerator("a100-80gb", 80 * GIB, 312e12, "NVIDIA A100 SXM 80 GB"),
        Accelerator("h100-80gb", 80 * GIB, 989e12, "NVIDIA H100 SXM 80 GB"),
        Accelerator("h100-pcie-80gb", 80 * GIB, 756e12, "NVIDIA H100 PCIe 80 GB"),
        Accelerator("h200-141gb", 141 * GIB, 989e12, "NVIDIA H200 SXM 141 GB"),
        Accelerator("l40s-48gb", 48 * GIB, 362e12, "NVIDIA L40S 48 GB"),
    )
}


def get_accelerator(name: str) -> Accelerator:
    """The table's entry for ``name`` (case-insensitive); ValueError names the choices."""
    found = ACCELERATORS.get(name.lower())
    if found is None:
        raise ValueError(f"unknown GPU '{name}'; known GPUs: {', '.join(ACCELERATORS)}")
    return found
