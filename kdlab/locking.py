"""Files shared by concurrent runs: a lock plus write-to-temp and rename.

Every run of a sweep may ask for the same cached artefact (token array, tokenizer,
fingerprint) or open the same new SQLite run database at the same moment; the first one
builds it, the others wait on the lock and then find it finished. Readers never see a
half-written file because the final path only ever appears through an atomic
``os.replace``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_UNLOCKABLE: set[Path] = set()  # paths already warned about


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], optional: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    ``optional``: where the lock cannot be had (a file system without flock, as on some
    Lustre and NFS mounts, or a read-only directory) warn once and run the block
    unlocked, for callers whose race is rare and survivable.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(path, "a+"))
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle.fileno(), fcntl.LOCK_UN)
        except OSError as err:
            if not optional:
                raise
            if path not in _UNLOCKABLE:
                _UNLOCKABLE.add(path)
                print(f"kdlab: cannot lock {path} ({err}); going on without it", file=sys.stderr)
        yield


def temp_path_for(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary file in the same directory as ``final`` (so rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(name)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` so that readers see either nothing or all of it."""
    tmp = temp_path_for(final)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


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
