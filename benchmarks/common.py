"""Shared helpers of the training benchmarks: runs built exactly as ``kdlab-train`` builds them.

A benchmark run is composed from ``conf/train.yaml`` like any run (Hydra overrides), then
planned and built by ``kdlab.run_plan.plan_run`` / ``build_module``, and trained by a
``lightning.Trainer`` instantiated from the same trainer config with the same callbacks as
``kdlab.runner.execute`` (which builds them inline, so :func:`kdlab_trainer` mirrors it).
Only validation is switched off (``limit_val_batches=0``): it is not part of a training
step. Data is the Markov corpus with 256 states, so V = 256 as with the byte tokenizer.

Timing: the loops compared run in :class:`Lockstep`, one step each in turn, so that the
load of a shared machine, which drifts over seconds, cancels in per-step ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks.progress import rich_progress
from omegaconf import DictConfig
from rich.console import Console

from kdlab.configs import CONF_DIR
from kdlab.run_plan import RunPlan
from kdlab.runner import build_module, build_trainer, run_callbacks

MARKOV_TOKENS = 600_000  # teacher + student splits of ~270k tokens each, plus validation


_CONSOLES = threading.local()


def _thread_console() -> Any:
    console = getattr(_CONSOLES, "console", None)
    if console is None:
        console = _CONSOLES.console = Console()
    return console


def _thread_reconfigure(*args: Any, **kwargs: Any) -> None:
    _CONSOLES.console = Console(*args, **kwargs)


def isolate_rich_consoles() -> None:
    """Give each thread its own rich Console for Lightning's RichProgressBar.

    The default progress bar (rich is installed) draws on rich's one global console, and
    two Trainers running at once (the lockstep loops) would reset each other's live
    display. Per-thread consoles do the same drawing work, each on its own console.
    """
    rich_progress.get_console = _thread_console
    rich_progress.reconfigure = _thread_reconfigure


def quiet() -> None:
    """Silence Lightning's info lines and warnings (they would interleave with tables)."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every step-timing benchmark takes."""
    parser.add_argument("--steps", type=int, default=16, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=1, help="repeats with fresh models")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine 2 threads suffer from "
        "oversubscription; 0 keeps torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show Lightning's output")


def print_run_footer(args: argparse.Namespace, peaks: list[float], start: float) -> float:
    """What every step benchmark prints after timing; returns the peak its MFU uses."""
    peak = max(peaks)
    print(f"load average at end: {load_average()}")
    print(
        f"fp32 matmul peak (1024^3 torch.mm, best of start/end): {peak / 1e9:.1f} GFLOP/s "
        f"(start {peaks[0] / 1e9:.1f}, end {peaks[1] / 1e9:.1f})"
    )
    print(
        f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps in "
        f"lockstep, {args.repeats} repeat(s), {time.perf_counter() - start:.0f} s in all\n"
    )
    return peak


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> str:
    """A one-line description of the CPU, torch and thread count."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32"
    )


def run_config(
    root: Path,
    model: str,
    n_steps: int,
    batch_size: int,
    seed: int = 0,
    extra: tuple[str, ...] = (),
) -> DictConfig:
    """``conf/train.yaml`` composed for a run of ``n_steps`` batches of size ``batch_size``."""
    from kdlab.models.ladder import LADDERS

    ladder, name = model.split("_", 1)
    n_ctx = LADDERS[ladder][name].n_ctx
    overrides = [
        f"model={model}",
        "data=markov",
        "data.module.corpus.n_states=256",
        f"data.module.corpus.n_tokens={MARKOV_TOKENS}",
        f"data.module.batch_size={batch_size}",
        f"data.tokens={n_steps * batch_size * n_ctx}",
        "data.tokens_per_param=null",
        f"paths.root_dir={root}",
        f"seed={seed}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def build(cfg: DictConfig, plan: RunPlan) -> L.LightningModule:
    """The run's LightningModule, seeded as ``execute`` seeds it."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_module(cfg, plan)


