"""Making a report: read the study, plan, draw every figure that has its inputs, write
the page and its tables, and optionally send the figures to W&B."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlab.laws.flags import fit_warnings
from kdlab.laws.io import LawInputError
from kdlab.report import figures as figs
from kdlab.report import tables
from kdlab.report.data import ReportData, load_report_data
from kdlab.report.planning import (
    SCENARIO_ORDER,
    PlanSet,
    build_plans,
    default_sizes,
    on_search_bound,
    resolve_plan_coefficients,
)
from kdlab.rundb import shown_url
from kdlab.wandb_artifacts import add_record, artifact_name, log_artifact, table


@dataclass
class FigureResult:
    """A figure of the page: its PNG, or why it was skipped."""

    name: str
    section: str
    title: str
    path: Path | None = None
    skipped: str | None = None


@dataclass
class Report:
    """Everything the page shows; the CLI, the page writer and W&B read from it."""

    out_dir: Path
    data: ReportData
    plans: PlanSet | None
    figures: list[FigureResult]
    parity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # degenerate results, shown first
    html: Path | None = None

    @property
    def made(self) -> list[FigureResult]:
        return [f for f in self.figures if f.path is not None]


@dataclass
class PlanOptions:
    """How much planning the report does (each constrained plan is about 0.2 s)."""

    coefficients: str = "auto"  # auto: the distillation fit if given, else the paper's
    student: float | None = None  # N_S of the plan figure (default: the study's middle size)
    budgets: int = 10  # budgets per scenario in the plan figure
    map_points: int = 8  # student sizes and budgets per size of the advantage map
    scenarios: Sequence[str] = SCENARIO_ORDER
    jobs: int = max(1, min(8, os.cpu_count() or 1))


def make_plans(data: ReportData, opts: PlanOptions, notes: list[str]) -> PlanSet | None:
    """Plans from the fit (its own F(N)) or the paper's coefficients (the paper's F(N))."""
    if opts.budgets <= 0:
        return None
    dist_path = data.distillation_fit.path if data.distillation_fit else None
    spec, coefs = resolve_plan_coefficients(opts.coefficients, dist_path)
    if spec == "paper" and opts.coefficients == "auto":
        notes.append(
            "No distillation fit was given, so the plans use the published coefficients "
            "and the paper's F(N)."
        )
    sizes = data.students["N_S"] if not data.students.empty else data.supervised["N"]
    if not len(sizes) and spec != "paper":  # a fit without runs: the sizes it was made at
        sizes = (coefs["doc"].get("data_range") or {}).get("N_S", [])
        if not len(sizes) and not opts.student:
            notes.append(
                f"{spec} does not record the model sizes it was fitted to (a fit made "
                "before data_range was kept), so the plans are for the paper's 1.82B "
                "student; --plan-student sets the size."
            )
    student, size_range = default_sizes(np.asarray(sizes, dtype=float), spec)
    if opts.student:
        student = float(opts.student)
        size_range = [min(size_range[0], student / 2), max(size_range[1], student * 2)]
    plans = build_plans(
        spec, coefs, student, size_range, opts.budgets, opts.map_points, opts.scenarios, opts.jobs
    )
    errors = pd.concat([plans.table["error"], plans.map["error"]]).dropna()
    if len(errors):
        notes.append(f"{len(errors)} plan(s) had no feasible solution, e.g.: {errors.iloc[0]}")
    return plans


def build_report(
    out_dir: str | Path,
    db: str | None = None,
    supervised_fit: str | None = None,
    distillation_fit: str | None = None,
    plan: PlanOptions | None = None,
    study: str | None = None,
    corpus: str | None = None,
    tokenizer: str | None = None,
    n_ctx: int | None = None,
    recipe: str | None = None,
) -> Report:
    """Read, plan, draw and write the report into ``out_dir``; returns what was made."""
    out = Path(out_dir)
    data = load_report_data(
        db, supervised_fit, distillation_fit, study, corpus, tokenizer, n_ctx, recipe
    )
    # bad input writes nothing: the folders this call made go again if the report fails
    # (figures still read the database's curves)
    made = next(
        (p for p in [*reversed(out.absolute().parents), out.absolute()] if not p.exists()), None
    )
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _draw_report(out, data, plan)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


def _draw_report(out: Path, data: ReportData, plan: PlanOptions | None) -> Report:
    from kdlab.report.page import write_page

    notes = data.notes  # one list: reading the fits' points may still add to it
    parity = figs.parity_frames(data)
    plans = make_plans(data, plan or PlanOptions(), notes)
    results: list[FigureResult] = []
    for spec in figs.FIGURES:
        result = FigureResult(spec.name, spec.section, spec.title)
        try:
            if spec.needs == "plans":
                if plans is None:
                    raise figs.SkipFigure("Planning was turned off (--plan-budgets 0).")
                result.path = spec.draw(plans, out)
            elif spec.name == "parity":
                result.path = spec.draw(data, out, parity)
            else:
                result.path = spec.draw(data, out)
        except figs.SkipFigure as skip:
            result.skipped = str(skip)
        except LawInputError as exc:
            result.skipped = f"Not drawn: {exc}"
        results.append(result)
    report = Report(out, data, plans, results, parity, notes, degenerate_results(data, plans))
    _write_tables(report)
    report.html = write_page(report, out / "index.html")
    return report


def degenerate_results(data: ReportData, plans: PlanSet | None) -> list[str]:
    """What the page must say before anything else: degenerate fits (kdlab.laws.flags),
    IsoFLOP minima that no run brackets, plans that stopped on a search bound."""
    dist = data.distillation_fit.doc if data.distillation_fit else None
    out = fit_warnings(data.supervised_doc) + fit_warnings(dist)
    out += figs.isoflop_warnings(data.supervised)
    if plans is not None:
        for what, frame in (("plan table", plans.table), ("map", plans.map)):
            bound = int(on_search_bound(frame).sum())
            if bound:
                out.append(
                    f"{bound} of the {len(frame)} plans of the {what} stop on the planner's "
                    "search bound (a teacher or token count at its limit): those answers "
                    "are the bound, not optima, and are marked."
                )
    return out


def _write_tables(report: Report) -> None:
    """CSV copies of the tables and a JSON index of what the report holds."""
    out = report.out_dir
    data = report.data
    coef = [
        tables.coefficient_table(data.supervised_doc, "supervised").assign(law="supervised"),
        tables.coefficient_table(
            data.distillation_fit.doc if data.distillation_fit else None, "distillation"
        ).assign(law="distillation"),
    ]
    pd.concat(coef).to_csv(out / "coefficients.csv", index=False)
    objectives = tables.objective_table(data)
    if not objectives.empty:
        objectives.to_csv(out / "objectives.csv", index=False)
    if not data.students.empty:
        tables.capacity_gap_table(data.students).to_csv(out / "capacity_gap.csv", index=False)
    if report.plans is not None:
        report.plans.table.to_csv(out / "plan.csv", index=False)
        report.plans.map.to_csv(out / "distillation_map.csv", index=False)
    index = {
        "figures": {f.name: f.path.name for f in report.made},
        "skipped": {f.name: f.skipped for f in report.figures if f.skipped},
        "notes": report.notes,
        "warnings": report.warnings,
        "plan_coefficients": report.plans.source if report.plans else None,
        "plan_student": report.plans.student if report.plans else None,
        "supervised_fit": data.supervised_fit.path if data.supervised_fit else None,
        "distillation_fit": data.distillation_fit.path if data.distillation_fit else None,
        "db": shown_url(data.db),
    }
    (out / "report.json").write_text(json.dumps(index, indent=2) + "\n")


def log_to_wandb(
    report: Report,
    project: str = "kdlab",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
) -> str:
    """Log every figure (and the tables) to one W&B run of job type ``report``.

    WANDB_MODE=offline is honoured by wandb itself; the run directory goes under the
    report's folder so an offline run is kept beside the page it belongs to.
    """
    import wandb

    data = report.data
    run = wandb.init(
        project=project,
        entity=entity,
        group=group or data.study,
        name=name or f"report-{data.study or 'study'}",
        job_type="report",
        dir=str(report.out_dir),
        config={
            "db": shown_url(data.db),
            "supervised_fit": data.supervised_fit.path if data.supervised_fit else None,
            "distillation_fit": data.distillation_fit.path if data.distillation_fit else None,
            "plan_coefficients": report.plans.source if report.plans else None,
        },
    )
    try:
        payload: dict[str, Any] = {
            f"report/{f.name}": wandb.Image(str(f.path), caption=f.title) for f in report.made
        }
        for law in ("supervised", "distillation"):
            doc = (
                data.supervised_doc
                if law == "supervised"
                else data.distillation_fit.doc
                if data.distillation_fit
                else None
            )
            payload[f"report/coefficients_{law}"] = wandb.Table(
                dataframe=tables.coefficient_table(doc, law)
            )
        if report.plans is not None:
            payload["report/plan"] = wandb.Table(dataframe=tables.plan_table(report.plans, 100))
        # every run of the database as W&B's table shows runs (its config JSON aside)
        payload["report/runs"] = table(data.all_runs.drop(columns=["config"], errors="ignore"))
        run.log(payload)
        records = _log_report_artifacts(run, report)
        where = run.url or run.dir
    finally:
        run.finish()
    add_record(report.out_dir / "report.json", "wandb_artifacts", records)
    return str(where)


def _log_report_artifacts(run: Any, report: Report) -> list[dict[str, Any]]:
    """The page with its figures and tables, and each fit JSON it shows, as artifacts."""
    data, study = report.data, report.data.study or "study"
    page = [p for p in sorted(report.out_dir.iterdir()) if p.is_file()]
    records = [log_artifact(run, artifact_name("report", study), "report", page)]
    for fit in (data.supervised_fit, data.distillation_fit):
        if fit is not None:
            name = artifact_name("fit", fit.law, Path(fit.path).stem)
            records.append(log_artifact(run, name, "fit", [Path(fit.path)], {"law": fit.law}))
    return records
