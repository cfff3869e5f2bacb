"""kdlab runs list|show|export: look at the run database without SQL."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.table import Table

from kdlab.console import console
from kdlab.errors import ConfigError
from kdlab.locking import temp_path_for
from kdlab.rundb.store import RunStore, live_status
from kdlab.rundb.transfer import export_jsonl, import_jsonl
from kdlab.rundb.url import announce, database_url, shown_url, sqlite_path

# (column, heading): what tells runs apart when a study is compared
LIST_COLUMNS = [
    ("key", "key"),
    ("status", "status"),
    ("study", "study"),
    ("family", "family"),
    ("role", "role"),
    ("corpus", "corpus"),
    ("model", "model"),
    ("n_params", "N"),
    ("tokens", "D"),
    ("tokens_per_param", "M"),
    ("teacher_model", "teacher"),
    ("val_loss", "val loss"),
    ("imported_from", "imported"),
]
FILTERS = ("status", "role", "study", "family", "corpus")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", description="List, show or export recorded runs.")
    runs.add_argument(
        "--db", help="run database URL (default: KDLAB_DB_URL, else runs/kdlab.db under the root)"
    )
    sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = sub.add_parser("list", help="one line per run")
    listing.add_argument(
        "--status",
        choices=["running", "done", "failed", "interrupted"],
        help="interrupted: stopped by a signal, or running with no live process",
    )
    listing.add_argument("--role", choices=["teacher", "supervised", "student"])
    listing.add_argument("--study", help="only the runs of this study")
    listing.add_argument("--family", help="only the runs of this sweep family")
    listing.add_argument("--corpus", help="only the runs of this corpus (its name)")
    listing.set_defaults(func=_list)
    show = sub.add_parser("show", help="every field of one run and its curve")
    show.add_argument("key", help="run key or a unique prefix of it")
    show.add_argument("--json", action="store_true", help="the row and curve as JSON")
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
    compute = sub.add_parser(
        "compute", help="a study's FLOPs by part, each teacher cache counted once"
    )
    compute.add_argument("--study", help="only the runs of this study")
    compute.set_defaults(func=_compute)
    imp = sub.add_parser(
        "import",
        help="bring back the runs of a jsonl export the database lacks, or bring in runs "
        "another codebase logged to W&B",
    )
    what = imp.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-export", metavar="FILE", help="a jsonl export")
    what.add_argument(
        "--wandb",
        metavar="SOURCE",
        help="an offline W&B run folder (or a folder of them, e.g. wandb/), a CSV export of "
        "a W&B runs table, or entity/project (needs W&B's server)",
    )
    imp.add_argument(
        "--map",
        metavar="YAML",
        help="--wandb: which keys give N, D, the loss... (keys:) and the declared corpus, "
        "tokenizer, n_ctx (declare:)",
    )
    imp.add_argument(
        "--map-key",
        action="append",
        default=[],
        metavar="FIELD=KEY",
        help="--wandb: e.g. n=model.n_params, d=tokens, loss=val/loss (over --map)",
    )
    imp.add_argument(
        "--declare",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="--wandb: e.g. corpus=fineweb, tokenizer=gpt2, n_ctx=1024, role=teacher",
    )
    imp.add_argument(
        "--runs-dir",
        help="where the runs' directories (teachers' weights) go; default: beside a SQLite "
        "database",
    )
    imp.set_defaults(func=_import)
    migrate = sub.add_parser("migrate", help="bring the database's schema up to this kdlab's")
    migrate.set_defaults(func=_migrate)


def _url(args: argparse.Namespace) -> str:
    """The database by kdlab's one rule (--db, KDLAB_DB_URL, the run root), announced."""
    url, source = database_url(args.db)
    announce(url, source)
    return url


def _filters(args: argparse.Namespace) -> dict:
    return {k: v for k in FILTERS if (v := getattr(args, k, None))}


def _list(args: argparse.Namespace) -> int:
    url = _url(args)
    equals = _filters(args)
    status = equals.pop("status", None)  # the shown status: a dead "running" is interrupted
    rows = RunStore(url, create=False).find(**equals)  # rows, not pandas: listing stays quick
    for row in rows:
        row["status"] = live_status(row)
        row["imported_from"] = "W&B" if row["imported_from"] else None  # whence: runs show
    rows = [row for row in rows if status is None or row["status"] == status]
    table = Table(title=f"{len(rows)} runs in {shown_url(url)}")
    for _, heading in LIST_COLUMNS:
        table.add_column(heading, justify="right" if heading in ("N", "D", "M") else "left")
    for row in rows:
        table.add_row(*(_fmt(row.get(column)) for column, _ in LIST_COLUMNS))
    console.print(table)
    return 0


def _fmt(value: object) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:.3g}"  # N and D read as 3.41e+03, not 16384 vs 163840
    return str(value)


