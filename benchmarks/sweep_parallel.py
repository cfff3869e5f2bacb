"""A nano grid with the joblib launcher (2 workers) against the basic launcher (serial).

Both run the same grid from an empty directory in this one invocation, in alternating
order over the repeats, so machine load hits both alike; then the finished grid is
launched again to time what a relaunch costs when every job is skipped.

    python3 benchmarks/sweep_parallel.py [--repeats 1] [--grid "model=nano_L1,nano_L2 ..."]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kdlab.study import sweep_command
from kdlab.sweeps import sweep_file

REPO = Path(__file__).resolve().parent.parent
GRID = ["model=nano_L1,nano_L2", "data.tokens_per_param=10,20"]


def launch(root: Path, grid: list[str], parallel: bool, cache: Path) -> float:
    settings = [f"paths.root_dir={root}", f"paths.cache_dir={cache}"]
    command = sweep_command(
        sweep_file("nano/supervised"), [*settings, "trainer.enable_progress_bar=false", *grid]
    )
    if parallel:
        command.append("hydra/launcher=parallel")
    else:
        command.append("threads=2")  # the serial job may use both cores
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--grid", default=" ".join(GRID), help="Hydra sweep overrides")
    args = parser.parse_args()
    grid = args.grid.split()
    work = Path(tempfile.mkdtemp(prefix="kdlab-sweep-bench-"))
    cache = work / "cache"
    launch(work / "warm", ["model=nano_L1", "data.tokens_per_param=1"], False, cache)  # token cache
    serial, parallel = [], []
    for i in range(args.repeats):
        for is_parallel in (False, True) if i % 2 == 0 else (True, False):
            root = work / f"{'parallel' if is_parallel else 'serial'}-{i}"
            (parallel if is_parallel else serial).append(launch(root, grid, is_parallel, cache))
    relaunch = launch(work / "serial-0", grid, False, cache)
    s, p = statistics.median(serial), statistics.median(parallel)
    print(f"grid: {' '.join(grid)} ({args.repeats} repeat(s))")
    print(f"serial (basic launcher, 2 threads):   {s:7.1f} s")
    print(f"parallel (joblib, 2 workers x 1 thread): {p:7.1f} s")
    print(f"speed-up: {s / p:.2f}x")
    print(f"relaunch of the finished grid (all skipped): {relaunch:.1f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
