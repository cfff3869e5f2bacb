"""The run store: SQLite by default, any SQLAlchemy URL (PostgreSQL on clusters).

Every write is a short transaction keyed by the run key, so many jobs on many nodes can
share one database; SQLite gets WAL and a busy timeout so parallel local jobs wait
instead of failing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from kdlab.errors import ConfigError
from kdlab.locking import file_lock
from kdlab.rundb import schema_version
from kdlab.rundb.schema import (
    INFERENCE_COLUMNS,
    RUN_COLUMNS,
    curves,
    runs,
    teacher_inference,
)
from kdlab.rundb.url import shown_url, sqlite_path

HEARTBEAT_S = 30.0  # a training process marks its run alive this often
STALE_S = 600.0  # a running run silent this long is taken to be interrupted


class RunDBError(ConfigError):
    """The database cannot be opened or read; the message names the URL."""


def live_status(row: Mapping[str, Any], now: dt.datetime | None = None) -> str:
    """The row's status as a reader should see it: a ``running`` run whose process is gone
    (no heartbeat for STALE_S, or its pid dead on this host) is ``interrupted``.

    A run killed outright (SIGKILL, a lost node) cannot record that itself.
    """
    if row["status"] != "running":
        return row["status"]
    beat = row.get("heartbeat_at") or row.get("updated_at")
    if beat is not None and ((now or _now()) - beat).total_seconds() > STALE_S:
        return "interrupted"
    if row.get("host") == socket.gethostname() and row.get("pid") and not _alive(row["pid"]):
        return "interrupted"
    return "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def this_process() -> dict[str, Any]:
    """The heartbeat columns for the calling process, beating now."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": _now()}


def _make_folder(folder: Path, create_under: Path | None) -> None:
    """Create the folder of a new SQLite file, only inside kdlab's own run root."""
    inside = create_under is not None and folder.resolve().is_relative_to(create_under.resolve())
    if not inside:
        raise RunDBError(
            f"the folder {folder} of the run database does not exist; create it first "
            "(or check the path for a typo)"
        )
    folder.mkdir(parents=True, exist_ok=True)


def _revision_mismatch(url: str, revision: str) -> str:
    shown = shown_url(url)
    if revision in schema_version.known():
        return (
            f"the run database '{shown}' has schema revision {revision}, and this kdlab "
            f"writes {schema_version.head()}: run `kdlab runs --db '{shown}' migrate`"
        )
    return (
        f"the run database '{shown}' has schema revision {revision}, written by a newer "
        "kdlab than this one: upgrade kdlab"
    )