def _show(args: argparse.Namespace) -> int:
    url = _url(args)
    store = RunStore(url, create=False)
    matches = store.find_key_prefix(args.key)
    if len(matches) != 1:
        if not matches:
            raise ConfigError(f"no run matches key '{args.key}' in {shown_url(url)}")
        keys = ", ".join(sorted(m["key"] for m in matches)[:10])
        raise ConfigError(
            f"{len(matches)} runs match key '{args.key}' in {shown_url(url)} ({keys}); "
            "give more of the key"
        )
    row = matches[0]
    row["status"] = live_status(row)
    curve = store.curve(row["key"])
    if args.json:
        print(json.dumps({**row, "curve": curve}, indent=2, default=str))
        return 0
    config = row.pop("config", None)
    fields = Table(title=f"run {row['key']} in {shown_url(url)}", show_header=False)
    fields.add_column("field", style="bold")
    fields.add_column("value")
    for name, value in row.items():
        if value is not None:
            fields.add_row(name, _fmt(value))
    console.print(fields)
    points = Table(title=f"validation curve ({len(curve)} points)")
    for heading in ("step", "tokens", "val loss"):
        points.add_column(heading, justify="right")
    for point in curve:
        points.add_row(str(point["step"]), _fmt(point["tokens"]), f"{point['val_loss']:.4f}")
    console.print(points)
    if config:
        print("config (all of it: kdlab runs show --json):")
        for group in ("model", "data", "optim", "objective", "teacher"):
            if config.get(group):
                print(f"  {group}: {json.dumps(config[group], default=str)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write the table under a temporary name beside ``--out`` and rename it: a path that
    cannot be written is one sentence, and a failed write leaves no partial file."""
    url = _url(args)
    if args.format == "jsonl":
        count = export_jsonl(url, args.out, weights=args.weights)
        print(f"kdlab: wrote {count} runs to {args.out}")
        return 0
    from kdlab.rundb.query import runs_frame  # pandas: only for the table export

    frame = runs_frame(url)
    out = Path(args.out)
    try:
        tmp = temp_path_for(out)
        try:
            if args.format == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write the export to {out}: {err.strerror or err}") from err
    print(f"kdlab: wrote {len(frame)} runs to {out}")
    return 0


def _compute(args: argparse.Namespace) -> int:
    from kdlab.rundb.query import study_compute

    url = _url(args)
    frame = study_compute(url, args.study)
    where = f"study {args.study}" if args.study else "all studies"
    table = Table(title=f"compute of {where} in {shown_url(url)} (finished runs)")
    for column in ("part", "FLOPs", "runs or caches"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, flops, count in frame.itertuples(index=False):
        table.add_row(part, f"{flops:.4g}", str(count))
    console.print(table)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    url = _url(args)
    store = RunStore(url, create=False, migrate=True)
    before, after = store.migrated
    if before == after:
        print(f"kdlab: {shown_url(url)} is already at schema revision {after}")
    else:
        print(f"kdlab: migrated {shown_url(url)} from schema revision {before} to {after}")
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.wandb is not None:
        return _import_wandb(args)
    if args.map or args.map_key or args.declare:
        raise ConfigError("--map, --map-key and --declare are for --wandb imports")
    if not Path(args.from_export).is_file():
        raise ConfigError(f"there is no export file {args.from_export}")
    url = _url(args)
    runs_dir = args.runs_dir
    if runs_dir is None:
        path = sqlite_path(url)
        if path is None:
            raise ConfigError("kdlab runs import into a server database needs --runs-dir")
        runs_dir = path.parent
    counts = import_jsonl(url, args.from_export, runs_dir)
    print(
        f"kdlab: imported {counts['added']} runs ({counts['weights']} with teacher weights) "
        f"into {shown_url(url)}; {counts['skipped']} were already there"
    )
    return 0


def _import_wandb(args: argparse.Namespace) -> int:
    """Read and check every run before the database is opened: bad input writes nothing."""
    from kdlab.rundb.wandb_import import import_rows, load_mapping, write_rows
    from kdlab.rundb.wandb_sources import read_source

    if args.runs_dir is not None:
        raise ConfigError("--runs-dir is for --from-export: a W&B import brings no weights")
    mapping = load_mapping(args.map, args.map_key, args.declare)
    runs = read_source(args.wandb, mapping.keys.get("loss_history"))
    rows = import_rows(runs, mapping)
    url = _url(args)
    counts = write_rows(RunStore(url), rows)
    failed = sorted(r["failure"] for r in rows.values() if r["status"] == "failed")
    print(
        f"kdlab: imported {len(rows)} W&B runs from {args.wandb} into {shown_url(url)} "
        f"({counts['added']} new, {counts['updated']} imported before; corpus "
        f"{mapping.declared['corpus']}); {len(failed)} recorded as failed"
        + (f": {'; '.join(failed[:5])}" if failed else "")
    )
    return 0
