"""Run database: every run kdlab trains, with what a scaling-law fit needs."""

from kdlab.rundb.store import RunDBError, RunStore
from kdlab.rundb.url import (
    announce,
    configured_url,
    database_url,
    missing_sqlite_file,
    shown_url,
    sqlite_path,
    sqlite_url,
)

__all__ = [
    "RunDBError",
    "RunStore",
    "announce",
    "configured_url",
    "database_url",
    "missing_sqlite_file",
    "shown_url",
    "sqlite_path",
    "sqlite_url",
]