def _engine_options(url: str, path: Path | None) -> dict[str, Any]:
    """SQLite files wait up to a minute for a writer; in-memory SQLite keeps its one
    connection (each new connection would open a new, empty database)."""
    if path is not None:
        return {"connect_args": {"timeout": 60}}
    if url.startswith("sqlite"):
        return {"poolclass": StaticPool}
    return {}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _dialect_insert(dialect: str) -> Any:
    """INSERT with ON CONFLICT: one atomic statement, so concurrent writers never race."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise RunDBError(f"the run database supports SQLite and PostgreSQL, not {dialect}")
    return insert


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


class RunStore:
    """Reads and writes runs and their validation curves.

    ``create=False`` (read-only commands: listing, fitting, reporting) never creates a
    database: a missing one is a RunDBError. A new SQLite file is created only in a folder
    that exists or lies under ``create_under`` (kdlab's own run root), so a mistyped path
    cannot quietly start a second database beside the study's.
    """

    def __init__(
        self,
        url: str | None,
        create: bool = True,
        create_under: Path | None = None,
        migrate: bool = False,
    ) -> None:
        if not url:
            raise RunDBError("no run database URL: set db.url, --db or KDLAB_DB_URL")
        self.url = url
        self.migrated: tuple[str | None, str] | None = None  # (from, to) when migrate=True
        try:
            self.engine = self._connect(url, create, create_under, migrate)
        except RunDBError:
            raise
        except (ArgumentError, SQLAlchemyError, OSError, ValueError, ImportError) as err:
            raise RunDBError(
                f"cannot open the run database '{shown_url(url)}': {_reason(err)}"
            ) from err

    def _connect(self, url: str, create: bool, create_under: Path | None, migrate: bool) -> Engine:
        path = sqlite_path(url)
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if path is not None:
            if not path.exists() and not create:
                raise RunDBError(
                    f"there is no run database at {path}: nothing was recorded there "
                    "(name another with --db or KDLAB_DB_URL)"
                )
            if not path.parent.is_dir():
                _make_folder(path.parent, create_under)
            # SQLite's switch to WAL and its CREATE TABLEs do not wait for one another
            # across processes, so the jobs of a sweep that open a new file take turns
            lock = file_lock(path.with_name(path.name + ".lock"), optional=True)
        with lock:
            engine = create_engine(url, **_engine_options(url, path))
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            with engine.begin() as conn:
                revision = schema_version.current(conn)
                if revision is None and not create:
                    raise RunDBError(f"the database '{shown_url(url)}' holds no kdlab runs")
                if revision is None or migrate:
                    self.migrated = schema_version.upgrade(conn)
                elif revision != schema_version.head():
                    raise RunDBError(_revision_mismatch(url, revision))
        return engine

    @contextlib.contextmanager
    def _connected(self, write: bool = False) -> Iterator[Connection]:
        """A connection (in a transaction to ``write``); a database that opened but fails
        a statement (a damaged SQLite file) is a RunDBError naming it, not SQLAlchemy's
        dump of the statement."""
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as err:
            raise RunDBError(
                f"cannot use the run database '{shown_url(self.url)}': {_reason(err)}"
            ) from err

    # -- writes ---------------------------------------------------------------------

    def upsert(self, key: str, **fields: Any) -> None:
        """Insert the run or update the given fields of an existing one."""
        self._upsert(runs, RUN_COLUMNS, key, fields)

    def record_inference(self, key: str, **fields: Any) -> None:
        """Insert or update a teacher_inference row (a logit cache, a generated corpus)."""
        self._upsert(teacher_inference, INFERENCE_COLUMNS, key, fields)

    def _upsert(self, table: Table, columns: frozenset[str], key: str, fields: dict) -> None:
        unknown = set(fields) - columns
        if unknown:
            raise ValueError(f"unknown {table.name} fields: {sorted(unknown)}")
        now = _now()
        insert = _dialect_insert(self.engine.dialect.name)
        statement = insert(table).values(key=key, created_at=now, updated_at=now, **fields)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.key], set_={"updated_at": now, **fields}
        )
        with self._connected(write=True) as conn:
            conn.execute(statement)

    def start(self, key: str, **fields: Any) -> None:
        """The run is being trained, by this process."""
        self.upsert(key, status="running", failure=None, **this_process(), **fields)

    def beat(self, key: str) -> None:
        """This process is still training the run (``updated_at`` stays: nothing changed)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.key == key).values(**this_process()))

    def update(self, key: str, **fields: Any) -> None:
        """Change fields of a run that was started; a missing run is a bug, so it raises."""
        with self._connected(write=True) as conn:
            self._update(conn, key, fields)

    def _update(self, conn: Any, key: str, fields: dict[str, Any]) -> None:
        done = conn.execute(
            runs.update().where(runs.c.key == key).values(updated_at=_now(), **fields)
        )
        if done.rowcount != 1:
            raise KeyError(f"run {key} is not in the database {shown_url(self.url)}")

    def finish(self, key: str, attempt: int | None = None, **fields: Any) -> None:
        """Record the run as done, its results those of ``attempt`` (default: the row's).

        The curve points of every other attempt go in the same transaction, so the curve
        shown is always the result's own."""
        if attempt is not None:
            fields["attempt"] = attempt
        kept = select(runs.c.attempt).where(runs.c.key == key).scalar_subquery()
        with self.engine.begin() as conn:
            self._update(conn, key, {"status": "done", "failure": None, **fields})
            conn.execute(
                curves.delete().where((curves.c.run_key == key) & (curves.c.attempt != kept))
            )

    def fail(self, key: str, reason: str, **fields: Any) -> None:
        self.update(key, status="failed", failure=reason, **fields)

    def interrupt(self, key: str, reason: str, **fields: Any) -> None:
        """Stopped from outside (a signal, a requeue): a relaunch resumes it."""
        self.update(key, status="interrupted", failure=reason, **fields)

    def add_curve_point(
        self, key: str, step: int, tokens: int, val_loss: float, attempt: int = 1
    ) -> None:
        insert = _dialect_insert(self.engine.dialect.name)
        statement = insert(curves).values(
            run_key=key, attempt=attempt, step=step, tokens=tokens, val_loss=val_loss
        )
        statement = statement.on_conflict_do_update(
            index_elements=[curves.c.run_key, curves.c.attempt, curves.c.step],
            set_={"tokens": tokens, "val_loss": val_loss},
        )
        with self._connected(write=True) as conn:
            conn.execute(statement)

    # -- reads ----------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._connected() as conn:
            row = conn.execute(select(runs).where(runs.c.key == key)).mappings().first()
        return dict(row) if row else None

    def find(self, **equals: Any) -> list[dict[str, Any]]:
        """Runs whose columns equal the given values, oldest first."""
        query = select(runs).order_by(runs.c.created_at, runs.c.key)
        for name, value in equals.items():
            query = query.where(runs.c[name] == value)
        with self._connected() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def get_inference(self, key: str) -> dict[str, Any] | None:
        query = select(teacher_inference).where(teacher_inference.c.key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def find_inference(self, **equals: Any) -> list[dict[str, Any]]:
        """teacher_inference rows whose columns equal the given values, oldest first."""
        query = select(teacher_inference).order_by(teacher_inference.c.created_at)
        for name, value in equals.items():
            query = query.where(teacher_inference.c[name] == value)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def find_key_prefix(self, prefix: str) -> list[dict[str, Any]]:
        with self._connected() as conn:
            rows = conn.execute(select(runs).where(runs.c.key.startswith(prefix))).mappings()
            return [dict(r) for r in rows]

    def curve(self, key: str, attempt: int | None = None) -> list[dict[str, Any]]:
        """The validation curve of one attempt: by default the one the row's results are of."""
        if attempt is None:
            attempt = select(runs.c.attempt).where(runs.c.key == key).scalar_subquery()
        query = (
            select(curves)
            .where((curves.c.run_key == key) & (curves.c.attempt == attempt))
            .order_by(curves.c.step)
        )
        with self._connected() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _reason(err: BaseException) -> str:
    """The first line of a database error: the driver's message, without the statement."""
    return (str(err).splitlines() or [type(err).__name__])[0]
