"""File locks (kdlab.locking, on the filelock package): waiting, claiming, and file
systems without flock.

Without flock (Lustre or NFS mounted without it, where flock fails with ENOSYS or ENOLCK)
every lock of kdlab warns once and goes on unlocked: a cache build is published by an
atomic rename and survives a race, and a soft lock that a pre-empted job left on another
node would block its requeued run for good.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kdlab.locking import build_once, claimed, file_lock
from tests.conftest import REPO


def _hold(path: str, ready, release) -> None:
    with file_lock(path):
        ready.set()
        release.wait(30)


@pytest.fixture
def held_elsewhere(tmp_path: Path):
    """A lock file held by another process until the test ends."""
    path = tmp_path / "x.lock"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(path), ready, release))
    proc.start()
    assert ready.wait(60)
    yield path, release
    release.set()
    proc.join(30)
    assert proc.exitcode == 0


def test_a_claim_held_by_another_process_is_refused_at_once(held_elsewhere) -> None:
    path, _ = held_elsewhere
    start = time.perf_counter()
    with claimed(path) as ours:
        assert ours is False
    assert time.perf_counter() - start < 5  # no waiting: the job moves on to its next run


def test_a_free_claim_is_ours_and_excludes_others(tmp_path: Path) -> None:
    path = tmp_path / "run" / ".lock"
    path.parent.mkdir()
    with claimed(path) as ours:
        assert ours is True
        with claimed(path) as second:  # another opener, as a second launch would be
            assert second is False
    with claimed(path) as again:
        assert again is True


def test_file_lock_waits_for_the_holder(held_elsewhere, tmp_path: Path) -> None:
    """A second builder waits on the lock instead of building twice."""
    path, release = held_elsewhere
    built = tmp_path / "built"
    calls = []

    def build() -> None:
        calls.append(1)
        built.write_text("x")

    threading.Timer(1.0, release.set).start()
    start = time.perf_counter()
    with file_lock(path):  # reached only once the other process let go
        waited = time.perf_counter() - start
        assert build_once(built, build) is True
    assert waited >= 0.9
    assert build_once(built, build) is False and calls == [1]


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK])
def test_without_flock_every_lock_warns_once_and_goes_on(
    tmp_path: Path, monkeypatch, capsys, code: int
) -> None:
    def no_flock(fd, operation):
        raise OSError(code, "flock not supported")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / "x.lock"
    for _ in range(2):
        with file_lock(path):
            pass
    with claimed(tmp_path / "run.lock") as ours:
        assert ours is True
    built = tmp_path / "built"
    assert build_once(built, lambda: built.write_text("x")) is True
    warnings = capsys.readouterr().err.splitlines()
    assert [w for w in warnings if str(path) in w] == [
        f"kdlab: cannot lock {path} (flock is not supported here: errno {code}); "
        "going on without the lock"
    ]
    assert any(str(tmp_path / "run.lock") in w for w in warnings)


def test_other_lock_errors_are_raised_unless_optional(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "file" / "x.lock"
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OSError):
        with file_lock(missing):
            pass
    with file_lock(missing, optional=True):
        pass
    assert f"kdlab: cannot lock {missing}" in capsys.readouterr().err


def test_no_kdlab_module_imports_fcntl() -> None:
    """fcntl does not exist on Windows; kdlab locks through filelock."""
    users = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "kdlab").rglob("*.py"))
        if re.search(r"^\s*(import fcntl|from fcntl )", p.read_text(), re.MULTILINE)
    ]
    assert users == []


def test_the_locking_modules_import_without_fcntl() -> None:
    """As on Windows: the modules that lock load where fcntl cannot be imported."""
    script = (
        "import sys\n"
        "sys.modules['fcntl'] = None\n"
        "import kdlab.locking, kdlab.rundb.store, kdlab.data.cache\n"
        "print('imported')\n"
    )
    r = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "imported"
