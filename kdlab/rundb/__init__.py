"""Run database: every run kdlab trains, with what a scaling-law fit needs."""

from kdlab.rundb.query import fit_points, runs_frame
from kdlab.rundb.store import (
    DEFAULT_URL,
    RunDBError,
    RunStore,
    missing_sqlite_file,
    shown_url,
    sqlite_path,
)

__all__ = [
    "DEFAULT_URL",
    "RunDBError",
    "RunStore",
    "fit_points",
    "missing_sqlite_file",
    "runs_frame",
    "shown_url",
    "sqlite_path",
]
