"""The run database's schema version: Alembic migrations, applied by ``kdlab runs
migrate`` and checked whenever a database is opened.

``create_all`` never alters an existing table, so a database written by an older kdlab
would keep its old columns silently; instead every schema change is a migration under
``migrations/versions`` and a database at another revision is refused with the command
that brings it up to date. A new, empty database is created by running all migrations.
Databases from before migrations existed hold revision 0001's schema without Alembic's
version table and are read as revision 0001.
"""

from __future__ import annotations

import logging
from pathlib import Path

# alembic logs each plugin it sets up and its DDL mode at INFO on every open: noise here
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import inspect, text  # noqa: E402
from sqlalchemy.engine import Connection  # noqa: E402

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
_PG_LOCK = 0x6B646C6162  # "kdlab": one advisory lock for jobs migrating one server


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The revision this kdlab's code writes."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known() -> set[str]:
    """Every revision this kdlab has a migration for."""
    return {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def current(connection: Connection) -> str | None:
    """The database's revision; None for an empty database.

    The runs table is looked for first: kdlab creates it and records the revision in one
    transaction, so once the table is seen the revision is too. Read the other way round,
    a job could miss the revision of a database another job was creating, then see its
    table, and take it for one from before migrations (a 2-rank job did: rank 1 refused
    the database rank 0 had just made)."""
    has_runs = inspect(connection).has_table("runs")
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and has_runs:
        return BASELINE  # made before kdlab used migrations
    return revision


def upgrade(connection: Connection) -> tuple[str | None, str]:
    """Bring the database to head (creating it when empty); returns (from, to).

    Jobs of a sweep may open a new database at the same moment: on PostgreSQL they take
    turns on an advisory lock (SQLite files are opened under a file lock by the store).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK})"))
    before, config = current(connection), _config(connection)
    if before == BASELINE and MigrationContext.configure(connection).get_current_revision() is None:
        command.stamp(config, BASELINE)  # a database from before migrations: say so
    if before != head():
        command.upgrade(config, "head")
    return before, head()
