"""``kdlab report``: the study's figures, tables and plans as an HTML page with PNGs.

``add_commands`` registers it on the ``kdlab`` command (kdlab/cli.py); ``main`` runs it
alone (``python -m kdlab.report.cli report ...``, or without the word ``report``).
Bad input ends in one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from kdlab.laws.cli import number, whole

EXIT_WANDB_FAILED = 1


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        description="Draw the study (supervised and distillation runs, the fitted laws, "
        "fit quality, compute-optimal plans) as PNG figures and an HTML page. Works with "
        "whatever exists: runs without fits, fits without runs, or both.",
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--db",
        help="run database URL (default: KDLAB_DB_URL, else runs/kdlab.db under the root; "
        "'' for none: fits and plans only)",
    )
    src.add_argument(
        "--supervised-fit",
        metavar="FIT.json",
        help="supervised fit JSON (kdlab fit supervised --out)",
    )
    src.add_argument(
        "--distillation-fit",
        metavar="FIT.json",
        help="distillation fit JSON (kdlab fit distillation --out)",
    )
    src.add_argument("--study", help="only runs of this study")
    src.add_argument("--corpus", help="only runs of this corpus (its name or fingerprint)")
    src.add_argument("--tokenizer", help="only runs of this tokenizer")
    src.add_argument("--n-ctx", type=whole(1), help="only runs of this context length")
    src.add_argument("--recipe", metavar="LABEL", help="only runs of this training recipe")
    plan = p.add_argument_group("compute-optimal plans")
    plan.add_argument(
        "--plan-coefficients",
        default="auto",
        help="'auto' (the distillation "
        "fit if given, else the paper's), 'paper' or a distillation fit JSON",
    )
    plan.add_argument(
        "--plan-student",
        type=number,
        help="student size N_S of the plan "
        "figure (default: the study's median student, 1.82B for the paper)",
    )
    plan.add_argument(
        "--plan-budgets", type=whole(0), default=10, help="budgets per scenario (0: no planning)"
    )
    plan.add_argument(
        "--map-points",
        type=whole(0),
        default=8,
        help="student sizes on the map of where distillation wins (0: no map)",
    )
    plan.add_argument(
        "--jobs",
        type=whole(1),
        default=max(1, min(8, os.cpu_count() or 1)),
        help="processes for planning",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out", help="folder for index.html and PNGs (default: runs/report under the run root)"
    )
    out.add_argument(
        "--wandb",
        action="store_true",
        help="also log the figures to W&B (WANDB_MODE=offline is honoured)",
    )
    out.add_argument("--wandb-project", default="kdlab")
    out.add_argument("--wandb-entity")
    out.add_argument("--wandb-group", help="default: the study's name")
    out.add_argument("--wandb-name", help="default: report-<study>")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Build the report; unreadable files become one sentence and exit code 2 (bad values
    raise ConfigError, which the kdlab command reports the same way)."""
    from kdlab.errors import error_exit

    try:
        return _run_report(args)
    except OSError as exc:
        return error_exit("kdlab", exc)


def _run_report(args: argparse.Namespace) -> int:
    from kdlab.report.build import PlanOptions, build_report, log_to_wandb

    opts = PlanOptions(
        coefficients=args.plan_coefficients,
        student=args.plan_student,
        budgets=args.plan_budgets,
        map_points=args.map_points,
        jobs=args.jobs,
    )
    url = None
    if args.db != "":
        from kdlab.rundb import announce, database_url

        url, source = database_url(args.db)
        announce(url, source)
    if args.out is None:  # beside the run database, wherever the command is typed
        from kdlab.rundb.url import runs_root

        args.out = str(runs_root() / "runs" / "report")
    report = build_report(
        args.out,
        url,
        args.supervised_fit,
        args.distillation_fit,
        opts,
        study=args.study,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        n_ctx=args.n_ctx,
        recipe=args.recipe,
    )
    for fig in report.figures:
        if fig.path is not None:
            print(f"figure  {fig.path}")
        else:
            print(f"skipped {fig.name}: {fig.skipped}")
    for note in report.notes:
        print(f"note    {note}")
    print(f"wrote {report.html}")
    if args.wandb:
        try:
            where = log_to_wandb(
                report, args.wandb_project, args.wandb_entity, args.wandb_group, args.wandb_name
            )
        except Exception as exc:  # W&B fails in many ways (network, auth); the page stands
            print(
                f"kdlab: error: the report is written, but logging it to W&B failed: {exc}",
                file=sys.stderr,
            )
            return EXIT_WANDB_FAILED
        print(f"logged {len(report.made)} figures to W&B: {where}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` on the ``kdlab`` command."""
    _add_report(subparsers)
