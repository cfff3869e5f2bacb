"""Process lifetime: a stop signal ends a run cleanly and reaches every child process.

kdlab-train turns SIGTERM, SIGINT and SIGHUP into ``RunInterrupted`` while a run trains,
so the run records itself ``interrupted`` and the process exits with 128 + the signal's
number, as a shell reports a killed command. A handler someone else installed (submitit's
under SLURM, which owns requeueing; nohup's ignored SIGHUP) is left in place.

``kdlab study`` and ``kdlab sweep run`` start each sweep as a child in a process group of
its own and forward those signals to the whole group (the sweep's jobs, their workers),
wait a bounded time for the runs to record themselves, then kill what is left; nothing
outlives the command. On Linux the child is also told to stop when its parent dies
outright (SIGKILL), which no handler can see.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PARENT_ENV = "KDLAB_PARENT_PID"  # set for a child that must stop when its parent dies
GRACE_S = 60.0  # how long a signalled sweep may take to record its runs before the kill
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)
_PR_SET_PDEATHSIG = 1


class RunInterrupted(BaseException):
    """A stop signal arrived while a run trained (a BaseException, like KeyboardInterrupt,
    so no ``except Exception`` on the way swallows it). ``requeued_exit`` is the exit
    status a scheduler's handler chose after requeueing the job (submitit's local
    executor requeues a job whose task exits with 144), which the process must keep."""

    def __init__(self, signum: int, requeued_exit: int | str | None = None) -> None:
        self.signum = signum
        self.requeued_exit = requeued_exit
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def _handling(
    handler: Callable[[int, FrameType | None], Any], only_defaults: bool
) -> Iterator[None]:
    """Install ``handler`` for the stop signals inside the block (main thread only);
    with ``only_defaults``, only where no one else installed a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if only_defaults and current not in _DEFAULTS:
            continue
        previous[signum] = current
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Stop:
    """The stop signal that arrived inside ``stop_signals``, if any."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals() -> Iterator[Stop]:
    """Inside the block the first stop signal raises RunInterrupted (and is kept in the
    yielded Stop, for code that sees only what that exception turned into on its way up);
    later ones are ignored, so that recording the interruption is not itself interrupted."""
    stop = Stop()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is None:
            stop.signum = signum
            raise RunInterrupted(signum)

    with _handling(handler, only_defaults=True):
        yield stop


def run_child(
    command: Sequence[str],
    tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
    grace_s: float = GRACE_S,
    **popen: Any,
) -> int:
    """Run ``command`` to its end, calling ``tick`` every ``tick_s`` seconds; its exit code
    (``run_children`` with one child)."""
    [code] = run_children([(command, popen)], 1, tick, tick_s, grace_s)
    assert code is not None
    return code


def run_children(
    commands: Sequence[tuple[Sequence[str], dict[str, Any]]],
    slots: int = 1,
    tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
    grace_s: float = GRACE_S,
) -> list[int | None]:
    """Run ``commands`` (argv and Popen keywords), at most ``slots`` at once in the order
    given, calling ``tick`` every ``tick_s`` seconds; each one's exit code, None for one
    never started: once one has failed, or a stop signal came, no new one starts.

    A stop signal to this process goes to every running child's whole process group;
    after ``grace_s`` the groups are killed, and those children's codes are 128 + the
    signal's number. Whatever a child left running in its group when it ended is killed.
    """
    slots = max(1, slots)
    codes: list[int | None] = [None] * len(commands)
    pending = list(range(len(commands)))
    running: dict[int, subprocess.Popen] = {}
    stopped: list[tuple[int, float]] = []  # the first stop signal and when it came

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopped:
            stopped.append((signum, time.monotonic()))
        for child in list(running.values()):
            _signal_group(child.pid, signum)

    def start(i: int) -> None:
        argv, popen = commands[i]
        env = {**(popen.get("env") or os.environ), PARENT_ENV: str(os.getpid())}
        popen = {**popen, "env": env}
        running[i] = subprocess.Popen(argv, start_new_session=True, **popen)

    def reap(i: int) -> None:
        child = running.pop(i)
        codes[i] = 128 + stopped[0][0] if stopped else child.returncode
        _signal_group(child.pid, signal.SIGKILL)  # anything the child left behind

    next_tick = time.monotonic() + tick_s
    try:
        with _handling(forward, only_defaults=False):
            while pending or running:
                failed = any(codes)  # a nonzero exit (None: not ended)
                while pending and len(running) < slots and not stopped and not failed:
                    start(pending.pop(0))
                if not running:
                    break
                for i in [i for i, child in running.items() if child.poll() is not None]:
                    reap(i)
                time.sleep(0.05)
                if tick is not None and time.monotonic() >= next_tick:
                    next_tick += tick_s
                    tick()
                if stopped and time.monotonic() - stopped[0][1] > grace_s:
                    for child in running.values():
                        _signal_group(child.pid, signal.SIGKILL)
    finally:
        for child in running.values():  # this process is failing: take the children along
            _signal_group(child.pid, signal.SIGTERM)
        for i, child in list(running.items()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=grace_s)
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()
            reap(i)
    return codes


def threads_per_job(n_jobs: int) -> int:
    """Torch threads for each of ``n_jobs`` processes training at once on this machine."""
    return max(1, (os.cpu_count() or 1) // n_jobs)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def die_with_parent() -> None:
    """In a child started by run_child: stop (SIGTERM) when the parent dies, even by SIGKILL.

    Linux only (prctl); elsewhere the parent's forwarding is all there is. The variable is
    removed so this process's own children do not mistake it for theirs.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
