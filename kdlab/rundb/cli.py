"""kdlab runs list|show|export: look at the run database without SQL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from kdlab.console import console
from kdlab.rundb.query import runs_frame
from kdlab.rundb.store import DEFAULT_URL, RunDBError, RunStore, shown_url, sqlite_path
from kdlab.rundb.transfer import export_jsonl, import_jsonl

LIST_COLUMNS = [
    "key",
    "status",
    "role",
    "model",
    "n_params",
    "tokens",
    "tokens_per_param",
    "val_loss",
]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", help="list, show or export recorded runs")
    runs.add_argument("--db", default=DEFAULT_URL, help="SQLAlchemy URL of the run database")
    sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = sub.add_parser("list", help="one line per run")
    listing.add_argument("--status", choices=["running", "done", "failed"])
    listing.add_argument("--role", choices=["teacher", "supervised", "student"])
    listing.set_defaults(func=_list)
    show = sub.add_parser("show", help="every field of one run and its curve")
    show.add_argument("key", help="run key or a unique prefix of it")
    show.set_defaults(func=_show)
    export = sub.add_parser("export", help="all runs to CSV, Parquet or JSON lines")
    export.add_argument(
        "--format",
        choices=["csv", "parquet", "jsonl"],
        default="csv",
        help="jsonl: every column, the curves, and what `kdlab runs import` reads back",
    )
    export.add_argument(
        "--weights", action="store_true", help="jsonl: with finished teachers' final weights"
    )
    export.add_argument("--out", required=True)
    export.set_defaults(func=_export)
    imp = sub.add_parser("import", help="bring back the runs of a jsonl export the database lacks")
    imp.add_argument("--from-export", required=True, metavar="FILE", help="a jsonl export")
    imp.add_argument(
        "--runs-dir",
        help="where the runs' directories (teachers' weights) go; default: beside a SQLite "
        "database",
    )
    imp.set_defaults(func=_import)


def _filters(args: argparse.Namespace) -> dict:
    return {k: v for k in ("status", "role") if (v := getattr(args, k, None))}


def _list(args: argparse.Namespace) -> int:
    frame = runs_frame(args.db, **_filters(args))
    table = Table(title=f"{len(frame)} runs in {args.db}")
    for column in LIST_COLUMNS:
        table.add_column(column)
    for _, row in frame.iterrows():
        table.add_row(*(_fmt(row.get(c)) for c in LIST_COLUMNS))
    console.print(table)
    return 0


def _fmt(value: object) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _show(args: argparse.Namespace) -> int:
    store = RunStore(args.db)
    matches = store.find_key_prefix(args.key)
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        print(f"kdlab: error: {found} matches key '{args.key}' in {args.db}", file=sys.stderr)
        return 2
    row = matches[0]
    row["curve"] = store.curve(row["key"])
    print(json.dumps(row, indent=2, default=str))
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "jsonl":
        count = export_jsonl(args.db, args.out, weights=args.weights)
        print(f"kdlab: wrote {count} runs to {args.out}")
        return 0
    frame = runs_frame(args.db)
    if args.format == "csv":
        frame.to_csv(args.out, index=False)
    else:
        frame.to_parquet(args.out, index=False)
    print(f"kdlab: wrote {len(frame)} runs to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir
    if runs_dir is None:
        path = sqlite_path(args.db)
        if path is None:
            raise RunDBError("kdlab runs import into a server database needs --runs-dir")
        runs_dir = path.parent
    if not Path(args.from_export).is_file():
        raise RunDBError(f"there is no export file {args.from_export}")
    counts = import_jsonl(args.db, args.from_export, runs_dir)
    print(
        f"kdlab: imported {counts['added']} runs ({counts['weights']} with teacher weights) "
        f"into {shown_url(args.db)}; {counts['skipped']} were already there"
    )
    return 0
