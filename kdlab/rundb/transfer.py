"""A study's runs to one file and back, so a study can span several sittings.

``kdlab runs export --format jsonl`` writes every run as one JSON line: all its columns
(the config included), its validation curve and, with ``--weights``, the final weights
of its finished teachers (base64 of their ``model.pt``), which the students of a later
sitting load. ``kdlab runs import FILE`` puts the runs a database lacks back into it,
their directories moved under the importing study's runs directory, so relaunching the
study skips what was done and its students find their teachers.

Weights are checked to load as plain tensors (``torch.load(weights_only=True)``) before
they are written: an imported file is data, never code.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

from kdlab.rundb.schema import RUN_COLUMNS
from kdlab.rundb.store import RunDBError, RunStore

FORMAT = "kdlab-runs-v1"
WEIGHTS = "model.pt"  # a finished run's final weights (kdlab.teacher.WEIGHTS)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def export_jsonl(url: str, out: str | Path, weights: bool = False) -> int:
    """Write every run of the database to ``out`` (JSON lines); returns how many."""
    store = RunStore(url)
    runs = store.find()
    with Path(out).open("w") as fh:
        fh.write(json.dumps({"format": FORMAT, "runs": len(runs)}) + "\n")
        for row in runs:
            line = {k: _plain(v) for k, v in row.items()}
            line["curve"] = [
                {k: v for k, v in p.items() if k != "run_key"} for p in store.curve(row["key"])
            ]
            path = Path(row["run_dir"] or "") / WEIGHTS
            if weights and row["role"] == "teacher" and row["status"] == "done" and path.is_file():
                line["weights_b64"] = base64.b64encode(path.read_bytes()).decode("ascii")
            fh.write(json.dumps(line) + "\n")
    return len(runs)


def import_jsonl(url: str, source: str | Path, runs_dir: str | Path) -> dict[str, int]:
    """Add the runs of an export that the database lacks; returns counts of what was
    added, skipped (already there) and the teachers' weights written."""
    lines = Path(source).read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
        rows = [json.loads(text) for text in lines[1:]]
    except json.JSONDecodeError as exc:
        raise RunDBError(f"{source} is not JSON lines: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RunDBError(f"{source} is not a kdlab runs export (kdlab runs export --format jsonl)")
    store = RunStore(url, create_under=Path(runs_dir))  # a new database beside the runs
    added = skipped = weights = 0
    for number, line in enumerate(rows, start=2):
        if not isinstance(line, dict) or "key" not in line:
            raise RunDBError(f"line {number} of {source} is not a run")
        key = str(line["key"])
        if store.get(key) is not None:
            skipped += 1
            continue
        run_dir = Path(runs_dir).resolve() / key
        blob = line.pop("weights_b64", None)
        if blob is not None:
            _write_weights(base64.b64decode(blob), run_dir, key)
            weights += 1
        # the import time stamps the row (the store sets it), and who trained it last
        # (host, pid, heartbeat) was another sitting's process; the rest is as exported
        left = ("key", "created_at", "updated_at", "host", "pid", "heartbeat_at")
        fields = {k: v for k, v in line.items() if k in RUN_COLUMNS and k not in left}
        fields["run_dir"] = str(run_dir)
        store.upsert(key, **fields)
        for point in line.get("curve") or []:
            store.add_curve_point(key, point["step"], point["tokens"], point["val_loss"])
        added += 1
    return {"added": added, "skipped": skipped, "weights": weights}


def _write_weights(data: bytes, run_dir: Path, key: str) -> None:
    import torch  # late: exporting and listing runs need no torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read it as plain tensors: refuse it
        raise RunDBError(f"the weights of run {key} do not load as plain tensors: {exc}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WEIGHTS).write_bytes(data)