class Lockstep:
    """Runs several training loops one step at a time, round robin, each in its own thread.

    Every loop calls :meth:`step` at the start of each batch (after fetching it); that
    hands the baton to the next loop and waits for it to come back, so exactly one loop
    computes at any time and step k of every loop runs within a few seconds of step k of
    the others: load drift on a shared machine hits all of them alike. A loop's step time
    is the time it held the baton from one batch start to the next, so it holds everything
    the loop does per step (the step, hooks, logging, fetching the next batch). Setup
    before the first batch and teardown after the last are not timed.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._events = [threading.Event() for _ in range(n)]
        self._active = [True] * n
        self._resumed: list[float | None] = [None] * n
        self.step_times: list[list[float]] = [[] for _ in range(n)]

    def _next(self, i: int) -> int | None:
        for k in range(1, self.n + 1):
            j = (i + k) % self.n
            if self._active[j]:
                return j
        return None

    def _pass(self, i: int) -> None:
        """Hand the baton on and wait for it (returns at once when ``i`` is alone)."""
        j = self._next(i)
        if j is not None and j != i:
            self._events[i].clear()  # before waking j, which may hand straight back
            self._events[j].set()
            self._events[i].wait()

    def step(self, i: int) -> None:
        """Loop ``i`` starts a batch: close its previous step, let the others step once."""
        now = time.perf_counter()
        if self._resumed[i] is not None:
            self.step_times[i].append(now - self._resumed[i])
        self._pass(i)
        self._resumed[i] = time.perf_counter()

    def finish(self, i: int) -> None:
        """Loop ``i`` ended (or failed): drop it from the ring and wake the next loop."""
        self._active[i] = False
        j = self._next(i)
        if j is not None:
            self._events[j].set()

    def run(self, loops: list[Callable[[Lockstep, int], Any]], mute: bool = True) -> list[Any]:
        """Run ``loops[i](self, i)`` in threads, in lockstep; return their results.

        ``mute`` sends stdout/stderr (progress bars) to /dev/null meanwhile (done here,
        once: redirecting per thread is not thread-safe).
        """
        if len(loops) != self.n:
            raise ValueError(f"expected {self.n} loops, got {len(loops)}")
        isolate_rich_consoles()
        results: list[Any] = [None] * self.n
        errors: list[BaseException] = []
        n_threads = torch.get_num_threads()

        def target(i: int) -> None:
            torch.set_num_threads(n_threads)  # OpenMP's thread count is per calling thread
            self._events[i].wait()  # setup runs under the baton too, one loop at a time
            try:
                results[i] = loops[i](self, i)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)
            finally:
                self.finish(i)

        threads = [threading.Thread(target=target, args=(i,)) for i in range(self.n)]
        with muted(mute):
            for thread in threads:
                thread.start()
            self._events[0].set()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        return results


class LockstepCallback(L.Callback):
    """Joins a Lightning fit to a :class:`Lockstep` ring; records each step's loss."""

    def __init__(self, lockstep: Lockstep, index: int) -> None:
        self.lockstep = lockstep
        self.index = index
        self.losses: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self.lockstep.step(self.index)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        loss = out["loss"] if isinstance(out, dict) else out
        self.losses.append(float(loss))


def kdlab_trainer(
    cfg: DictConfig,
    plan: RunPlan,
    extra_callbacks: tuple[L.Callback, ...] = (),
    runner_callbacks: bool = True,
    **overrides: Any,
) -> L.Trainer:
    """The Trainer of ``kdlab.runner.execute`` (same config, callbacks), validation off.

    ``runner_callbacks=False`` leaves out the runner's callbacks and ``overrides`` replace
    trainer settings (e.g. ``enable_progress_bar=False``): both only for finding overheads.
    """
    callbacks = run_callbacks(cfg, plan) if runner_callbacks else []
    overrides = {"limit_val_batches": 0, **overrides}
    return build_trainer(cfg, plan, [*callbacks, *extra_callbacks], **overrides)


@contextlib.contextmanager
def muted(enabled: bool = True) -> Iterator[None]:
    """Send stdout/stderr (the progress bar) to /dev/null while a fit runs."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        with contextlib.redirect_stdout(sink):
            yield


def fit_kdlab(
    cfg: DictConfig,
    plan: RunPlan,
    lockstep: Lockstep,
    index: int,
    log_metrics: str = "all",
    progress_bar: bool = True,
    runner_callbacks: bool = True,
) -> tuple[list[float], L.Trainer]:
    """Train a fresh module for the plan's steps through the runner's Trainer.

    Returns the step losses and the trainer (after the fit, e.g. to time a checkpoint).

    The switches turn single pieces off to measure what each costs: ``log_metrics``
    "none" makes the module's ``self.log``/``self.log_dict`` no-ops and "gated" lets them
    through only on the steps whose metrics Lightning hands to loggers (every
    ``log_every_n_steps``), ``progress_bar=False`` drops the progress bar,
    ``runner_callbacks=False`` the runner's callbacks.
    """
    module = build(cfg, plan)
    if log_metrics == "none":
        module.log = module.log_dict = _no_op  # type: ignore[method-assign]
    elif log_metrics == "gated":
        module.log = _gated(module, module.log)  # type: ignore[method-assign]
        module.log_dict = _gated(module, module.log_dict)  # type: ignore[method-assign]
    elif log_metrics != "all":
        raise ValueError(f"log_metrics must be all, gated or none, not {log_metrics!r}")
    timer = LockstepCallback(lockstep, index)
    overrides = {} if progress_bar else {"enable_progress_bar": False}
    trainer = kdlab_trainer(cfg, plan, (timer,), runner_callbacks, **overrides)
    trainer.fit(module, datamodule=plan.data)
    return timer.losses, trainer


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _gated(module: L.LightningModule, log_fn: Callable[..., None]) -> Callable[..., None]:
    """``log_fn`` called only on logging steps: (global_step + 1) % log_every_n_steps == 0."""

    def gated(*args: Any, **kwargs: Any) -> None:
        every = module.trainer.log_every_n_steps
        if every > 0 and (module.global_step + 1) % every == 0:
            log_fn(*args, **kwargs)

    return gated


def paired(times: list[float], base: list[float], warmup: int) -> list[tuple[float, float]]:
    """(t, t_base) of each step after ``warmup``: steps k of two lockstep loops."""
    return list(zip(times[warmup:], base[warmup:], strict=True))


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated ``q`` quantile."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def log(msg: str) -> None:
    """Progress line on stderr (kept apart from the result tables on stdout)."""
    print(msg, file=sys.stderr, flush=True)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
