"""Run SciPy's small optimisers with a single-threaded BLAS.

SciPy's L-BFGS-B and SLSQP call BLAS on vectors of 5-10 numbers. A multi-threaded
OpenBLAS then spends its time waking threads: on a machine whose cores are busy that
is milliseconds per iteration, 10-25x the work itself. ``threadpoolctl`` is the proper
tool and is used when installed; otherwise the OpenBLAS builds shipped in the NumPy and
SciPy wheels are told directly through their exported ``*openblas_set_num_threads*``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

_SETTERS = (
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
)


def _openblas_handles() -> list[tuple]:
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln}
        paths = {p for p in paths if p.endswith(".so")}
    except OSError:
        return []
    out = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SETTERS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                out.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    return out


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread inside the block, restored after."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(1, user_api="blas"):
            yield
        return
    handles = _openblas_handles()
    before = [get() for _, get in handles]
    for set_threads, _ in handles:
        set_threads(1)
    try:
        yield
    finally:
        for (set_threads, _), n in zip(handles, before, strict=True):
            set_threads(n)
