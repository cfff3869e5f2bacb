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

import contextlib
import datetime as dt
import errno
import io
import os
import pickle
import re
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
    """Where ``path`` is staged (STAGED), kept while replaced (REPLACED) or set aside; a
    path already in the aside folder stays there."""
    folder = path.parent if path.parent.name == ASIDE else path.parent / ASIDE
    return folder / f"{path.name}{suffix}"


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

    A file is memory-mapped, not read: a truncated archive fails on its missing index at
    the end, and no tensor is copied. A sharded checkpoint (a directory) is checked
    through everything torch's loader would unpickle whole: Lightning's metadata, the
    index of its items, and each item that is not a tensor. Code in any of them is
    refused (ConfigError), never run, and nothing outside the checkpoint is read. A
    crafted index can still cost time or memory (as any pickle, or torch's weights_only
    loads, can): whoever can write a run's folder can delete it anyway; what kdlab
    guarantees is that its files never run code or lead elsewhere.
    """
    if path.is_symlink():  # it could lead to another run's, or another user's, checkpoint
        return f"a link to {os.readlink(path)}; a run resumes only from its own checkpoints"
    try:
        if path.is_dir():
            _check_sharded(path)
        elif not _holds(_load_as_data(path, path), "state_dict", "global_step"):
            return "not a Lightning checkpoint (no state_dict and global_step)"
    except _Unreadable as err:
        return str(err)
    return None


class _Unreadable(Exception):
    """A checkpoint that does not load: set aside, not refused."""


def _load_as_data(source: Path | BinaryIO, checkpoint: Path) -> Any:
    """torch.load of tensors and plain values only, from a path (memory-mapped) or an open
    file, which must be a torch archive: torch reads anything else as a legacy pickle,
    and a damaged file would then look like one asking to run code."""
    if not isinstance(source, Path) and source.read(4) != b"PK\x03\x04":
        raise _Unreadable("not a torch archive")
    if not isinstance(source, Path):
        source.seek(0)
    try:
        state = torch.load(
            source, map_location="cpu", weights_only=True, mmap=isinstance(source, Path)
        )
    except pickle.UnpicklingError:  # whole, but it asks to run code: refuse, keep as evidence
        raise _code_refused(checkpoint) from None
    except Exception as err:  # a damaged file fails in many ways (zip, OSError)
        raise _Unreadable(_first_line(err)) from None
    return state


def _holds(state: Any, *keys: str) -> bool:
    return isinstance(state, dict) and set(keys) <= set(state)


def _code_refused(checkpoint: Path) -> ConfigError:
    return ConfigError(
        f"the run's checkpoint {checkpoint} holds more than tensors and plain values, and "
        "kdlab never runs code from a weights file, so it is refused"
    )


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


SHARDED_INDEX = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint
SHARDED_NAMES = ("state_dict.", "optimizer_")  # how Lightning's ModelParallelStrategy names items
SHARD_FILE = re.compile(r"__\d+_\d+\.distcp")  # what torch's writer names a rank's shard file


def _no_path(*parts: Any) -> None:
    """Stands in for the path torch records as the index's checkpoint_id: loading does not
    use it, and building it could cost memory the pickle does not (shared references)."""
    return None


class _IndexUnpickler(pickle._Unpickler):
    """Unpickles torch.distributed.checkpoint's index and nothing else: its own records,
    torch sizes, dtypes and layouts (torch reads it with plain pickle). Python's own
    implementation, so BUILD can be limited to those records: on a class it would set the
    class's attributes (pathlib's, say) for the whole process."""

    RECORD_NAMES = (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO) -> None:
        from torch.distributed.checkpoint import filesystem, metadata

        super().__init__(file)
        kinds = (*(getattr(metadata, name) for name in self.RECORD_NAMES), filesystem._StorageInfo)
        self.buildable = tuple(kind for kind in kinds if is_dataclass(kind))

    def find_class(self, module: str, name: str) -> Any:
        from torch.distributed.checkpoint import filesystem, metadata

        if module == "torch.distributed.checkpoint.metadata" and name in self.RECORD_NAMES:
            return getattr(metadata, name)
        if (module, name) == ("torch.distributed.checkpoint.filesystem", "_StorageInfo"):
            return filesystem._StorageInfo
        if (module, name) == ("torch.serialization", "_get_layout"):
            return torch.serialization._get_layout
        if (module, name) == ("pathlib", "PosixPath"):
            return _no_path
        if module == "torch" and (name == "Size" or isinstance(vars(torch).get(name), torch.dtype)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")

    def _build_a_record(self) -> None:
        """BUILD as torch's records are built: a dataclass instance given its own fields
        (TensorProperties: the tuple its __setstate__ takes). Never a class, nor an enum
        member, which are shared by the whole process; never attributes besides fields,
        which could shadow a record's methods."""
        from torch.distributed.checkpoint import metadata

        record, state = self.stack[-2], self.stack[-1]
        if type(record) not in self.buildable:
            raise pickle.UnpicklingError("a checkpoint index builds only its own records")
        if type(record) is metadata.TensorProperties:
            fits = isinstance(state, tuple) and len(state) == 5
        else:
            fields = {field.name for field in dataclass_fields(record)}
            fits = isinstance(state, dict) and all(key in fields for key in state)
        if not fits:
            raise pickle.UnpicklingError("a checkpoint record is built from its fields only")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _build_a_record


