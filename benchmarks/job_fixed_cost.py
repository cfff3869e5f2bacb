"""What a sweep job costs beyond its training steps, at the demo's (nano study's) sizes.

Each job is composed from its sweep file of ``sweeps/nano`` as the multirun composes it,
then run by ``kdlab.runner.execute`` in this process, with timers around its phases:
Hydra compose, database open, corpus and token cache, teacher resolve, model build (and
teacher load), loggers, trainer build, training steps (``TrainClock``), validation passes
(every curve point and the final one), checkpoint writes, weights and database rows, and
the rest (Lightning's set-up and teardown). Process start (python and the imports of a
``kdlab-train -m`` process) is paid once per stage, not per job, and is timed apart in a
fresh interpreter. A job's total against its training steps is its fixed cost.

    python benchmarks/job_fixed_cost.py --budget-scale 1 0.1 --out fixed_cost.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import load_average, quiet

# the demo's jobs, one of each kind and the smallest and largest of a kind; a student
# needs its teacher, so the teacher job runs first
JOBS = (
    ("teachers", "model=nano_L2"),
    ("supervised", "model=nano_L1 data.tokens_per_param=10"),
    ("supervised", "model=nano_L2 data.tokens_per_param=40"),
    ("supervised_isoflop", "model=nano_L4 data.flops=3.0e10"),
    ("students", "model=nano_L1 teacher.model=nano_L2 data.tokens_per_param=10"),
)
PHASES = (
    "compose",
    "database open",
    "corpus and cache",
    "teacher resolve",
    "model build",
    "loggers",
    "trainer build",
    "training steps",
    "validation",
    "checkpoints",
    "weights and rows",
    "other",
)


class Timers:
    """Seconds per phase, added up by wrapping the functions that do each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, name, timed)


def instrument(timers: Timers, clocks: list) -> None:
    """Wrap the phases of ``execute`` (and keep each run's TrainClock)."""
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

    import kdlab.data.datamodule as datamodule
    import kdlab.run_plan as run_plan
    import kdlab.runner as runner
    from kdlab.checkpoints import AtomicCheckpointIO
    from kdlab.rundb.store import RunStore

    timers.wrap(run_plan, "open_store", "database open")
    timers.wrap(run_plan, "build", "corpus and cache")
    timers.wrap(datamodule.TokenDataModule, "prepare_data", "corpus and cache")
    timers.wrap(datamodule.TokenDataModule, "setup", "corpus and cache")
    timers.wrap(run_plan, "resolve", "teacher resolve")
    timers.wrap(runner, "build_module", "model build")
    for name in ("build_loggers", "finish_loggers", "log_run_artifacts"):
        timers.wrap(runner, name, "loggers")
    timers.wrap(runner, "build_trainer", "trainer build")
    timers.wrap(_EvaluationLoop, "run", "validation")
    timers.wrap(AtomicCheckpointIO, "save_checkpoint", "checkpoints")
    timers.wrap(runner, "save_weights", "weights and rows")
    for name in ("start", "finish"):
        timers.wrap(RunStore, name, "weights and rows")
    callbacks = runner.run_callbacks

    def keep_clock(*args: Any, **kwargs: Any) -> list:
        made = callbacks(*args, **kwargs)
        clocks.append(made[0])
        return made

    runner.run_callbacks = keep_clock


def process_start(repeats: int) -> dict[str, float]:
    """Median seconds of a bare interpreter and of one importing what a multirun imports."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = {}
    for label, code in (
        ("python", "pass"),
        ("python + imports", "import kdlab.train, kdlab.runner, kdlab.sweeps"),
    ):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
    return out


def run_job(root: Path, stage: str, overrides: str, scale: float, threads: int) -> dict:
    """One job composed from its sweep file and executed with timers; its phases."""
    from hydra import compose, initialize_config_dir

    import kdlab.runner as runner
    from kdlab.configs import CONF_DIR, SWEEPS_DIR

    timers, clocks = Timers(), []
    instrument(timers, clocks)
    start = time.perf_counter()
    with initialize_config_dir(config_dir=str(SWEEPS_DIR / "nano"), version_base="1.3"):
        cfg = compose(
            stage,
            overrides=[
                f"hydra.searchpath=[file://{CONF_DIR}]",
                *overrides.split(),
                f"paths.root_dir={root}",
                f"data.budget_scale={scale}",
                f"threads={threads}",
                "trainer.enable_progress_bar=false",
            ],
        )
    timers.seconds["compose"] = time.perf_counter() - start
    row = runner.execute(cfg)
    total = time.perf_counter() - start
    timers.seconds["training steps"] = clocks[-1].seconds
    # the evaluation loop runs inside fit, whose checkpoints are timed apart
    timers.seconds["other"] = total - sum(timers.seconds.values())
    return {
        "stage": stage,
        "job": overrides,
        "budget_scale": scale,
        "tokens": row["tokens"],
        "steps": row["steps"],
        "status": row["status"],
        "total_s": total,
        "phases_s": {p: timers.seconds.get(p, 0.0) for p in PHASES},
    }


def _in_subprocess(args: argparse.Namespace, root: Path, scale: float) -> list[dict]:
    """Every job of one budget scale in a fresh interpreter (wrappers do not stack)."""
    out = root / f"jobs-{scale}.json"
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--one-scale",
            str(scale),
            "--root",
            str(root),
            "--threads",
            str(args.threads),
            "--out",
            str(out),
        ],
        check=True,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-scale", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="process start timings")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--one-scale", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")

    if args.one_scale is not None:  # the child: one scale's jobs in this process
        quiet()
        root = Path(args.root) / f"scale-{args.one_scale}"
        jobs = [run_job(root, s, o, args.one_scale, args.threads) for s, o in JOBS]
        Path(args.out).write_text(json.dumps(jobs))
        return

    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        starts = process_start(args.repeats)
        jobs = [
            job for scale in args.budget_scale for job in _in_subprocess(args, Path(tmp), scale)
        ]
    print(f"load average {load_start} at start, {load_average()} at end")
    for label, seconds in starts.items():
        print(f"{label:<18} {seconds:6.2f} s (once per stage: one process runs its jobs)")
    short = {
        "corpus and cache": "corpus",
        "teacher resolve": "teacher",
        "trainer build": "trainer",
        "training steps": "train",
        "validation": "val",
        "checkpoints": "ckpt",
        "weights and rows": "rows",
        "database open": "db",
        "model build": "model",
    }
    header = ["scale", "job", "tokens", "steps", "total", *(short.get(p, p) for p in PHASES)]
    print(" | ".join(header))
    for job in jobs:
        phases = job["phases_s"]
        print(
            " | ".join(
                [
                    f"{job['budget_scale']:g}",
                    f"{job['stage']} {job['job']}",
                    str(job["tokens"]),
                    str(job["steps"]),
                    f"{job['total_s']:.2f}",
                    *(f"{phases[p]:.2f}" for p in PHASES),
                ]
            )
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "load_start": load_start,
                    "load_end": load_average(),
                    "process_start_s": starts,
                    "jobs": jobs,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
