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


@pytest.fixture
def fresh_database():
    """A database of its own on the test server, so a whole study can be built in it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"kdlab_{uuid.uuid4().hex[:8]}"
    server = create_engine(URL, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    server.dispose()


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
