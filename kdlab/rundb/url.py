"""Which run database a command uses, and how its URL is shown.

One rule for every command that reads or writes runs (``kdlab-train``, ``kdlab runs``,
``fit``, ``report``, ``sweep``, ``study``, ``demo``): an explicit URL (``--db``, or
``db.url=`` for ``kdlab-train``), else ``KDLAB_DB_URL`` (one server shared by a cluster's
nodes), else the SQLite file ``runs/kdlab.db`` under the run root (``KDLAB_ROOT``, or the
working directory). Each command says which one it uses, without the password.

No URL kdlab stores or prints carries a password: everything shown goes through
``shown_url``, and ``db.url`` may not hold one (Hydra saves a run's config and command
line in its log folder before kdlab runs): a password lives in ~/.pgpass, PGPASSWORD or
KDLAB_DB_URL, which only the resolved config sees.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kdlab.errors import ConfigError

ENV_URL = "KDLAB_DB_URL"
ENV_ROOT = "KDLAB_ROOT"


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The URL of a SQLite file, escaped so that '%', '?' or '#' in a folder name stay
    part of the path instead of being decoded or read as URL options."""
    absolute = str(Path(path).expanduser().resolve())
    return URL.create("sqlite", database=absolute).render_as_string(hide_password=False)


def runs_root() -> Path:
    """The folder that holds ``runs/`` (KDLAB_ROOT, or the working directory)."""
    return Path(os.environ.get(ENV_ROOT) or ".").expanduser().resolve()


def database_url(explicit: str | None = None) -> tuple[str, str]:
    """(URL, where it came from) by the one rule above."""
    if explicit:
        return explicit, "--db"
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL], ENV_URL
    return sqlite_url(runs_root() / "runs" / "kdlab.db"), f"the run root {runs_root()}"


def announce(url: str, source: str) -> None:
    """Say on stderr which database a command uses (stdout stays the command's output)."""
    print(f"kdlab: run database {shown_url(url)} (from {source})", file=sys.stderr)


def shown_url(url: str | None) -> str:
    """The URL as messages and logs show it: any password replaced by ***."""
    if not url:
        return ""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy parses: hide user:pass@
        return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


def has_password(url: str | None) -> bool:
    """Whether a database URL carries a password (user:password@host)."""
    if not url:
        return False
    try:
        return make_url(url).password is not None
    except (ArgumentError, ValueError):
        return shown_url(url) != url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite.

    ``sqlite:///file:x?mode=memory`` is a file named ``file:x`` unless the URL also says
    ``uri=true``: only then does SQLite read ``file:`` URIs and their ``mode``.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") == "true":
        if parsed.query.get("mode") == "memory" or parsed.database.startswith(":memory:"):
            return None
        return Path(parsed.database.removeprefix("file:").split("?")[0])
    return Path(parsed.database)


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL that does not exist yet (opening it would create it)."""
    path = sqlite_path(url)
    return path if path is not None and not path.exists() else None


def configured_url(db: Mapping[str, Any]) -> tuple[str, str]:
    """(URL, where it came from) of a composed ``db`` config node (conf/db/)."""
    url, sqlite = db.get("url"), db.get("sqlite")
    if url and url == os.environ.get(ENV_URL):
        return url, ENV_URL
    if url and has_password(url):
        raise ConfigError(
            f"db.url {shown_url(url)} holds a password, which Hydra would save with the "
            f"run's config: keep it in ~/.pgpass or PGPASSWORD, or give the whole URL in {ENV_URL}"
        )
    if url:
        return url, "db.url"
    if sqlite:
        return sqlite_url(sqlite), "the run root"
    raise ConfigError(
        f"no run database: db.url is empty and this db config keeps no SQLite file "
        f"(set {ENV_URL} or db.url=...)"
    )
