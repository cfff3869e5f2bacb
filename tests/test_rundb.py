"""The run database on a real SQLite file: rows, curves, queries, CLI, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdlab.rundb import RunDBError, RunStore
from kdlab.rundb.query import fit_points


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/runs.db"


def _teacher(store: RunStore, key: str, n: int, d: int, loss: float | None, status="done"):
    store.start(
        key,
        role="teacher",
        n_params=n,
        tokens=d,
        corpus_fingerprint="c1",
        tokenizer="byte",
        n_ctx=128,
    )
    if status == "done":
        store.finish(key, val_loss=loss)
    elif status == "failed":
        store.fail(key, "diverged: loss became nan at step 3")


def test_lifecycle_and_curve(url):
    store = RunStore(url)
    store.start("k1", role="teacher", n_params=10, tokens=200)
    assert store.get("k1")["status"] == "running"
    store.add_curve_point("k1", 5, 100, 3.0)
    store.add_curve_point("k1", 5, 100, 2.9)  # rewritten, not duplicated (resume)
    store.add_curve_point("k1", 10, 200, 2.5)
    store.finish("k1", val_loss=2.5)
    row = store.get("k1")
    assert (row["status"], row["val_loss"], row["failure"]) == ("done", 2.5, None)
    assert [(p["step"], p["val_loss"]) for p in store.curve("k1")] == [(5, 2.9), (10, 2.5)]
    assert RunStore(url).get("k1")["tokens"] == 200  # persisted in the file


def test_fit_points_only_finished_runs_of_the_right_role(url):
    store = RunStore(url)
    _teacher(store, "a", 100, 2000, 3.0)
    _teacher(store, "b", 200, 4000, 2.8)
    _teacher(store, "c", 300, 6000, None, status="failed")
    _teacher(store, "d", 400, 8000, None, status="running")
    store.start("s", role="student", n_params=100, tokens=4000, teacher_loss=2.8)
    store.finish("s", val_loss=2.9)
    sup = fit_points(url, "supervised")
    assert sorted(sup["run_key"]) == ["a", "b"]
    assert list(sup.columns[:3]) == ["N", "D", "loss"]
    dist = fit_points(url, "distillation")
    assert dist[["N_S", "D_S", "L_T", "loss"]].values.tolist() == [[100, 4000, 2.8, 2.9]]


def test_failure_reason_kept(url):
    store = RunStore(url)
    _teacher(store, "x", 1, 1, None, status="failed")
    assert store.get("x")["failure"].startswith("diverged")


@pytest.mark.parametrize(
    "bad, sentence",
    [
        ("nodb://nowhere", "cannot open the run database 'nodb://nowhere'"),
        ("sqlite:////proc/no/such/dir/x.db", "the folder /proc/no/such/dir of the run database"),
    ],
)
def test_unreadable_url_is_one_sentence(bad, sentence):
    with pytest.raises(RunDBError, match=sentence):
        RunStore(bad)


def test_which_urls_are_sqlite_files(tmp_path):
    from kdlab.rundb import sqlite_path

    assert sqlite_path("sqlite:///runs/kdlab.db") == Path("runs/kdlab.db")
    assert sqlite_path(f"sqlite+pysqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    # SQLite reads file: URIs (and their mode) only when the URL says uri=true; without
    # it, file:x is the name of a file in the working directory
    assert sqlite_path("sqlite:///file:x?mode=memory") == Path("file:x")
    memories = (
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///file:x?mode=memory&uri=true",
    )
    for memory in memories:
        assert sqlite_path(memory) is None
        RunStore(memory).start("k", role="teacher")  # in memory: no file, no lock file
    assert sqlite_path("postgresql+psycopg://kd@host/runs") is None
    assert not list(Path.cwd().glob("*.lock")) and not Path("file:x").exists()


def test_a_password_never_appears_in_the_message():
    pytest.importorskip("psycopg")
    with pytest.raises(RunDBError) as err:
        RunStore("postgresql+psycopg://kd:hunter2@127.0.0.1:1/runs")  # nothing listens on 1
    assert "hunter2" not in str(err.value)
    assert "postgresql+psycopg://kd:***@127.0.0.1:1/runs" in str(err.value)
    with pytest.raises(RunDBError) as err:  # a URL SQLAlchemy cannot parse (bad port)
        RunStore("postgresql://kd:hunter2@127.0.0.1:port/runs")
    assert "hunter2" not in str(err.value) and "kd:***@" in str(err.value)


def test_objective_label_of_a_student_config_with_keys_left_out():
    from kdlab.rundb.query import kd_objective

    assert kd_objective({"kd_lambda": 0.5}) == "forward_kl lambda=0.5 tau=1"
    assert kd_objective({"kd_lambda": 1, "divergence": "jsd"}) == "jsd lambda=1 tau=1"
    assert kd_objective({"kd_lambda": 1, "top_k": 128, "tau_squared": False}) == (
        "forward_kl lambda=1 tau=1 no_tau2 top_k=128"
    )
    assert kd_objective({"_target_": "kdlab.modules.PretrainModule"}) is None


def _writer(url: str, worker: int, n: int) -> None:
    store = RunStore(url)
    for i in range(n):
        key = f"w{worker}-{i}"
        store.start(key, role="teacher", n_params=i + 1)
        store.add_curve_point(key, 1, 1, 1.0)
        store.finish(key, val_loss=1.0)


def test_two_processes_lose_no_rows(url):
    RunStore(url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = RunStore(url).find(status="done")
    assert len(rows) == 80


def _opener(url: str, barrier, errors) -> None:
    barrier.wait()
    try:
        RunStore(url)
    except RunDBError as err:
        errors.put(str(err))


def test_jobs_opening_a_new_database_together_all_get_in(tmp_path):
    """A sweep's first jobs all create the tables of a new SQLite file at the same moment.

    Before the fix about two rounds in three lost a job to 'table runs already exists'.
    """
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(10):
        url = f"sqlite:///{tmp_path}/round{round_}.db"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_opener, args=(url, barrier, errors)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 4
    assert errors.empty(), errors.get()


def test_cli_list_show_export(url, tmp_path):
    store = RunStore(url)
    _teacher(store, "abcdef0123456789", 100, 2000, 3.0)

    def kdlab(*args):
        return subprocess.run(
            [sys.executable, "-m", "kdlab.cli", "runs", "--db", url, *args],
            capture_output=True,
            text=True,
        )

    store.update("abcdef0123456789", study="nano", family="teachers", corpus="stdlib")
    _teacher(store, "abc9990000000000", 200, 40000, 2.5)
    store.update("abc9990000000000", study="pysrc", corpus="pysrc", teacher_model=None)

    out = kdlab("list")
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if " key " in line)
    cells = [c.strip() for c in header.strip("┃│ ").split("┃")]
    assert cells == [
        *("key", "status", "study", "family", "role", "corpus", "model"),
        *("N", "D", "M", "teacher", "val loss", "imported"),
    ]
    row = next(line for line in out.stdout.splitlines() if "abc9990000000000" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][2:8] == [
        "pysrc",
        "-",
        "teacher",
        "pysrc",
        "-",
        "200",
    ]
    assert "4e+04" in row  # D in engineering form
    assert row.strip("│ ").split("│")[-1].strip() == "-"  # trained by kdlab, not imported
    only = kdlab("list", "--study", "nano")
    assert "abcdef0123456789" in only.stdout and "abc9990000000000" not in only.stdout
    by_corpus = kdlab("list", "--corpus", "pysrc")
    assert "abc9990000000000" in by_corpus.stdout and "abcdef0123456789" not in by_corpus.stdout

    shown = kdlab("show", "abcd")
    assert shown.returncode == 0, shown.stderr
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in shown.stdout.splitlines()
        if line.count("│") == 3
    }
    assert (lines["val_loss"], lines["n_params"], lines["study"]) == ("3", "100", "nano")
    as_json = json.loads(kdlab("show", "abcd", "--json").stdout)
    assert as_json["val_loss"] == 3.0 and as_json["curve"] == []
    missing = kdlab("show", "zzz")
    assert missing.returncode == 2 and "no run matches key 'zzz'" in missing.stderr
    several = kdlab("show", "abc")
    assert several.returncode == 2
    assert "2 runs match key 'abc'" in several.stderr and "abc9990000000000" in several.stderr
    for fmt in ("csv", "parquet"):
        target = tmp_path / f"runs.{fmt}"
        assert kdlab("export", "--format", fmt, "--out", str(target)).returncode == 0
        frame = pd.read_csv(target) if fmt == "csv" else pd.read_parquet(target)
        assert frame.loc[0, "val_loss"] == 3.0 and frame.loc[0, "n_params"] == 100


def _revision(url: str) -> str | None:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def test_schema_revision_is_recorded_checked_and_migrated(tmp_path, capsys):
    from alembic import command
    from sqlalchemy import create_engine, text

    from kdlab.cli import main
    from kdlab.rundb import schema_version

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    RunStore(fresh).start("a", role="teacher")
    assert _revision(fresh) == schema_version.head()

    # a database from before migrations (the baseline's tables, no version table) is
    # refused until `kdlab runs migrate` brings it up, its rows and curves kept
    old = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(old).begin() as conn:
        config = schema_version._config(conn)
        command.upgrade(config, schema_version.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO runs (key, status, role) VALUES ('a', 'done', 'teacher')"))
        conn.execute(text("INSERT INTO curves VALUES ('a', 10, 640, 3.5)"))
    capsys.readouterr()
    assert main(["runs", "--db", old, "list"]) == 2
    assert "has schema revision 0001" in capsys.readouterr().err
    assert main(["runs", "--db", old, "migrate"]) == 0
    assert _revision(old) == schema_version.head()
    migrated = RunStore(old, create=False)
    assert (migrated.get("a")["role"], migrated.get("a")["attempt"]) == ("teacher", 1)
    assert [(p["step"], p["attempt"], p["val_loss"]) for p in migrated.curve("a")] == [(10, 1, 3.5)]

    # a database written by a newer kdlab is refused, in one sentence, and left alone
    with create_engine(fresh).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    capsys.readouterr()
    assert main(["runs", "--db", fresh, "list"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"kdlab: error: the run database '{fresh}' has schema revision 9999, written by a "
        "newer kdlab than this one: upgrade kdlab"
    )
    assert _revision(fresh) == "9999"


def test_read_only_commands_never_create_a_database(tmp_path, capsys):
    """Looking at runs (list, show, export, fit, report, sweep plan) never creates the
    database, its folder, its lock file or an output file."""
    from kdlab.cli import main

    missing = tmp_path / "none" / "kdlab.db"
    url = f"sqlite:///{missing}"
    for argv in (
        ["runs", "--db", url, "list"],
        ["runs", "--db", url, "show", "abc"],
        ["runs", "--db", url, "export", "--out", str(tmp_path / "runs.csv")],
        ["fit", "supervised", "--db", url],
        ["report", "--db", url, "--out", str(tmp_path / "report")],
    ):
        assert main(argv) == 2
        assert f"there is no run database at {missing}" in capsys.readouterr().err
    assert main(["sweep", "plan", "nano/teachers", f"db.url={url}"]) == 0
    assert "2 jobs, 0 done, 2 to run" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
