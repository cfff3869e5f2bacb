"""Reading a W&B run's ``.wandb`` file: the run, its config, what it logged, its summary.

wandb (0.31) ships no Python reader of its own transaction log (its Go core writes and
syncs it), so kdlab reads it here: ``kdlab runs import --wandb`` imports offline runs
of another codebase from it, and the tests check what kdlab's own runs logged.

The file is a 7-byte header (``:W&B``, 0xBEE1, version), then LevelDB-style blocks of
32 KiB; each record is a 7-byte header (checksum, length, type: 1 whole, 2 first,
3 middle, 4 last part) before its protobuf ``Record``. Records are parsed as protobuf
messages and their values as JSON: nothing in the file can run code.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError

_MAGIC = b":W&B\xe1\xbe"
_BLOCK = 32768


@dataclass
class OfflineRun:
    """One W&B run as its ``.wandb`` file holds it."""

    path: Path  # the .wandb file
    run: dict[str, Any]  # run_id, project, entity, display_name, run_group, job_type, tags
    config: dict[str, Any]  # as logged (nested dicts stay nested)
    rows: list[dict[str, Any]] = field(default_factory=list)  # history, in order
    summary: dict[str, Any] = field(default_factory=dict)  # last value of each key
    exit_code: int | None = None  # None: the run never finished (killed, or still running)


def wandb_file(run_dir: Path) -> Path:
    """The one ``.wandb`` file of a run folder."""
    found = sorted(Path(run_dir).glob("*.wandb"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ConfigError(f"the W&B run folder {run_dir} holds {what} .wandb files, not one")
    return found[0]


def wandb_records(run_dir: Path) -> list[Any]:
    """The protobuf ``Record``s of a W&B run folder's ``.wandb`` file, in order."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    path = wandb_file(run_dir)
    raw = path.read_bytes()
    if raw[:6] != _MAGIC:
        raise ConfigError(f"{path} is not a W&B run file (its header is {raw[:7]!r})")
    pos, parts, records = 7, [], []
    while pos + 7 <= len(raw):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        parts.append(raw[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(b"".join(parts))
        except DecodeError:
            raise ConfigError(f"{path} is damaged: a record does not parse") from None
        parts = []
        records.append(record)
    return records


def read_offline_run(run_dir: Path) -> OfflineRun:
    """A W&B run folder read from its ``.wandb`` file.

    A nested key (``nested_key``: a logged media object's fields, W&B's own ``_wandb``
    entries) is joined with '/', as W&B names logged keys (``val/loss``).
    """
    out = OfflineRun(path=wandb_file(run_dir), run={}, config={})
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            out.exit_code = record.exit.exit_code
            continue
        items = {
            "run": record.run.config.update,
            "config": record.config.update,
            "history": record.history.item,
            "summary": record.summary.update,
        }.get(kind, [])
        values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        if kind == "history":
            out.rows.append(values)
            out.summary.update(values)
        elif kind == "summary":
            out.summary.update(values)
        else:
            out.config.update(values)
        if kind == "run":
            fields = ("run_id", "project", "entity", "display_name", "run_group", "job_type")
            out.run = {name: getattr(record.run, name) for name in fields}
            out.run["tags"] = list(record.run.tags)
    return out
