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

A child is a new program (``subprocess.Popen``), or a fork of a :class:`Zygote`: a server
process that imported torch and Lightning once, so that each of a study's short jobs does
not pay seconds of imports before its first step.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import forkserver
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


def new_program(argv: Sequence[str], options: dict[str, Any]) -> subprocess.Popen:
    """A child as a new program in a session (so a process group) of its own."""
    return subprocess.Popen(argv, start_new_session=True, **options)


def run_children(
    commands: Sequence[tuple[Sequence[str], dict[str, Any]]],
    slots: int = 1,
    tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
    grace_s: float = GRACE_S,
    start_child: Callable[[Sequence[str], dict[str, Any]], Any] = new_program,
) -> list[int | None]:
    """Run ``commands`` (argv and Popen keywords), at most ``slots`` at once in the order
    given, calling ``tick`` every ``tick_s`` seconds; each one's exit code, None for one
    never started: once one has failed, or a stop signal came, no new one starts.
    ``start_child`` starts one (a new program, or ``Zygote.start``); each child leads a
    process group of its own.

    A stop signal to this process goes to every running child's whole process group;
    after ``grace_s`` the groups are killed, and those children's codes are 128 + the
    signal's number. Whatever a child left running in its group when it ended is killed.
    """
    slots = max(1, slots)
    codes: list[int | None] = [None] * len(commands)
    pending = list(range(len(commands)))
    running: dict[int, Any] = {}  # Popen, or a ForkedChild (the same four methods)
    stopped: list[tuple[int, float]] = []  # the first stop signal and when it came

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopped:
            stopped.append((signum, time.monotonic()))
        for child in list(running.values()):
            _signal_group(child.pid, signum)

    def start(i: int) -> None:
        argv, popen = commands[i]
        env = {**(popen.get("env") or os.environ), PARENT_ENV: str(os.getpid())}
        running[i] = start_child(argv, {**popen, "env": env})

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


class Zygote:
    """A process that imports ``modules`` once (multiprocessing's fork server) and forks
    each child from there, to run a module as ``python -m`` would with its own arguments,
    environment and log file. torch and Lightning cost seconds of CPU to import, longer
    than a small job of a demo trains; forked children share the imported pages.

    Forking is safe here for the reason it is in a DataLoader's workers: the server has
    imported but never computed (no thread pool, no CUDA context)."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(modules))
        self.forked = 0

    def __enter__(self) -> Zygote:
        """The server starts (and imports) now, beside whatever the caller does next."""
        forkserver.ensure_running()
        return self

    def __exit__(self, *exc: object) -> None:
        """The server ends once its children have (run_children leaves none running), so
        it and their CPU time are accounted to this process, as any child's are. The
        method is private, multiprocessing's own tests use it; Python 3.8 to 3.13 have it.
        A server that forked nothing (a study with nothing left to run) is stopped at once,
        not after its imports."""
        server = forkserver._forkserver
        if not self.forked and server._forkserver_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server._forkserver_pid, signal.SIGTERM)
        server._stop()

    def start(self, argv: Sequence[str], options: dict[str, Any]) -> ForkedChild:
        """``[python, -m, module, *args]`` forked from the server, which calls the
        module's ``main()`` (its console script); ``options``: ``env`` and ``log`` (the
        file its stdout and stderr go to), nothing else."""
        python, flag, module, *args = argv
        if (python, flag) != (sys.executable, "-m") or set(options) - {"env", "log"}:
            raise ValueError(f"a zygote runs 'python -m module' with env and log: {argv}")
        process = self.context.Process(
            target=_forked_main, args=(module, args, options["env"], str(options["log"]))
        )
        process.start()
        self.forked += 1
        return ForkedChild(process)


class ForkedChild:
    """A child of a Zygote, with the part of Popen's interface that run_children uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # like Popen's: -N when signal N ended it

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return self.process.exitcode


def _forked_main(module: str, args: list[str], env: dict[str, str], log: str) -> None:
    """In the forked child: a process group of its own, the given environment and log
    file, then ``module.main()``. Its parent is the server, which outlives the command
    while any child of it runs, so the child watches the command itself."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    command = os.environ.pop(PARENT_ENV, None)
    if command is not None:
        _stop_when_gone(int(command))
    program = importlib.import_module(module)  # imported by the server already
    sys.argv = [program.__file__ or module, *args]
    try:
        program.main()
    finally:  # multiprocessing ends a child with os._exit: run what a program's exit runs
        atexit._run_exitfuncs()


def _stop_when_gone(pid: int) -> None:
    """SIGTERM to this process when process ``pid`` ends, even by SIGKILL: a thread waits
    on the process's descriptor (Linux 5.3 and later; elsewhere the command's forwarding
    of its own stop signals is all there is)."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:  # it ended before this child began
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except (AttributeError, OSError):
        return

    def wait() -> None:
        select.select([descriptor], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="kdlab-stop-when-gone", daemon=True).start()


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
