"""A study across sittings: its runs exported to one file and imported elsewhere."""

from __future__ import annotations

import base64
import json

from kdlab.rundb import RunStore
from tests.conftest import run_cli

TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]


def test_a_teacher_exported_with_its_weights_teaches_in_the_next_sitting(train, tmp_path):
    """Sitting one trains a teacher and exports; sitting two (another root, a new
    database) imports, sees the teacher done, and distils a student from its weights."""
    first, second = tmp_path / "one", tmp_path / "two"
    teacher = train(*TINY, root=first)
    export = tmp_path / "study.jsonl"
    db_one = f"sqlite:///{first}/runs/kdlab.db"
    out = run_cli(
        "kdlab.cli",
        "runs",
        "--db",
        db_one,
        "export",
        "--format",
        "jsonl",
        "--weights",
        "--out",
        str(export),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    header, line = (json.loads(t) for t in export.read_text().splitlines())
    assert header == {"format": "kdlab-runs-v1", "runs": 1}
    assert line["key"] == teacher["key"] and line["config"]["model"]["name"] == "L1"
    assert len(line["curve"]) >= 2 and base64.b64decode(line["weights_b64"])[:2] == b"PK"

    db_two = f"sqlite:///{second}/runs/kdlab.db"
    args = ["kdlab.cli", "runs", "--db", db_two, "import", "--from-export", str(export)]
    imported = run_cli(*args)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert "imported 1 runs (1 with teacher weights)" in imported.stdout
    row = RunStore(db_two).get(teacher["key"])
    assert row["status"] == "done" and row["val_loss"] == teacher["val_loss"]
    assert row["run_dir"] == str((second / "runs" / teacher["key"]).resolve())
    assert len(RunStore(db_two).curve(teacher["key"])) == len(line["curve"])
    assert "1 were already there" in run_cli(*args).stdout  # importing twice adds nothing

    again = train(*TINY, root=second)
    assert again["key"] == teacher["key"] and again["updated_at"] == row["updated_at"]  # skipped
    student = train(
        "model=nano_L1",
        "objective=distill",
        "data.tokens=32768",  # 64 steps: enough to learn
        "data.tokens_per_param=null",
        "teacher.model=nano_L1",
        "teacher.tokens=16384",
        "teacher.tokens_per_param=null",
        root=second,
    )
    assert student["status"] == "done" and student["teacher_key"] == teacher["key"]


def test_an_import_that_is_not_an_export_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    db = f"sqlite:///{tmp_path}/runs/kdlab.db"
    done = run_cli("kdlab.cli", "runs", "--db", db, "import", "--from-export", str(bad))
    assert done.returncode == 2
    assert "is not a kdlab runs export" in done.stderr and "Traceback" not in done.stderr
    weights = tmp_path / "w.jsonl"
    run = {"key": "k", "role": "teacher", "status": "done", "weights_b64": "bm90IGEgemlw"}
    weights.write_text(json.dumps({"format": "kdlab-runs-v1", "runs": 1}) + "\n" + json.dumps(run))
    done = run_cli("kdlab.cli", "runs", "--db", db, "import", "--from-export", str(weights))
    assert done.returncode == 2 and "do not load as plain tensors" in done.stderr
    assert RunStore(db).get("k") is None
