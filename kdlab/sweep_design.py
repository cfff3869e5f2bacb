"""``kdlab sweep design``: can a grid identify its law? Asked of its sweep files.

The judging is kdlab.laws.design's; this module turns sweeps (or whole studies) into
its grids, runs it for each, and prints the verdicts and a ranking of the candidates.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from kdlab.console import console
from kdlab.errors import ConfigError
from kdlab.sweeps import JobPlan, plan_sweep, sweep_file


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``design`` under ``kdlab sweep``."""
    from kdlab.laws.cli import number

    p = sub.add_parser(
        "design",
        help="before paying: can a grid identify its law? (simulate, refit, judge)",
        description="Draw losses at the grid's runs from a law, refit them with kdlab fit's "
        "code over fresh noise, and say per coefficient whether the grid pins it down, "
        "the expected error of extrapolating to its strongest runs, and its compute. "
        "Several grids are ranked (within --budget).",
    )
    p.add_argument("grids", nargs="+", help="sweeps or studies, e.g. micro or micro/students")
    p.add_argument("--law", default="paper", help="the law to draw from: paper or a fit JSON")
    p.add_argument(
        "--law-scale",
        type=number,
        default=1.0,
        help="draw from the law at K times the grid's N and D (e.g. the published law "
        "moved to a CPU grid: K = the paper's sizes over the grid's)",
    )
    p.add_argument(
        "--noise",
        default="0.01",
        help="relative noise of one run's loss (0.01 = 1%%), or 'db': measured from runs "
        "that differ only in their seed",
    )
    p.add_argument("--db", help="database for --noise db (default: the grid's own)")
    p.add_argument("--replicates", type=int, default=8, help="fresh draws of the noise")
    p.add_argument("--bootstrap", type=int, default=0, help="the fit's bootstrap per draw")
    p.add_argument("--holdout", type=float, default=0.1, help="strongest fraction held out")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.25,
        help="identified: 90%% of refits within this (relative) of the law's value",
    )
    p.add_argument("--form", default="paper", help="supervised form: paper or chinchilla")
    p.add_argument("--search", choices=["quick", "full"], default="quick")
    p.add_argument("--budget", type=number, help="FLOPs: rank the grids within this budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override applied to every grid (repeatable)",
    )
    p.add_argument("--out", help="write the designs and the ranking as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON, not tables")
    p.set_defaults(func=run_design)


def grid_jobs(name: str, overrides: Sequence[str] = ()) -> tuple[list[JobPlan], str]:
    """Every job of a sweep, or of every stage of a study, and the database it uses."""
    from kdlab.study import study_overrides, study_stages

    stages = study_stages(name)
    paths = stages if stages is not None else [sweep_file(name)]
    overrides = study_overrides(name, overrides) if stages is not None else overrides
    jobs: list[JobPlan] = []
    url = ""
    for path in paths:
        plan = plan_sweep(path, overrides)
        jobs += plan.jobs
        url = plan.url
    return jobs, url


def grid_from_jobs(name: str, jobs: list[JobPlan]) -> Any:
    """The design grid (kdlab.laws.design.Grid) of a sweep's or a study's jobs.

    Students enter with the most common distillation objective only (ablations follow
    other laws), and only when their teacher is a run (an oracle has no N_T, D_T).
    """
    import pandas as pd

    from kdlab.laws.design import Grid
    from kdlab.rundb.query import kd_objective

    sup = [j for j in jobs if j.role in ("teacher", "supervised")]
    students = [j for j in jobs if j.role == "student" and j.teacher_params]
    labels = [kd_objective(j.signature.get("objective")) for j in students]
    notes = []
    if students:
        main = max(sorted(set(labels)), key=labels.count)
        others = sum(label != main for label in labels)
        if others:
            notes.append(
                f"{others} student(s) of other objectives (ablations) left out; the law is "
                f"judged on the {len(labels) - others} students of {main}."
            )
        students = [j for j, label in zip(students, labels, strict=True) if label == main]
    untaught = sum(j.role == "student" and not j.teacher_params for j in jobs)
    if untaught:
        notes.append(f"{untaught} student(s) without a teacher run (oracle, checkpoint) left out.")
    seconds = [j.seconds for j in jobs]
    passes = [j.passes for j in jobs if j.passes is not None]
    return Grid(
        name=name,
        supervised=pd.DataFrame(
            {
                "N": [j.n_params for j in sup],
                "D": [j.tokens for j in sup],
                "role": [j.role for j in sup],
            }
        ),
        students=pd.DataFrame(
            {
                "N_S": [j.n_params for j in students],
                "D_S": [j.tokens for j in students],
                "N_T": [j.teacher_params for j in students],
                "D_T": [j.teacher_tokens for j in students],
            }
        ),
        flops=float(sum(j.flops for j in jobs)),
        seconds=float(sum(seconds)) if jobs and None not in seconds else None,
        notes=notes,
        min_steps=min((j.steps for j in jobs), default=None),
        max_passes=max(passes, default=None),
    )


