"""Runs that get stuck or lie: torn checkpoints, killed and signalled runs and studies,
forced re-runs, runs that learned nothing, fits across recipes.

Real Lightning Trainer, real SQLite files, real processes and signals.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdlab.rundb import RunStore
from tests.conftest import FAST, REPO, compose_run, run_cli

TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
# 800 steps, checkpointed every 10: long enough that a signal lands mid-run
LONG = ["model=nano_L1", "data.tokens=409600", "data.tokens_per_param=null"]
LONG.append("checkpoint.every_n_steps=10")


def _db(root: Path) -> RunStore:
    return RunStore(f"sqlite:///{root}/runs/kdlab.db")


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 180.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _launch(root: Path, *args: str, module: str = "kdlab.train") -> subprocess.Popen:
    """A command in the background, as a user starts it; its output goes to root/out.txt."""
    root.mkdir(parents=True, exist_ok=True)
    out = (root / "out.txt").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a test's signal reaches only the command it targets
    )


def _running_row(root: Path) -> dict | None:
    if not (root / "runs" / "kdlab.db").exists():
        return None
    rows = [r for r in _db(root).find(status="running") if r["pid"]]
    return rows[0] if rows else None


def _checkpointed(root: Path) -> Path | None:
    found = list(root.glob("runs/*/checkpoints/last.ckpt"))
    return found[0] if found else None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- 4: checkpoints are written whole or not at all, and a torn one is set aside -------


STATE = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import kdlab.checkpoints
    from kdlab.checkpoints import AtomicCheckpointIO, unreadable

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, path)
    before = path.read_bytes()

    def disk_full(obj, handle):
        handle.write(before[: len(before) // 2])  # half a checkpoint, then no space
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kdlab.checkpoints.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({**STATE, "global_step": 4}, path)
    assert path.read_bytes() == before  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    monkeypatch.undo()
    assert unreadable(path) is None
    assert torch.load(path, weights_only=True)["global_step"] == 3


def test_checkpoints_never_go_through_the_temp_dir(train, tmp_path, monkeypatch):
    """Lightning's own writer stages the file in the system temp dir and copies it across
    (on a full disk, a truncated last.ckpt); kdlab's trainer writes beside the target."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from kdlab.checkpoints import AtomicCheckpointIO

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-dir"))
    with pytest.raises(FileNotFoundError):
        TorchCheckpointIO().save_checkpoint(STATE, tmp_path / "lightning.ckpt")
    AtomicCheckpointIO().save_checkpoint(STATE, tmp_path / "kdlab.ckpt")
    assert torch.load(tmp_path / "kdlab.ckpt", weights_only=True)["global_step"] == 3

    row = train(*TINY)  # every checkpoint of a whole run, with that temp dir
    assert row["status"] == "done"
    ckpt = torch.load(Path(row["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == row["steps"]


def test_the_newest_checkpoint_that_loads_is_resumed_and_a_torn_one_set_aside(tmp_path, capsys):
    from kdlab.checkpoints import AtomicCheckpointIO, resume_point

    older, newer = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, older)
    AtomicCheckpointIO().save_checkpoint({**STATE, "global_step": 9}, newer)
    os.utime(older, (time.time() - 60, time.time() - 60))
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])  # a torn copy

    assert resume_point([older, newer]) == older
    # set aside beside it, under no name a resume (kdlab's or Lightning's) would take
    [aside] = (newer.parent / ".kdlab-aside").iterdir()
    assert re.fullmatch(r"last\.ckpt\.corrupt-\d{8}-\d{6}-\d{6}", aside.name)
    assert aside.read_bytes() == data[: len(data) // 2]
    warning = capsys.readouterr().err
    assert f"checkpoint {newer} does not load" in warning and aside.name in warning
    older.write_bytes(b"not a checkpoint")
    assert resume_point([older, newer]) is None  # nothing good left: from scratch
    assert not older.exists()


def test_a_torn_checkpoint_of_an_interrupted_run_trains_it_again(train, tmp_path, capsys):
    """The relaunch no longer fails on every attempt (OSError 22): it sets the file aside,
    trains from scratch, and ends exactly where an uninterrupted run ends."""
    clean = train(*TINY)
    store = _db(tmp_path)
    store.update(clean["key"], status="running", val_loss=None)  # as a killed run leaves it
    ckpt = Path(clean["run_dir"]) / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()

    again = train(*TINY)
    assert "does not load" in capsys.readouterr().err
    assert again["status"] == "done" and again["val_loss"] == clean["val_loss"]
    set_aside = ckpt.parent / ".kdlab-aside"
    assert [p.name.split(".corrupt-")[0] for p in set_aside.glob("*.corrupt-*")] == ["last.ckpt"]


@pytest.mark.slow
def test_a_killed_run_with_a_torn_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _launch(killed, f"paths.root_dir={killed}", *FAST, *LONG)
    ckpt = _wait_for(lambda: _checkpointed(killed), "the first checkpoint")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt.write_bytes(ckpt.read_bytes()[:-100])  # the tail lost, as on a full disk

    resumed = run_cli("kdlab.train", f"paths.root_dir={killed}", *FAST, *LONG)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "does not load" in resumed.stderr
    reference = run_cli("kdlab.train", f"paths.root_dir={clean}", *FAST, *LONG)
    assert reference.returncode == 0, reference.stderr[-2000:]
    key = ckpt.parent.parent.name
    a, b = _db(killed).get(key), _db(clean).get(key)
    assert a["status"] == b["status"] == "done" and a["val_loss"] == b["val_loss"]
    strip = [(p["step"], p["tokens"], p["val_loss"]) for p in _db(clean).curve(key)]
    assert [(p["step"], p["tokens"], p["val_loss"]) for p in _db(killed).curve(key)] == strip


# -- 5: a heartbeat tells a killed run from a live one; every exit records a status -----


def test_a_running_row_without_a_live_process_shows_as_interrupted(tmp_path):
    import datetime as dt

    from kdlab.cli import main
    from kdlab.rundb.query import runs_frame
    from kdlab.rundb.store import STALE_S

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    old = now - dt.timedelta(seconds=STALE_S + 5)
    for key, fields in {
        "live": {},  # this process
        "killed-here": {"pid": int(exited)},  # its process is gone
        "silent-elsewhere": {"host": "node-7", "heartbeat_at": old},
        "beating-elsewhere": {"host": "node-7", "heartbeat_at": now},
    }.items():
        store.start(key, role="teacher")
        if fields:
            store.update(key, **fields)
    store.start("stopped", role="teacher")
    store.interrupt("stopped", "interrupted by SIGTERM")

    shown = dict(zip(*(runs_frame(url)[c] for c in ("key", "status")), strict=True))
    assert shown == {
        "live": "running",
        "killed-here": "interrupted",
        "silent-elsewhere": "interrupted",
        "beating-elsewhere": "running",
        "stopped": "interrupted",
    }
    assert sorted(runs_frame(url, status="interrupted")["key"]) == [
        "killed-here",
        "silent-elsewhere",
        "stopped",
    ]
    assert main(["runs", "--db", url, "list", "--status", "running"]) == 0


def test_the_heartbeat_beats_while_the_block_runs(tmp_path):
    import datetime as dt

    from kdlab.callbacks import Heartbeat

    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    store.start("k", role="teacher")
    long_ago = dt.datetime(2000, 1, 1)
    store.update("k", heartbeat_at=long_ago)
    stamp = store.get("k")["updated_at"]
    with Heartbeat(store, "k", every_s=0.05) as beat:
        _wait_for(lambda: store.get("k")["heartbeat_at"] > long_ago, "a heartbeat", 10)
    assert not beat._thread.is_alive()
    row = store.get("k")
    assert row["pid"] == os.getpid() and row["updated_at"] == stamp  # a beat is no change


def test_signals_become_an_interruption_only_where_nobody_else_handles_them():
    from kdlab.processes import RunInterrupted, stop_signals

    # the precondition, whatever an earlier test in this process installed: nobody handles
    # SIGINT but Python's default
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(RunInterrupted) as stopped, stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises before this ends
    assert stopped.value.signum == signal.SIGINT and str(stopped.value) == "interrupted by SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))  # e.g. submitit's
    try:
        with stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for(lambda: seen, "the other handler", 5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert seen == [signal.SIGTERM]


def test_weights_that_cannot_be_written_fail_the_run(train, tmp_path):
    from kdlab.run_plan import plan_run

    plan = plan_run(compose_run(tmp_path, *TINY))
    (plan.run_dir / "model.pt").mkdir(parents=True)  # what a full or broken disk does
    with pytest.raises(OSError):
        train(*TINY)
    row = _db(tmp_path).get(plan.key)
    assert row["status"] == "failed" and "model.pt" in row["failure"], row["failure"]


def test_a_killed_run_shows_interrupted_and_a_sigtermed_one_records_it(tmp_path):
    args = [f"paths.root_dir={tmp_path}", *FAST, *LONG]
    killed = _launch(tmp_path, *args)
    row = _wait_for(lambda: _checkpointed(tmp_path) and _running_row(tmp_path), "a checkpoint")
    assert row["pid"] == killed.pid
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert _db(tmp_path).get(row["key"])["status"] == "running"  # nobody could record it
    listing = run_cli(
        "kdlab.cli",
        "runs",
        "--db",
        f"sqlite:///{tmp_path}/runs/kdlab.db",
        "list",
        "--status",
        "interrupted",
    )
    assert listing.returncode == 0 and row["key"] in listing.stdout

    resumed = _launch(tmp_path, *args)
    _wait_for(lambda: (_running_row(tmp_path) or {}).get("pid") == resumed.pid, "the relaunch")
    resumed.send_signal(signal.SIGTERM)
    assert resumed.wait(timeout=60) == 128 + signal.SIGTERM
    after = _db(tmp_path).get(row["key"])
    assert (after["status"], after["failure"]) == ("interrupted", "interrupted by SIGTERM")


# -- 6: a signal to kdlab study reaches its sweep; nothing outlives it -------------------


def test_a_stopped_command_takes_its_whole_process_group_along(tmp_path):
    """A child that ignores SIGTERM (and a grandchild that inherits that) is killed after
    the grace period; the command exits 128 + 15."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import sys; from kdlab.processes import run_child; "
        f"sys.exit(run_child(['sh', '-c', \"trap '' TERM; sleep 120 & echo $! > {pid_file}; "
        'wait"], grace_s=1, tick_s=0.2))'
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the grandchild")
    grandchild = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    assert _wait_for(lambda: _gone(grandchild), "the grandchild to go", 10)


def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = (
        "import os, time; from kdlab.processes import die_with_parent; die_with_parent(); "
        f"open('{pid_file}', 'w').write(str(os.getpid())); time.sleep(120)"
    )
    script = (
        "import sys; from kdlab.processes import run_child; "
        f"sys.exit(run_child([sys.executable, '-c', {child!r}]))"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the child")
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert _wait_for(lambda: _gone(int(pid_file.read_text())), "the child to go", 10)


def test_children_run_at_most_slots_at_once_and_a_failure_starts_no_more(tmp_path):
    """Three one-second children in two slots: the first two start together, the third
    when a slot frees; after a failure, what was waiting never starts."""
    from kdlab.processes import run_children

    def child(name: str, code: int = 0) -> tuple[list[str], dict]:
        stamp = (
            f"date +%s.%N > {tmp_path / name}.start; sleep 1; date +%s.%N > {tmp_path / name}.end"
        )
        return ["sh", "-c", f"{stamp}; exit {code}"], {}

    assert run_children([child("a"), child("b"), child("c")], slots=2, tick_s=0.1) == [0, 0, 0]
    start, end = (
        {n: float((tmp_path / f"{n}.{s}").read_text()) for n in "abc"} for s in ("start", "end")
    )
    assert abs(start["a"] - start["b"]) < 0.5  # side by side
    assert start["c"] >= min(end["a"], end["b"]) - 0.05  # only once a slot was free

    ticks = []
    codes = run_children(
        [child("d", 3), child("e"), child("f")], slots=1, tick=lambda: ticks.append(1), tick_s=0.2
    )
    assert codes == [3, None, None]  # the failure ended the queue
    assert not (tmp_path / "e.start").exists() and len(ticks) >= 3  # ticked while d ran


def test_a_stop_signal_reaches_every_running_child(tmp_path):
    """Two children side by side, a third waiting: SIGTERM ends both running ones (their
    codes 128 + 15) and the third never starts."""
    pids = [tmp_path / f"{n}.pid" for n in "ab"]
    script = (
        "import sys; from kdlab.processes import run_children; "
        f"codes = run_children([(['sh', '-c', 'echo $$ > {pids[0]}; sleep 120'], {{}}), "
        f"(['sh', '-c', 'echo $$ > {pids[1]}; sleep 120'], {{}}), "
        f"(['sh', '-c', 'touch {tmp_path}/third'], {{}})], slots=2, grace_s=5, tick_s=0.2); "
        "print(codes); sys.exit(0)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pids), "both children")
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=30)
    assert out.strip() == "[143, 143, None]"
    assert not (tmp_path / "third").exists()
    for p in pids:
        assert _wait_for(lambda p=p: _gone(int(p.read_text())), "a child to go", 10)


COUNTED = """\
import os, sys, time
with open(os.path.join(os.path.dirname(__file__), "imports"), "a") as f:
    f.write(f"{os.getpid()}\\n")

def main():
    print("main", os.getpid(), sys.argv[1:], os.environ["WHO"], os.getpgid(0) == os.getpid())
    if sys.argv[1] == "sleep":
        time.sleep(120)
    sys.exit(int(sys.argv[2]))
"""


def _zygote_parent(tmp_path: Path, children: str) -> subprocess.Popen:
    """A process that starts a Zygote preloading tmp_path/counted.py, then runs
    ``children`` (a list of (argv, options)) forked from it, printing their codes."""
    (tmp_path / "counted.py").write_text(COUNTED)
    script = (
        "import sys, os\nfrom kdlab.processes import Zygote, run_children\n"
        "with Zygote(['counted']) as z:\n"
        f"    print(run_children({children}, slots=2, tick_s=0.1, start_child=z.start))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_children_forked_from_a_zygote_share_its_imports_not_its_environment(tmp_path):
    """Two children of one zygote: the module was imported once, in the server; each
    child ran its main() with its own arguments, environment, log file, process group
    and exit code."""
    child = "([sys.executable, '-m', 'counted', {name!r}, {code!r}], "
    child += "{{'env': {{**os.environ, 'WHO': {name!r}}}, 'log': {log!r}}})"
    logs = {name: str(tmp_path / f"{name}.log") for name in "ab"}
    children = ", ".join(
        child.format(name=n, code=c, log=logs[n]) for n, c in (("a", "0"), ("b", "3"))
    )
    parent = _zygote_parent(tmp_path, f"[{children}]")
    out, _ = parent.communicate(timeout=120)
    assert out.strip().splitlines()[-1] == "[0, 3]", out
    (server,) = (tmp_path / "imports").read_text().split()  # one import, in the server
    for name, code in (("a", "0"), ("b", "3")):
        line = Path(logs[name]).read_text().split()
        assert line[0] == "main" and line[1] != server, line
        assert line[2:] == [f"['{name}',", f"'{code}']", name, "True"], line


def test_a_zygote_child_dies_with_the_command_even_when_it_is_killed(tmp_path):
    """SIGKILL to the command: the server sees its parent go and ends, and the child,
    told to die with the server, is gone too (nothing outlives the command)."""
    log = tmp_path / "sleeper.log"
    children = (
        "[([sys.executable, '-m', 'counted', 'sleep', '0'], "
        f"{{'env': {{**os.environ, 'WHO': 's'}}, 'log': {str(log)!r}}})]"
    )
    parent = _zygote_parent(tmp_path, children)
    _wait_for(lambda: log.exists() and log.read_text().strip(), "the child")
    pid = int(log.read_text().split()[1])
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert _wait_for(lambda: _gone(pid), "the child to go", 20)


def test_sigterm_to_a_study_stops_its_runs_and_records_them(tmp_path):
    study = _launch(
        tmp_path, "study", "nano", f"paths.root_dir={tmp_path}", *FAST, module="kdlab.cli"
    )
    row = _wait_for(lambda: _running_row(tmp_path), "the study's first run", 240)
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=120) == 128 + signal.SIGTERM
    after = _db(tmp_path).get(row["key"])
    assert (after["status"], after["failure"]) == ("interrupted", "interrupted by SIGTERM")
    assert _gone(row["pid"])
    with pytest.raises(ProcessLookupError):  # nothing of the sweep's process group is left
        os.killpg(row["pid"], 0)
    out = (tmp_path / "out.txt").read_text()
    assert re.search(r"^job \d+ of teachers stopped by SIGTERM; later jobs not started$", out, re.M)


# -- 7: a forced re-run replaces the run only when it finishes --------------------------


def test_a_forced_rerun_that_does_not_finish_leaves_the_finished_run_whole(
    train, tmp_path, monkeypatch
):
    import kdlab.runner

    first = train(*TINY)
    run_dir = Path(first["run_dir"])
    weights = (run_dir / "model.pt").read_bytes()
    curve = _db(tmp_path).curve(first["key"])
    assert {p["attempt"] for p in curve} == {1} and len(curve) >= 2

    def lost_node(*args, **kwargs):
        raise RuntimeError("the node went away")

    monkeypatch.setattr(kdlab.runner, "_record", lost_node)  # it trained, then died
    with pytest.raises(RuntimeError, match="node went away"):
        train(*TINY, "force=true")
    assert (run_dir / "attempt-2" / "checkpoints" / "last.ckpt").exists()
    assert _db(tmp_path).get(first["key"]) == first  # row, loss, attempt, timestamps
    assert (run_dir / "model.pt").read_bytes() == weights
    assert _db(tmp_path).curve(first["key"]) == curve
    monkeypatch.undo()
    # still a teacher
    student = train(
        "objective=distill",
        "model=nano_L1",
        "data.tokens=16384",
        "data.tokens_per_param=null",
        f"teacher.key={first['key']}",
    )
    assert student["status"] == "done" and student["teacher_key"] == first["key"]

    forced = train(*TINY, "force=true")  # resumes the re-run, which then replaces the run
    assert forced["status"] == "done" and forced["attempt"] == 2
    assert forced["val_loss"] == first["val_loss"]  # same science, same seed
    new_curve = _db(tmp_path).curve(first["key"])
    assert {p["attempt"] for p in new_curve} == {2}
    assert [(p["step"], p["val_loss"]) for p in new_curve] == [
        (p["step"], p["val_loss"]) for p in curve
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "model.pt"]
    assert _db(tmp_path).curve(first["key"], attempt=1) == []


@pytest.mark.slow
def test_a_killed_forced_rerun_leaves_the_finished_run_a_usable_teacher(train, tmp_path):
    first = train(*LONG)
    weights = (Path(first["run_dir"]) / "model.pt").read_bytes()
    curve = _db(tmp_path).curve(first["key"])
    args = [f"paths.root_dir={tmp_path}", *FAST, *LONG, "force=true"]
    forced = _launch(tmp_path, *args)
    _wait_for(lambda: list(tmp_path.glob("runs/*/attempt-2/checkpoints/last.ckpt")), "a ckpt")
    forced.send_signal(signal.SIGKILL)
    forced.wait(timeout=30)
    assert _db(tmp_path).get(first["key"]) == first
    assert (Path(first["run_dir"]) / "model.pt").read_bytes() == weights
    assert _db(tmp_path).curve(first["key"]) == curve
    student = train(*TINY[:1], "objective=distill", *TINY[1:], f"teacher.key={first['key']}")
    assert student["status"] == "done"


# -- 8: garbage is refused or failed, never fitted ---------------------------------------


@pytest.mark.parametrize("scale", ["-1", "nan"])
def test_the_demo_refuses_a_budget_scale_that_is_not_positive(tmp_path, scale):
    out = run_cli("kdlab.cli", "demo", "--root", str(tmp_path), "--budget-scale", scale)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"kdlab: error: data.budget_scale must be a positive number, not {float(scale)}"
    )
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("*.ckpt"))


def test_a_run_that_learned_nothing_is_failed_with_the_reason(train, tmp_path):
    from kdlab.rundb.query import fit_points

    row = train(*TINY, "optim.lr=1e3", "optim.warmup_fraction=0.5")
    assert row["status"] == "failed", (row["val_loss"], row["failure"])
    found = re.fullmatch(r"did not learn: loss (\S+) >= uniform loss ln V (\S+)", row["failure"])
    assert found, row["failure"]
    assert float(found[2]) == pytest.approx(math.log(256), abs=5e-5)  # byte tokens: V = 256
    assert float(found[1]) == pytest.approx(row["val_loss"], abs=5e-5)
    assert not row["val_loss"] < math.log(256)
    assert row["key"] not in set(
        fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "supervised")["run_key"]
    )


def _recipe_study(url: str) -> None:
    """Supervised runs on the published law at one recipe, and two runs at another learning
    rate far off it."""
    from kdlab.laws.synthetic import paper_like_supervised_runs

    store = RunStore(url)
    common = dict(role="supervised", corpus_fingerprint="c4", tokenizer="bpe32k", n_ctx=1024)
    optim = {
        "lr": 0.01,
        "weight_decay": 1e-4,
        "warmup_steps": None,
        "warmup_fraction": 0.05,
        "min_lr_ratio": 1e-3,
        "z_loss": 1e-4,
    }
    config = {
        "optim": optim,
        "data": {"module": {"batch_size": 16}},
        "trainer": {"gradient_clip_val": 1.0, "accumulate_grad_batches": 1},
    }
    runs = paper_like_supervised_runs(noise=0.005, seed=0)
    for i, (n, d, loss) in enumerate(zip(runs.N, runs.D, runs.loss, strict=True)):
        store.start(f"k{i}", n_params=int(n), tokens=int(d), config=config, **common)
        store.finish(f"k{i}", val_loss=float(loss))
    hot = {**config, "optim": {**optim, "lr": 0.1}}
    for i, (n, d) in enumerate(zip(runs.N[:2], runs.D[:2], strict=True)):
        store.start(f"hot{i}", n_params=int(n), tokens=int(d), config=hot, **common)
        store.finish(f"hot{i}", val_loss=9.0)


BASE_RECIPE = "lr=0.01 wd=0.0001 warmup=0.05 min_lr=0.001 z_loss=0.0001 batch=16 clip=1"


def test_fits_keep_one_training_recipe(tmp_path, capsys):
    import json

    from kdlab.cli import main

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _recipe_study(url)
    grid = {"e": [1.5], "a": [400.0], "b": [400.0], "alpha": [0.35], "beta": [0.35], "gamma": [1]}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    fit = ["fit", "supervised", "--db", url, "--grid", str(tmp_path / "grid.json")]
    assert main(fit) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    hot = BASE_RECIPE.replace("lr=0.01", "lr=0.1")
    assert err == (
        f"kdlab: error: The runs in {url} mix recipe in {{{BASE_RECIPE}, {hot}}}, whose losses "
        "are not comparable; select one with --recipe."
    )
    out = tmp_path / "fit.json"
    assert main([*fit, "--recipe", BASE_RECIPE, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["data"]["recipe"] == BASE_RECIPE
    assert not {"hot0", "hot1"} & set(doc["data"]["run_keys"]) and doc["n_points"] > 20


def test_the_report_shows_one_training_recipe(tmp_path):
    from kdlab.report.data import load_report_data

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _recipe_study(url)
    data = load_report_data(url)
    assert data.selection["recipe"] == BASE_RECIPE
    assert not {"hot0", "hot1"} & set(data.supervised["key"]) and len(data.supervised) > 20
    assert any("recipe" in note and BASE_RECIPE in note for note in data.notes), data.notes
    chosen = load_report_data(url, recipe=BASE_RECIPE.replace("lr=0.01", "lr=0.1"))
    assert sorted(chosen.supervised["key"]) == ["hot0", "hot1"]


# -- issue 10.7: the pre-emption signal saves a checkpoint at the next step ---------------


def test_the_preemption_signal_checkpoints_the_step_it_lands_on(tmp_path):
    """SIGUSR2 (submitit's pre-emption signal) mid-run, with periodic checkpoints far
    apart: the run writes hpc_ckpt_<step> at the end of the step in progress, records
    itself interrupted, and its relaunch resumes from that step, not from the start."""
    args = [f"paths.root_dir={tmp_path}", *FAST, *LONG, "checkpoint.every_n_steps=100000"]
    args.append("val.points=80")  # a curve point every 10 steps: the run's progress
    run = _launch(tmp_path, *args)
    row = _wait_for(lambda: _running_row(tmp_path), "the run's row")
    _wait_for(lambda: _db(tmp_path).curve(row["key"]), "a first validation point")
    run.send_signal(signal.SIGUSR2)
    assert run.wait(timeout=60) == 128 + signal.SIGUSR2
    [saved] = (tmp_path / "runs" / row["key"]).glob("hpc_ckpt_*.ckpt")
    step = int(saved.stem.removeprefix("hpc_ckpt_"))
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == step and 10 <= step < 800
    assert not list((tmp_path / "runs" / row["key"]).glob("checkpoints/*.ckpt"))  # none other
    after = _db(tmp_path).get(row["key"])
    assert (after["status"], after["failure"]) == ("interrupted", "interrupted by SIGUSR2")

    (tmp_path / "out.txt").write_bytes(b"")
    resumed = _launch(tmp_path, *args)
    _wait_for(lambda: b"Restored all states" in (tmp_path / "out.txt").read_bytes(), "resume")
    resumed.send_signal(signal.SIGTERM)
    resumed.wait(timeout=60)
    out = (tmp_path / "out.txt").read_text()
    assert f"from the checkpoint path at {saved}" in out


def test_a_preemption_the_scheduler_requeues_keeps_its_exit_status(train, tmp_path, monkeypatch):
    """Under submitit the pre-emption signal's previous handler is submitit's: it requeues
    the job and exits, its local executor requeueing on status 144. The run saves its
    checkpoint first, records itself pre-empted (not a bare 'exit(144)') and leaves with
    that status, which submitit's controller must see."""
    import lightning as L

    import kdlab.runner as runner

    class Preempted(L.Callback):  # the scheduler's signal, mid-run
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)

    def requeue(signum: int, frame: object) -> None:  # what submitit's handler ends with
        sys.exit(144)

    run_callbacks = runner.run_callbacks
    monkeypatch.setattr(
        runner, "run_callbacks", lambda *a, **k: [*run_callbacks(*a, **k), Preempted()]
    )
    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit) as stopped:
            train(*TINY)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == 144
    [row] = _db(tmp_path).find()
    assert (row["status"], row["failure"]) == (
        "interrupted",
        "pre-empted by SIGUSR2; the scheduler requeued the job",
    )
    [saved] = Path(row["run_dir"]).glob("hpc_ckpt_*.ckpt")
    assert saved.name == "hpc_ckpt_4.ckpt"  # the step after the one the signal landed in
