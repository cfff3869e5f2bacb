"""Files shared by concurrent runs: a lock plus write-to-temp and rename.

Every run of a sweep may ask for the same cached artefact (token array, tokenizer,
fingerprint) or open the same new SQLite run database at the same moment; the first one
builds it, the others wait on the lock and then find it finished. Readers never see a
half-written file because the final path only ever appears through an atomic
``os.replace``. A run's directory is claimed without waiting (``claimed``) so that a second
launch of a sweep moves on to the next run.

Locks are the ``filelock`` package's (flock on Unix, the Windows API on Windows). Where the
file system has no flock (Lustre or NFS mounted without it), every lock here warns once and
goes on unlocked: each race it guards is survivable (caches are published atomically), and
filelock's soft fallback, a marker file, would outlive a job pre-empted on another node and
block its requeued run for good.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from kdlab.errors import ConfigError

# what flock fails with where a file system does not support it
NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})
_WARNED: set[Path] = set()  # paths already warned about


def _unlockable(path: Path, err: OSError | NotImplementedError, optional: bool) -> None:
    """Warn once about a lock that cannot be had; re-raise unless flock is simply missing
    or the caller can do without (``optional``)."""
    missing = isinstance(err, NotImplementedError) or getattr(err, "errno", None) in NO_FLOCK
    if not (missing or optional):
        raise err
    if path not in _WARNED:
        _WARNED.add(path)
        why = f"flock is not supported here: errno {err.errno}" if missing and err.errno else err
        print(f"kdlab: cannot lock {path} ({why}); going on without the lock", file=sys.stderr)


def _lock(path: Path) -> FileLock:
    # no soft fallback: see the module's docstring
    return FileLock(path, fallback_to_soft=False)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], optional: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block, waiting for
    another holder to let go.

    Without flock the block runs unlocked after a warning. ``optional``: so does any other
    failure to lock (a read-only directory), for callers whose race is rare and survivable.
    """
    path = Path(path)
    lock = _lock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except (OSError, NotImplementedError) as err:
        _unlockable(path, err, optional)
        yield
        return
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def claimed(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Take the lock on ``path`` without waiting: yields False when another process (or
    another opener in this one) holds it, True when it is ours for the block.

    Without flock the block runs unlocked after a warning, and yields True.
    """
    path = Path(path)
    lock = _lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    except (OSError, NotImplementedError) as err:
        _unlockable(path, err, optional=False)
        yield True
        return
    try:
        yield True
    finally:
        lock.release()


def temp_path_for(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary file in the same directory as ``final`` (so rename is atomic).

    It gets the mode the umask gives any new file, as ``final`` will: mkstemp's 0600
    would leave a token cache shared by a group unreadable to the rest of the group.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # another writer drew the same name
            continue
        return path


def writable_folder(
    folder: str | os.PathLike[str],
    choose: str = "another run root (paths.root_dir= or KDLAB_ROOT)",
    make: bool = True,
) -> Path:
    """``folder``, made if missing (``make``), once a file could be created in it;
    otherwise a ConfigError that says how to ``choose`` another. Runs check their folders
    before they tokenize or train, not when their first checkpoint is due. ``make=False``
    (a command that has yet to read its input) leaves a missing folder missing and asks
    the nearest existing one instead."""
    folder = Path(folder)
    if not make and not folder.exists():
        nearest = next(p for p in folder.absolute().parents if p.exists())
        if not (nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)):
            raise ConfigError(f"the folder {nearest} is not writable: choose {choose}")
        return folder
    try:
        temp_path_for(folder / "write-test").unlink()
    except OSError as err:
        raise ConfigError(
            f"the folder {folder} is not writable ({err.strerror or err}): choose {choose}"
        ) from err
    return folder


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A handle whose content appears at ``final`` whole or not at all.

    It writes a temporary file beside ``final`` (same file system: never a copy across
    file systems, which a full disk can leave truncated), syncs it to disk, then renames
    it over ``final``; the old ``final`` stays intact until that rename. On any error
    the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _sync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` so that readers see either nothing or all of it."""
    with atomic_file(final, "w") as handle:
        handle.write(text)


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    """JSON flavour of :func:`atomic_write_text` (sorted keys, so files diff cleanly)."""
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_once(final: str | os.PathLike[str], build: Callable[[], None]) -> bool:
    """Run ``build`` unless ``final`` exists; concurrent callers wait instead of rebuilding.

    ``build`` must create ``final`` atomically. Returns True when this call built it.
    """
    final = Path(final)
    if final.exists():
        return False
    with file_lock(final.with_name(final.name + ".lock")):
        if final.exists():  # another process finished it while we waited
            return False
        build()
        if not final.exists():
            raise RuntimeError(f"building {final} finished without creating it")
        return True
