"""The run database on a real PostgreSQL server (started by .ci/run or scripts/postgres.sh)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import uuid

import pytest

from kdlab.rundb import RunStore
from kdlab.rundb.query import fit_points

URL = os.environ.get("KDLAB_TEST_POSTGRES_URL")


# Without a server URL these tests are skipped; with one (as in CI) a server that cannot
# be used fails them, so a PostgreSQL-only regression cannot pass as a skip.
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not URL,
        reason="KDLAB_TEST_POSTGRES_URL is not set (source scripts/postgres.sh to start a server)",
    ),
]


def _writer(url: str, prefix: str, worker: int, n: int) -> None:
    store = RunStore(url)
    for i in range(n):
        key = f"{prefix}-{worker}-{i}"
        store.start(key, role="teacher", n_params=100 + i, tokens=1000 * (i + 1))
        store.add_curve_point(key, 1, 10, 3.0)
        store.add_curve_point(key, 2, 20, 2.5)
        store.finish(key, val_loss=2.5)


def test_several_processes_lose_no_rows():
    prefix = uuid.uuid4().hex[:8]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(URL, prefix, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    store = RunStore(URL)
    rows = store.find_key_prefix(prefix)
    assert len(rows) == 100 and all(r["status"] == "done" for r in rows)
    assert all(len(store.curve(r["key"])) == 2 for r in rows)


def test_same_schema_and_queries_as_sqlite():
    prefix = uuid.uuid4().hex[:8]
    store = RunStore(URL)
    store.start(
        f"{prefix}-t",
        role="teacher",
        n_params=10,
        tokens=200,
        corpus_fingerprint=prefix,
        tokenizer="byte",
        n_ctx=128,
        config={"model": {"name": "L1"}},
    )
    store.finish(f"{prefix}-t", val_loss=3.0)
    row = store.get(f"{prefix}-t")
    assert row["config"] == {"model": {"name": "L1"}} and row["status"] == "done"
    points = fit_points(URL, "supervised")
    assert f"{prefix}-t" in set(points["run_key"])


def test_report_from_postgresql_is_the_report_from_sqlite(fresh_database, tmp_path):
    from kdlab.cli import main as kdlab_main
    from tests.test_report import build_study

    pages = {}
    with_password = fresh_database.replace("kdlab@", "kdlab:hunter2@")  # trust auth ignores it
    for kind, url in (("postgres", with_password), ("sqlite", f"sqlite:///{tmp_path}/runs.db")):
        build_study(url)
        out = tmp_path / kind
        assert kdlab_main(["report", "--db", url, "--out", str(out), "--plan-budgets", "0"]) == 0
        pages[kind] = json.loads((out / "report.json").read_text())
    pg, lite = pages["postgres"], pages["sqlite"]
    for shown in ("report.json", "index.html"):  # a password never reaches the report
        assert "hunter2" not in (tmp_path / "postgres" / shown).read_text()
    assert pg["db"] == with_password.replace("hunter2", "***")
    assert pg["figures"] and pg["figures"] == lite["figures"]
    assert pg["skipped"] == lite["skipped"]
    for key in set(pg) - {"db", "figures"}:
        assert pg[key] == lite[key], key
    for png in pg["figures"].values():  # the same runs read back: the same figures
        assert (tmp_path / "postgres" / png).read_bytes() == (
            tmp_path / "sqlite" / png
        ).read_bytes()


# -------------------------------------------------------------- a database password

PASSWORD_GROUP = "kdlab_password_users"  # scripts/postgres.sh: its members log in by password


@pytest.fixture
def password_database():
    """A role of its own with a password the server really checks (scram-sha-256, by the
    pg_hba.conf line scripts/postgres.sh writes for members of PASSWORD_GROUP), owning a
    fresh database; yields (URL with the password, the password)."""
    import secrets

    import psycopg
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    suffix = uuid.uuid4().hex[:8]
    role, name, password = f"kdlab_pw_{suffix}", f"kdlab_pw_{suffix}", secrets.token_hex(12)
    server = create_engine(URL, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :g"), {"g": PASSWORD_GROUP}
        ).first()
        if not exists:
            conn.execute(text(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN"))
        conn.execute(
            text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE {PASSWORD_GROUP}")
        )
        conn.execute(text(f"CREATE DATABASE {name} OWNER {role}"))
    base = make_url(URL).set(username=role, database=name)
    url = base.set(password=password).render_as_string(hide_password=False)
    # the server checks it: a wrong password and none are refused
    for wrong in ("not-it", None):
        attempt = base.set(password=wrong, drivername="postgresql")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(attempt.render_as_string(hide_password=False), connect_timeout=10)
    yield url, password
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        conn.execute(text(f"DROP ROLE {role}"))
    server.dispose()


def _everything_under(root) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_no_password_is_stored_or_printed(password_database, tmp_path):
    """A real run (W&B offline, Hydra's own files), a fit, a report and every runs
    command against a password-protected server: the password is in no file they leave,
    no row and no line they print."""
    from sqlalchemy import create_engine, text

    from tests.conftest import FAST, run_cli
    from tests.test_report import build_study

    url, password = password_database
    env = {"KDLAB_DB_URL": url, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    tiny = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
    printed = []

    def kdlab(module: str, *args: str) -> str:
        result = run_cli(module, *args, cwd=tmp_path, env=env)
        printed.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    kdlab("kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *tiny, "logger=wandb")
    build_study(url, students=False)  # runs enough for a fit, in the same database
    fit, grid = tmp_path / "fit.json", tmp_path / "grid.json"
    grid.write_text(
        json.dumps(
            {"e": [0.2], "a": [8.0], "b": [9.8], "alpha": [0.4], "beta": [0.43], "gamma": [0.45]}
        )
    )
    fit_args = ["--corpus", "c4-0123abcd", "--grid", str(grid), "--keep", "0", "--final-keep", "0"]
    doc = json.loads(
        kdlab("kdlab.cli", "fit", "supervised", *fit_args, "--out", str(fit), "--json")
    )
    shown = url.replace(password, "***")
    assert doc["data"]["source"] == shown
    kdlab(
        "kdlab.cli",
        "report",
        "--supervised-fit",
        str(fit),
        "--out",
        str(tmp_path / "report"),
        "--plan-budgets",
        "0",
        "--map-points",
        "0",
        "--wandb",
        "--wandb-project",
        "kdlab-test",
    )
    assert "***" in kdlab("kdlab.cli", "runs", "list")  # its title names the database
    runs = create_engine(url).connect()
    trained = runs.execute(text("SELECT key FROM runs WHERE corpus = 'stdlib'")).scalar_one()
    kdlab("kdlab.cli", "runs", "show", trained)
    kdlab("kdlab.cli", "runs", "export", "--out", str(tmp_path / "runs.csv"))

    files = _everything_under(tmp_path)
    assert any("/wandb/" in f for f in files) and any("/.hydra/" in f for f in files)
    assert any(f.endswith("model.pt") for f in files) and str(fit) in files
    leaks = [f for f, data in files.items() if password.encode() in data]
    assert leaks == []
    assert [out for out in printed if password in out] == []
    row_text = [
        json.dumps(dict(r._mapping), default=str)
        for table in ("runs", "curves")
        for r in runs.execute(text(f"SELECT * FROM {table}"))
    ]
    assert row_text and [r for r in row_text if password in r] == []
    config = runs.execute(text(f"SELECT config FROM runs WHERE key = '{trained}'")).scalar_one()
    config = json.loads(config) if isinstance(config, str) else config
    assert config["db"]["url"] == shown  # the row says which database, without the password
    runs.close()


def test_a_password_on_the_command_line_is_refused_before_hydra_saves_it(
    password_database, tmp_path
):
    from tests.conftest import FAST, run_cli

    url, password = password_database
    tiny = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
    for mode in ([], ["-m"]):
        result = run_cli(
            "kdlab.train",
            *mode,
            f"paths.root_dir={tmp_path}",
            *FAST,
            *tiny,
            f"db.url={url}",
            cwd=tmp_path,
            env={"KDLAB_DB_URL": ""},
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"kdlab-train: error: db.url {url.replace(password, '***')} holds a password, "
            "which Hydra would save with the run's config: keep it in ~/.pgpass or "
            "PGPASSWORD, or give the whole URL in KDLAB_DB_URL"
        )
        assert password not in result.stdout + result.stderr
    leaks = [f for f, data in _everything_under(tmp_path).items() if password.encode() in data]
    assert leaks == []


def test_wandb_import_into_postgresql(fresh_database, tmp_path):
    """Imported runs on a server: the same rows, imported again in place, a kdlab row kept."""
    from kdlab.cli import main as kdlab_main
    from kdlab.rundb.wandb_import import run_key
    from tests.test_wandb_import import CSV_DECLARED, CSV_KEYS, export_runs, grid_runs, write_export

    write_export(tmp_path / "export.csv", export_runs())
    args = ["runs", "--db", fresh_database, "import", "--wandb", str(tmp_path / "export.csv")]
    args += [a for pair in CSV_KEYS for a in ("--map-key", pair)]
    args += [a for pair in CSV_DECLARED for a in ("--declare", pair)]
    assert kdlab_main(args) == 0
    assert kdlab_main(args) == 0  # again: updated in place
    points = fit_points(fresh_database, "supervised")
    expected = {(int(n), d): loss for n, d, loss in grid_runs((5, 20, 80))}
    assert {(int(r.N), int(r.D)): r.loss for r in points.itertuples()} == pytest.approx(expected)
    assert set(points["corpus"]) == {"declared:their-web-text"}
    store = RunStore(fresh_database)
    assert len(store.find()) == 13
    key = run_key("crashed-one")
    store.upsert(key, status="done", role="teacher", imported_from=None, val_loss=2.0)
    before = store.get(key)
    assert kdlab_main(args) == 2
    assert store.get(key) == before


def test_a_database_created_between_two_reads_of_its_revision_is_at_head(
    fresh_database, monkeypatch
):
    """Another job creates the database while this one reads its revision: whichever of
    the two reads (its runs table, its recorded revision) comes first, the creation
    lands after it, and the database must read as new (None) or at head, never as one
    from before migrations. A 2-rank job's rank 1 once refused rank 0's new database so."""
    from sqlalchemy import create_engine

    from kdlab.rundb import schema_version

    reads, creating = [], []

    def then_another_job_creates_it() -> None:
        reads.append(1)
        if len(reads) == 1:
            creating.append(1)  # the other job reads with the real functions
            RunStore(fresh_database)
            creating.clear()

    real_inspect, real_configure = schema_version.inspect, schema_version.MigrationContext.configure

    class Inspector:
        def __init__(self, inspector):
            self.inspector = inspector

        def has_table(self, name):
            found = self.inspector.has_table(name)
            then_another_job_creates_it()
            return found

    class Context:
        def __init__(self, context):
            self.context = context

        def get_current_revision(self):
            revision = self.context.get_current_revision()
            then_another_job_creates_it()
            return revision

    def inspect(*args, **kwargs):
        inspector = real_inspect(*args, **kwargs)
        return inspector if creating else Inspector(inspector)

    def configure(*args, **kwargs):
        context = real_configure(*args, **kwargs)
        return context if creating else Context(context)

    monkeypatch.setattr(schema_version, "inspect", inspect)
    monkeypatch.setattr(schema_version.MigrationContext, "configure", configure)
    engine = create_engine(fresh_database)
    with engine.connect() as connection:
        assert schema_version.current(connection) in (None, schema_version.head())
    engine.dispose()
    assert len(reads) == 2
