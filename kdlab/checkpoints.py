"""Resumable checkpoints: written whole or not at all, and checked before a resume.

Lightning's own writer saves through an fsspec transaction whose temporary file lives in
the system's temp directory, so the final step is a copy across file systems; a full disk
then leaves a truncated ``last.ckpt`` in place of the good one, and every relaunch fails
to resume from it. ``AtomicCheckpointIO`` writes beside the target instead (temporary
name, fsync, rename), so the previous checkpoint stays until the new one is complete.

A sharded checkpoint (FSDP: a directory, a file per rank) is written the same way:
whole under a staging name, then swapped in (``swap_in_directory``). Lightning writes the
new shards over the old ones in place, so a save cut short left the old metadata beside
a mixture of old and new shards, which a resume took for one checkpoint.

What kdlab stages or sets aside lives in ``.kdlab-aside/`` beside the checkpoint, under
no name Lightning resumes from: under SLURM, a run launched without a checkpoint takes
the highest number among the run folder's names containing ``hpc_ckpt_``, and a staged
or set-aside pre-emption checkpoint there would be resumed (or crash the launch).

A checkpoint that still does not load (written by an older kdlab, a damaged disk) is set
aside under a ``.corrupt-<time>`` name with a warning, and the run resumes from the next
good one, or from scratch: a resume that replays the same batches reaches the same loss.
"""

from __future__ import annotations

import datetime as dt
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kdlab.errors import ConfigError
from kdlab.locking import atomic_file

CORRUPT = ".corrupt-"
ASIDE = ".kdlab-aside"  # beside the checkpoints: staged, replaced and set-aside ones
STAGED = ".partial"  # a sharded checkpoint being written
REPLACED = ".old"  # the previous one, for the moment between two renames
SHARDED_METADATA = "meta.pt"  # Lightning writes it last in a sharded (FSDP) checkpoint


def aside(path: Path, suffix: str) -> Path:
    """Where ``path`` is staged (STAGED), kept while replaced (REPLACED) or set aside."""
    return path.parent / ASIDE / f"{path.name}{suffix}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but atomic within the checkpoint's own directory."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)


def clear_staged(path: Path) -> Path:
    """Remove the staged saves a cut-short save left beside ``path`` (one save is made at a
    time), and return where the next one of ``path`` is staged."""
    for stale in (path.parent / ASIDE).glob(f"*{STAGED}"):
        discard(stale)
    staged = aside(path, STAGED)
    staged.parent.mkdir(parents=True, exist_ok=True)
    return staged


def swap_in_directory(staged: Path, path: Path) -> None:
    """Put the complete checkpoint ``staged`` at ``path``. The previous one is renamed to
    its REPLACED name, where a resume looks too, the new one renamed in, and the previous
    one discarded: at every moment a resume finds a whole checkpoint."""
    previous = aside(path, REPLACED)
    if previous.exists() and path.exists():  # the last swap was cut after its renames
        discard(previous)
    if path.exists():
        path.rename(previous)
    staged.rename(path)
    if previous.exists():
        discard(previous)


def discard(path: Path) -> None:
    """Delete a checkpoint file or directory; a directory's metadata goes first, so a
    deletion cut short leaves no directory a resume would take for complete."""
    if path.is_dir():
        (path / SHARDED_METADATA).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def unreadable(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from; None when it can.

    The file is memory-mapped, not read: a truncated archive fails on its missing index
    at the end, and no tensor is copied.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # whole, but it asks to run code: refuse, keep as evidence
        raise ConfigError(
            f"the run's checkpoint {path} holds more than tensors and plain values, and "
            "kdlab never runs code from a weights file, so it is refused"
        ) from None
    except Exception as err:  # a damaged file fails in many ways (zip, OSError)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    if not isinstance(state, dict) or not {"state_dict", "global_step"} <= set(state):
        return "not a Lightning checkpoint (no state_dict and global_step)"
    return None


def set_aside(path: Path, reason: str) -> None:
    """Move a checkpoint that does not load into ``.kdlab-aside/`` under a ``.corrupt-<time>``
    name, and say so on stderr.

    Every DDP rank checks the same files; the first to rename one wins, the others find
    it gone, which is the same outcome."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target = aside(path, f"{CORRUPT}{stamp}")
    try:
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
    except FileNotFoundError:
        return
    print(
        f"kdlab: warning: checkpoint {path} does not load ({reason}); set aside as {target}",
        file=sys.stderr,
    )


def resume_point(candidates: list[Path]) -> Path | None:
    """The newest candidate checkpoint that loads; those that do not are set aside."""
    found = sorted((p for p in candidates if p.is_file()), key=_mtime, reverse=True)
    for path in found:
        reason = unreadable(path)
        if reason is None:
            return path
        set_aside(path, reason)
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # set aside by another rank meanwhile
        return 0.0