def _open_folder(path: Path) -> int:
    """A descriptor of the sharded checkpoint folder ``path``, if it is one and not a link:
    its files are then opened through it (:func:`_open_plain`), so what they are cannot
    change with what the path leads to meanwhile."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise _Unreadable(
            "it is a link" if err.errno == errno.ELOOP else _first_line(err)
        ) from None


def _open_plain(name: str, folder: int) -> BinaryIO:
    """The file ``name`` of ``folder`` opened for reading if it is a plain file, not a link
    (which could lead out of the run's folder) nor a pipe (which could block forever)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as err:
        raise _Unreadable(
            f"{name} is a link" if err.errno == errno.ELOOP else f"{name}: {_first_line(err)}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Unreadable(f"{name} is not a plain file")
    return os.fdopen(fd, "rb")


def _read_index(path: Path, folder: int) -> Any:
    """The index of the sharded checkpoint at ``path`` (opened as ``folder``), read as data
    and checked: torch's own records, every item stored in a shard file of this folder,
    within its bytes. Raises ConfigError for code, _Unreadable for anything else wrong."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorStorageMetadata,
    )

    try:
        with _open_plain(SHARDED_INDEX, folder) as handle:
            index = _IndexUnpickler(handle).load()
    except _Unreadable:
        raise
    except pickle.UnpicklingError:
        raise _code_refused(path) from None
    except Exception as err:
        raise _Unreadable(f"its index: {_first_line(err)}") from None
    items = getattr(index, "state_dict_metadata", None)
    storage = getattr(index, "storage_data", None)
    try:  # a record built twice can hold anything: checks that raise say no, too
        torch_wrote_it = (
            type(index) is Metadata
            and type(index.storage_meta) in (StorageMeta, type(None))
            and isinstance(items, dict)
            and all(type(name) is str for name in items)
            and all(
                type(v) in (TensorStorageMetadata, BytesStorageMetadata) for v in items.values()
            )
            and isinstance(storage, dict)
            and all(type(k) is MetadataIndex and type(k.fqn) is str for k in storage)
            and all(k.fqn in items and type(v) is _StorageInfo for k, v in storage.items())
        )
    except Exception:
        torch_wrote_it = False
    if not torch_wrote_it:
        raise _Unreadable("its index is not one torch.distributed.checkpoint writes")
    weights = [name for name in items if name.startswith("state_dict.")]
    if not all(type(items[name]) is TensorStorageMetadata for name in weights):
        raise _Unreadable("its index stores a weight as something other than a tensor")
    sizes = {}
    for info in storage.values():
        name = info.relative_path
        if not (isinstance(name, str) and SHARD_FILE.fullmatch(name)):
            raise _Unreadable(f"its index names {name!r}, not a shard file of its own")
        if name not in sizes:
            with _open_plain(name, folder) as shard:
                sizes[name] = os.fstat(shard.fileno()).st_size
        span = (info.offset, info.length)
        if not all(type(n) is int and n >= 0 for n in span) or sum(span) > sizes[name]:
            raise _Unreadable(f"its index points past the end of {name}")
        if info.transform_descriptors:
            raise _Unreadable(f"its shard file {name} holds items stored transformed")
    return index


def _check_sharded(path: Path) -> None:
    """Raise _Unreadable (or ConfigError for code) unless the sharded checkpoint at
    ``path`` reads as data and names its items as this kdlab's FSDP strategy does."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    folder = _open_folder(path)
    try:
        if not _holds(_read_lightning_metadata(path, folder), "global_step"):
            raise _Unreadable("not a Lightning checkpoint (no global_step)")
        index = _read_index(path, folder)
        names = index.state_dict_metadata
        foreign = sorted(name for name in names if not name.startswith(SHARDED_NAMES))
        if foreign:  # FSDP1's layout: model.* at the top
            raise _Unreadable(
                f"its shards hold {foreign[0]}, as kdlab's FSDP1 strategy wrote them; this "
                "kdlab's FSDP2 strategy reads state_dict.* and optimizer_* items"
            )
        for where, info in index.storage_data.items():
            if not isinstance(names[where.fqn], BytesStorageMetadata):
                continue  # a tensor: torch loads those with weights_only
            with _open_plain(info.relative_path, folder) as handle:
                handle.seek(info.offset)
                blob = io.BytesIO(handle.read(info.length))
            _load_as_data(blob, path)
    finally:
        os.close(folder)


def _read_lightning_metadata(path: Path, folder: int) -> Any:
    with _open_plain(SHARDED_METADATA, folder) as handle:
        return _load_as_data(handle, path)


def read_sharded_metadata(path: Path) -> dict[str, Any]:
    """Lightning's metadata of the sharded checkpoint at ``path`` (the step, the loops'
    and callbacks' states), read as data."""
    try:
        folder = _open_folder(path)
        try:
            return _read_lightning_metadata(path, folder)
        finally:
            os.close(folder)
    except _Unreadable as err:
        raise ConfigError(f"the run's checkpoint {path} does not load: {err}") from None


def load_sharded(state: dict[str, Any], path: Path) -> None:
    """torch.distributed.checkpoint.load of ``state`` from ``path``, reading as data only:
    the index through :func:`_read_index`, every item that is not a tensor with
    weights_only (torch's own reader unpickles both whole), and every file through one
    descriptor of the folder, as a plain file of its own. Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.filesystem import FileSystem
    from torch.distributed.checkpoint.metadata import StorageMeta

    refusals: list[ConfigError] = []  # torch wraps what its reader raises in its own report

    def as_data(read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except _Unreadable as err:
            refusal = ConfigError(f"the run's checkpoint {path} does not load: {err}")
        except ConfigError as err:
            refusal = err
        refusals.append(refusal)
        raise refusal

    folder = as_data(_open_folder, path)
    as_data(_read_index, path, folder)  # in one sentence here; torch would wrap it

    class FolderFiles(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, file: Any, mode: str) -> Iterator[BinaryIO]:
            with as_data(_open_plain, Path(file).name, folder) as stream:  # a checked name
                yield stream

    class IndexAsData(dcp.FileSystemReader):
        def __init__(self) -> None:
            super().__init__(path)
            self.fs = FolderFiles()

        def read_metadata(self) -> Any:  # no rank-local index: torch reads those with pickle
            index = as_data(_read_index, path, folder)  # as it is when read
            if index.storage_meta is None:
                index.storage_meta = StorageMeta()
            index.storage_meta.load_id = self.load_id
            return index

    class ItemsAsData(dcp.DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            as_data(_load_as_data, value, path)  # raises for code; then torch's load of the
            value.seek(0)  # same bytes
            super().load_bytes(read_item, value)

    try:
        dcp.load(state, storage_reader=IndexAsData(), planner=ItemsAsData())
    except CheckpointException:
        if refusals:
            raise refusals[0] from None
        raise
    finally:
        os.close(folder)


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
    """The newest candidate checkpoint that loads; those that do not are set aside. A
    sharded one counts once its metadata is written (last), and is as old as that file."""
    found = sorted(
        (p for p in candidates if p.is_file() or (p / SHARDED_METADATA).is_file()),
        key=_mtime,
        reverse=True,
    )
    for path in found:
        reason = unreadable(path)
        if reason is None:
            return path
        set_aside(path, reason)
    return None


def _mtime(path: Path) -> float:
    try:
        return (path / SHARDED_METADATA if path.is_dir() else path).stat().st_mtime
    except FileNotFoundError:  # set aside by another rank meanwhile
        return 0.0
