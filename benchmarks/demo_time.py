"""Wall time of the demo as the README runs it (``kdlab demo``), at each budget scale,
from an empty folder to the report, with the machine's load, and the CPU time of all
its processes (user + sys of the children): on a shared machine the wall time follows
the load, the CPU time much less.

    python benchmarks/demo_time.py --budget-scale 1 0.1 --out demo_time.json

Each scale runs in a fresh temporary root (a cold token cache too: the first run of the
demo on a machine pays for it). ``--extra`` passes Hydra overrides to every run, e.g.
``--extra threads=2 hydra/launcher=basic`` for the layout before the demo chose one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_demo(scale: float, extra: list[str], bootstrap: int) -> dict:
    """One demo from nothing; its wall and children's CPU seconds and stage times."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    with tempfile.TemporaryDirectory() as root:
        before = os.times()
        load_start, start = load(), time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "kdlab.cli", "demo", "--root", root]
            + ["--budget-scale", str(scale), "--bootstrap", str(bootstrap), *extra],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        after = os.times()
    if out.returncode:
        raise SystemExit(f"demo failed (exit {out.returncode}):\n{out.stdout[-3000:]}{out.stderr}")
    stages = dict(re.findall(r"^([\w, ]+): \d+/\d+ jobs ended in (\S+)$", out.stdout, re.M))
    return {
        "budget_scale": scale,
        "extra": extra,
        "wall_s": wall,
        "cpu_s": (after.children_user - before.children_user)
        + (after.children_system - before.children_system),
        "load_start": load_start,
        "load_end": load(),
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-scale", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--bootstrap", type=int, default=200, help="as the demo's default")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for scale in args.budget_scale:
        result = run_demo(scale, args.extra, args.bootstrap)
        results.append(result)
        print(
            f"budget scale {scale:g}: wall {result['wall_s']:.0f} s, CPU (user+sys) "
            f"{result['cpu_s']:.0f} s, load {result['load_start']} -> {result['load_end']}; "
            f"stages {result['stages']}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
