"""Where ``kdlab runs import --wandb`` reads W&B runs: each source gives ``WandbRun``s.

An offline run folder's ``.wandb`` file (``kdlab.wandb_offline``; a folder holding several
gives each), the runs table a user downloads from W&B's UI as CSV (Name, State, then config
and summary columns, which the export does not tell apart) and ``entity/project`` through
``wandb.Api()``, which needs W&B's server: offline it is one sentence naming the project.
The mapping and the rows are ``kdlab.rundb.wandb_import``'s; nothing here knows kdlab's
columns.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError


@dataclass
class WandbRun:
    """One W&B run as any source gives it."""

    run_id: str
    name: str
    state: str  # W&B's: finished, crashed, failed, killed, running (or unfinished offline)
    config: dict[str, Any]  # flat: nested keys joined with '.'
    summary: dict[str, Any]
    source: str  # where it was read: an offline run file, a CSV export and row, a project
    project: str | None = None
    group: str | None = None
    url: str | None = None
    history: dict[str, Any] | None = field(default=None)  # last logged value of each key


def read_source(source: str, history_key: str | None = None) -> list[WandbRun]:
    """The runs of an offline run folder (or a folder of them), a CSV export, or, when no
    such path exists, a W&B ``entity/project``."""
    path = Path(source)
    if path.is_dir():
        return read_offline_folder(path)
    if path.is_file():
        return read_csv_export(path)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return read_project(source, history_key)
    raise ConfigError(
        f"there is no W&B offline run folder or CSV export at {source} (nor is it an "
        "entity/project)"
    )


def read_offline_folder(folder: Path) -> list[WandbRun]:
    """Every run under ``folder``: a run folder itself, ``wandb/`` or any folder of them."""
    from kdlab.wandb_offline import read_offline_run

    files = sorted({p.resolve() for p in folder.rglob("*.wandb")})
    if not files:
        raise ConfigError(f"{folder} holds no W&B run (no .wandb file under it)")
    out = []
    for file in files:
        run = read_offline_run(file.parent)
        last: dict[str, Any] = {}
        for row in run.rows:
            last.update({k: v for k, v in row.items() if v is not None})
        state = {None: "unfinished", 0: "finished"}.get(run.exit_code, "failed")
        out.append(
            WandbRun(
                run_id=run.run.get("run_id") or file.stem.removeprefix("run-"),
                name=run.run.get("display_name") or run.run.get("run_id") or file.stem,
                state=state,
                config=_flat(run.config),
                summary=_flat(run.summary),
                source=str(file),
                project=run.run.get("project") or None,
                group=run.run.get("run_group") or None,
                history=last,
            )
        )
    return out


def read_csv_export(path: Path) -> list[WandbRun]:
    """The runs table W&B's UI exports: Name, State (ID if shown), then config and summary
    columns, which the export does not tell apart: a mapped key is looked up in both."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"cannot read {path} as CSV: {err}") from None
    header = list(rows[0]) if rows else []
    if "Name" not in header or "State" not in header:
        raise ConfigError(
            f"{path} is not a W&B runs table export (it has no Name and State columns)"
        )
    out = []
    for number, row in enumerate(rows, start=2):
        values = {k: v for k, v in row.items() if k not in ("Name", "State", "ID") and v != ""}
        run_id = row.get("ID") or row["Name"]
        out.append(
            WandbRun(
                run_id=run_id,
                name=row["Name"],
                state=row["State"],
                config={},
                summary=values,
                source=f"{path} line {number}",
            )
        )
    ids = [run.run_id for run in out]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(
            f"{path} names runs {', '.join(twice)} more than once; export the ID column "
            "to tell them apart"
        )
    return out


def read_project(project: str, history_key: str | None = None) -> list[WandbRun]:
    """The runs of a W&B project through ``wandb.Api()``: needs W&B's server."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise ConfigError(
            f"cannot read W&B project {project}: WANDB_MODE is {mode}, so W&B's server is "
            "not asked; import an offline run folder or a CSV export of its runs instead"
        )
    import wandb

    try:
        runs = list(wandb.Api(timeout=30).runs(project))
        out = []
        for run in runs:
            history = None
            if history_key is not None:
                rows = run.scan_history(keys=[history_key])
                logged = [v for r in rows if (v := r.get(history_key)) is not None]
                history = {history_key: logged[-1]} if logged else {}
            out.append(
                WandbRun(
                    run_id=run.id,
                    name=run.name,
                    state=run.state,
                    config=_flat(dict(run.config)),
                    summary=_flat(dict(run.summary._json_dict)),
                    source=f"W&B project {project}",
                    project=project.split("/")[-1],
                    group=run.group,
                    url=run.url,
                    history=history,
                )
            )
    except Exception as err:  # wandb raises many types (auth, HTTP, GraphQL): one sentence
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"cannot read W&B project {project}: {reason}") from None
    if not out:
        raise ConfigError(f"W&B project {project} holds no runs")
    return out


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with '.' (as W&B's tables show them);
    W&B's own bookkeeping (``_wandb``) left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name.startswith("_wandb"):
            continue
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out