def run_design(args: argparse.Namespace) -> int:
    """Judge each grid; print (or write) the verdicts and their ranking."""
    from kdlab.laws.design import DesignSettings, design, measured_noise, rank, scaled_law
    from kdlab.laws.io import LawInputError, load_coefficients
    from kdlab.rundb import missing_sqlite_file
    from kdlab.rundb.query import runs_frame

    try:
        law = load_coefficients(args.law)
        truth = scaled_law(law, args.law_scale)
        given = None if args.noise == "db" else _noise(args.noise)
        docs = []
        for name in args.grids:
            jobs, url = grid_jobs(name, args.override)
            if given is None:
                db = args.db or url
                if missing_sqlite_file(db):
                    raise ConfigError(
                        f"--noise db: there is no run database at {missing_sqlite_file(db)}"
                    )
                measured = measured_noise(runs_frame(db))
                sigma = measured["noise"]
                source = (
                    f"measured: {measured['runs']} runs in {measured['groups']} groups "
                    "that differ only in their seed"
                )
            else:
                sigma, source = given, "given"
            settings = DesignSettings(
                noise=sigma,
                replicates=args.replicates,
                bootstrap=args.bootstrap,
                holdout=args.holdout,
                tolerance=args.tolerance,
                form=args.form,
                search=args.search,
                seed=args.seed,
            )
            doc = design(grid_from_jobs(name, jobs), truth, settings)
            doc.update(law=args.law, law_scale=args.law_scale, noise_source=source)
            docs.append(doc)
            if not args.json:
                print_design(doc)
    except LawInputError as err:
        raise ConfigError(str(err).rstrip(".")) from err
    ranking = rank(docs, args.budget)
    result = {"designs": docs, "ranking": ranking}
    if args.json:
        print(json.dumps(result, indent=2))
    elif len(docs) > 1:
        print_ranking(ranking, args.budget)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        if not args.json:
            console.print(f"wrote {args.out}")
    return 0


def _noise(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--noise must be a number (e.g. 0.01) or 'db', not {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"--noise is relative (0.01 = 1%) and must lie in (0, 1), not {value}")
    return value


def _num(value: float) -> str:
    return f"{value:,.0f}" if 1e3 <= abs(value) < 1e7 else f"{value:.4g}"


def print_design(doc: dict[str, Any]) -> None:
    """One grid's verdict: its cost, then per law a table of coefficients and the errors."""
    from kdlab.progress import fmt_seconds

    s = doc["settings"]
    console.rule(f"[bold]{doc['grid']}[/]")
    at_rate = (
        f", about {fmt_seconds(doc['seconds'])} at the measured rate" if doc["seconds"] else ""
    )
    console.print(
        f"{doc['runs']} runs ({doc['supervised_runs']} teachers or supervised, "
        f"{doc['students']} students), {doc['flops']:.3g} FLOPs{at_rate}"
    )
    if doc.get("min_steps") is not None:
        passes = doc.get("max_passes")
        console.print(
            f"fewest optimizer steps of a run: {doc['min_steps']}"
            + (f"; most passes over the data: {passes:.2g}" if passes is not None else "")
        )
    scale = doc.get("law_scale", 1.0)
    law = doc.get("law", "the law") + (f" at {scale:g} x N and D" if scale != 1 else "")
    console.print(
        f"losses drawn from {law} with {s['noise']:.2%} noise per run "
        f"({doc.get('noise_source', 'given')}), {s['replicates']} draws refitted "
        f"({s['search']} search). Identified: 90% of refits within {s['tolerance']:.0%} of "
        "the law's value, off the bounds."
    )
    for note in doc["notes"]:
        console.print(f"note: {note}")
    for law, res in doc["laws"].items():
        console.print(_law_table(law, res))
        ex = res.get("extrapolation")
        if ex:
            console.print(
                f"extrapolation: fitted without its {ex['heldout']} strongest runs, off on them "
                f"by {ex['error_median']:.2%} (median; 90th percentile {ex['error_p90']:.2%}), "
                f"{ex['error_vs_law_median']:.2%} from the law itself"
            )
        if res["search_failures"]:
            console.print(
                f"[yellow]{res['search_failures']} of {res['replicates']} fits ended above the "
                "objective at the law's own coefficients: a search failure (try --search full)"
            )
    console.print(f"[bold]verdict:[/] {doc['verdict']}")


def _law_table(law: str, res: dict[str, Any]) -> Table:
    boot = any("bootstrap" in c for c in res["coefficients"].values())
    table = Table(title=f"{law} law")
    for col in ("coefficient", "law", "median refit", "90% of refits"):
        table.add_column(col, justify="right")
    if boot:
        table.add_column("bootstrap interval holds the law", justify="right")
    table.add_column("verdict")
    rows = [(n, c, False) for n, c in res["coefficients"].items()]
    rows += [(n, c, True) for n, c in res["derived"].items()]
    for name, c, derived in rows:
        if derived:
            verdict = "(derived, not judged)"
        else:
            verdict = "[green]identified" if c["identified"] else f"[red]no: {c['reason']}"
        cells = [name, _num(c["truth"]), _num(c["median"]), f"{_num(c['p05'])} – {_num(c['p95'])}"]
        if boot:
            b = c.get("bootstrap")
            cells.append(f"{b['coverage']:.0%} of draws" if b else "")
        table.add_row(*cells, verdict)
    return table


def print_ranking(ranking: list[dict[str, Any]], budget: float | None) -> None:
    title = "grids ranked" + (f" within {budget:.3g} FLOPs" if budget else "")
    table = Table(title=title)
    for col in ("#", "grid", "runs", "FLOPs", "within budget", "not identified", "extrapolation"):
        table.add_column(col, justify="left" if col == "grid" else "right")
    for i, row in enumerate(ranking, 1):
        table.add_row(
            str(i),
            row["grid"],
            str(row["runs"]),
            f"{row['flops']:.3g}",
            "yes" if row["within_budget"] else "[red]no",
            str(row["not_identified"]),
            f"{row['extrapolation_error']:.2%}",
        )
    console.print(table)
