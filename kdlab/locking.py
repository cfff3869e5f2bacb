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
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError

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
    folder: str | os.PathLike[str], choose: str = "another run root (paths.root_dir= or KDLAB_ROOT)"
) -> Path:
    """``folder``, made if missing, once a file could be created in it; otherwise a
    ConfigError that says how to ``choose`` another. Runs check their folders before they
    tokenize or train, not when their first checkpoint is due."""
    folder = Path(folder)
    try:
        temp_path_for(folder / "write-test").unlink()
    except OSError as err:
        raise ConfigError(
            f"the folder {folder} is not writable ({err.strerror or err}): choose {choose}"
        ) from err
    return folder


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
