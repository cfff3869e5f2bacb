"""A study's jobs as they train: each job writes a small file, ``kdlab study`` draws them.

A job started by ``kdlab study`` finds a folder in ``KDLAB_PROGRESS_DIR`` and keeps one
file there, ``<run key>.json``, replaced whole (written beside, then renamed) about once a
second while it trains and once more when it ends: its size N, budget D, tokens so far,
training loss, tokens/s and time left. The study reads the folder every second
(:class:`StageBoard`) and draws a line per job and the stage's time left (rich, on a
terminal), or prints one line per job that ended (anywhere else: a log stays readable).
Files rather than the run database: its heartbeat is for liveness, every 30 s, and a file
per job needs no schema and no lock. Nothing here imports torch: the study's process
never trains.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

PROGRESS_ENV = "KDLAB_PROGRESS_DIR"
WRITE_EVERY_S = 1.0
ENDED = ("done", "failed", "interrupted")


def fmt_count(x: float) -> str:
    """198000000 -> '198M', 1.82e9 -> '1.82B': how the paper names sizes and tokens."""
    x = float(x)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_seconds(seconds: float | None) -> str:
    """42 -> '42s', 300 -> '5m', 9000 -> '2.5h'; None -> '-'."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class JobProgress:
    """The file one job keeps in the study's progress folder (none outside a study)."""

    def __init__(self, key: str, **facts: Any) -> None:
        folder = os.environ.get(PROGRESS_ENV)
        self.path = Path(folder) / f"{key}.json" if folder else None
        self.state: dict[str, Any] = {
            "key": key,
            "status": "running",
            "opened": time.time(),
            **facts,
        }
        self.started = time.perf_counter()
        self._written = 0.0

    def due(self) -> bool:
        """Whether an update would be written now (at most every WRITE_EVERY_S seconds)."""
        return self.path is not None and time.perf_counter() - self._written >= WRITE_EVERY_S

    def update(self, tokens_done: int, loss: float, tokens_per_sec: float) -> None:
        """Where training is (``tokens_done`` is steps x batch tokens: a short last batch
        would take it past D)."""
        now = time.perf_counter()
        elapsed = now - self.started
        total = self.state["tokens"]
        tokens_done = min(tokens_done, total)
        left = elapsed * (total - tokens_done) / tokens_done if tokens_done else None
        self._write(
            tokens_done=tokens_done,
            loss=loss,
            tokens_per_sec=tokens_per_sec,
            elapsed_s=elapsed,
            left_s=left,
        )

    def end(self, status: str, loss: float | None, tokens_per_sec: float) -> None:
        """The job ended: its status, final validation loss and training tokens/s."""
        if self.path is not None:
            self._write(
                status=status,
                val_loss=loss,
                tokens_per_sec=tokens_per_sec,
                elapsed_s=time.perf_counter() - self.started,
                left_s=0.0,
            )

    def _write(self, **fields: Any) -> None:
        self.state.update(fields)
        self._written = time.perf_counter()
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(json.dumps(self.state))
        os.replace(partial, self.path)


def read_jobs(folder: Path) -> list[dict[str, Any]]:
    """Every job's last state in ``folder``, in the order the jobs started."""
    jobs = []
    for path in folder.glob("*.json"):
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # replaced between the listing and the read
            continue
    return sorted(jobs, key=lambda job: job.get("opened", 0.0))


def job_line(job: dict[str, Any]) -> str:
    """One job in one line: size, budget, where it is, loss, speed and time left."""
    head = (
        f"{job['role']:<10} {job['model']:<8} N {fmt_count(job['n_params']):>6}  "
        f"D {fmt_count(job['tokens']):>6}"
    )
    if job["status"] in ENDED:
        loss = "-" if job.get("val_loss") is None else f"{job['val_loss']:.4f}"
        speed = job.get("tokens_per_sec")
        rate = f"{fmt_count(speed)} tok/s" if speed else "- tok/s"
        return (
            f"{head}  {job['status']}: val loss {loss}, {rate}, {fmt_seconds(job.get('elapsed_s'))}"
        )
    done = job.get("tokens_done", 0)
    if not done:
        return f"{head}  starting"
    return (
        f"{head}  {100 * done / job['tokens']:3.0f}%  loss {job['loss']:.3f}  "
        f"{fmt_count(job['tokens_per_sec'])} tok/s  left {fmt_seconds(job['left_s'])}"
    )


def stage_left(jobs: list[dict[str, Any]], stage_flops: float, elapsed: float) -> float | None:
    """Seconds until the stage ends, at the FLOP rate its jobs reached so far (start-up,
    validation and checkpoints included); ``stage_flops`` is the compute of the jobs it
    runs."""
    done = sum(
        job["flops"]
        * (1.0 if job["status"] in ENDED else job.get("tokens_done", 0) / job["tokens"])
        for job in jobs
    )
    if done <= 0 or elapsed <= 0:
        return None
    return max(0.0, stage_flops - done) / (done / elapsed)


class StageBoard:
    """What ``kdlab study`` shows while a stage's jobs run: on a terminal, a line per job
    redrawn every tick and the stage's time left; elsewhere one line per job that ended.

    ``flops`` is the compute of the jobs the stage runs; ``estimate`` the plan's seconds
    for them (from finished runs in the database), shown until the stage's own rate is
    known."""

    def __init__(
        self,
        stage: str,
        jobs: int,
        flops: float,
        folder: Path,
        console: Console,
        estimate: float | None = None,
    ) -> None:
        self.stage, self.jobs, self.flops, self.folder = stage, jobs, flops, folder
        self.console, self.estimate = console, estimate
        self.live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        self.printed: set[str] = set()
        self.start = time.perf_counter()

    def __enter__(self) -> StageBoard:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick(final=True)
        if self.live is not None:
            self.live.stop()
        else:
            self.console.print(self.summary(read_jobs(self.folder), final=True), highlight=False)

    def summary(self, jobs: list[dict[str, Any]], final: bool = False) -> str:
        """The stage in one line: jobs ended, time so far and, until it ends, time left."""
        elapsed = time.perf_counter() - self.start
        ended = sum(job["status"] in ENDED for job in jobs)
        line = f"{self.stage}: {ended}/{self.jobs} jobs ended in {fmt_seconds(elapsed)}"
        if final:
            return line
        left = stage_left(jobs, self.flops, elapsed)
        if left is None and self.estimate is not None:
            left = max(0.0, self.estimate - elapsed)
        shown = "unknown" if left is None else f"about {fmt_seconds(left)}"
        return f"{line}, stage time left {shown}"

    def tick(self, final: bool = False) -> None:
        """Read the jobs' files and show them (``final``: the stage has ended)."""
        jobs = read_jobs(self.folder)
        if self.live is not None:
            summary = Text(self.summary(jobs, final), style="bold")
            self.live.update(Group(*(Text(job_line(job)) for job in jobs), summary), refresh=True)
            return
        for job in jobs:
            if job["status"] in ENDED and job["key"] not in self.printed:
                self.printed.add(job["key"])
                self.console.print(job_line(job), highlight=False)
