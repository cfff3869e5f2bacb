"""The report as one static HTML page beside its PNGs (relative links, no scripts).

A static page opens from a laptop, a cluster's file browser or a CI artifact alike, and
every number on it comes from the tables module, so page, CSVs and W&B agree.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdlab.report import tables
from kdlab.report.figures import fmt_count, fmt_flops, parity_errors
from kdlab.report.planning import SCENARIO_TITLES

if TYPE_CHECKING:
    from kdlab.report.build import Report

CAPTIONS: dict[str, str] = {
    "supervised_loss": (
        "Validation loss of every finished teacher and supervised baseline. Left: against "
        "non-embedding parameters N, coloured by tokens per parameter M = D/N, with the "
        "fitted law L(N, D) = E + (A/N^α + B/D^β)^γ at those M. Right: against training "
        "tokens D, coloured by N, with the law at each size."
    ),
    "isoflop": (
        "Runs of equal training compute C = 3 F(N) D, one profile per budget. Diamonds: "
        "minimum of a parabola in log N through the profile; stars: the fitted law's "
        "minimum along the same budget. Right: the loss-optimal size N* against compute."
    ),
    "capacity_gap": (
        "Each student configuration (size N_S and tokens D_S) distilled from teachers of "
        "different loss L_T. Curves: the fitted distillation law; triangles: the teacher "
        "loss it predicts is best (a stronger teacher than that hurts: the capacity gap); "
        "dotted lines: the student alone, Ltilde_S = L(N_S, D_S). The dashed diagonal "
        "L_S = L_T is the limit of a student that matches its teacher."
    ),
    "student_tokens": (
        "Distilled students (filled, coloured by teacher loss) against the same size "
        "trained alone (open squares, dashed: supervised law) as the student's tokens grow. "
        "Distillation helps where the coloured curves lie below the dashed one."
    ),
    "parity": (
        "Loss predicted by each fit against the observed loss. Held-out runs (the fit's "
        "--fit-where extrapolation test) and runs recorded after the fit are marked; the "
        "box quotes the mean and largest relative error of each group."
    ),
    "plan_shares": (
        "For one student size, the compute-optimal teacher size, teacher tokens and student "
        "tokens at each budget (kdlab plan), as shares of the budget, in each scenario of "
        "the paper's compute accounting. The strip on top says whether the plan beats "
        "training the student alone on the whole budget; the dashed line is the optimal "
        "teacher size."
    ),
    "distillation_map": (
        "Student loss of compute-optimal distillation relative to the same student trained "
        "alone on the whole budget, over student size and budget. Blue: distillation wins; "
        "the black line is break-even; the dashed line marks the student alone at 20 tokens "
        "per parameter."
    ),
}

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1320px; padding: 24px 32px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px;
       margin-top: 40px; }
.meta { color: #666; font-size: 14px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
figure { margin: 18px 0 30px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 14px; color: #444; max-width: 1100px; margin-top: 6px; }
.skipped { background: #f6f6f6; border: 1px dashed #bbb; padding: 12px 16px; color: #555;
           margin: 18px 0; }
.notes { background: #fff8e1; border: 1px solid #f0d890; padding: 8px 16px; }
.warnings { background: #fde8ea; border: 2px solid #b00020; padding: 8px 16px; color: #5a0010; }
td.degenerate { color: #b00020; font-weight: bold; }
.facts td { text-align: left; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)):
        return _fmt_value(value, digits)
    return _e(value)


def _fmt_value(value: float, digits: int = 4) -> str:
    """3355 and 24181 as the paper prints them, not 3355 and 2.418e+04."""
    if 1e3 <= abs(value) < 1e9:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table(frame: pd.DataFrame, left: Iterable[str] = (), index: bool = False) -> str:
    left = set(left)
    cols = list(frame.columns)
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in cols)
    if index:
        head = f'<th class="l">{_e(frame.index.name or "")}</th>' + head
    rows = []
    for idx, row in frame.iterrows():
        cells = "".join(
            f'<td class="{"l" if c in left else ""}">{_cell(row[c])}</td>' for c in cols
        )
        if index:
            cells = f'<td class="l">{_e(idx)}</td>' + cells
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


class _Raw(str):
    """Cell text that is already HTML."""


def _cell(value: Any) -> str:
    return value if isinstance(value, _Raw) else _num(value)


def _interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"{_fmt_value(lo)} – {_fmt_value(hi)}"


def coefficient_html(doc: Mapping[str, Any] | None, law: str) -> str:
    """The study's coefficients with intervals next to the published ones."""
    tab = tables.coefficient_table(doc, law)
    level = tab["level"].dropna()
    level_txt = f"{100 * level.iloc[0]:g}% interval" if len(level) else "interval"
    shown = pd.DataFrame(
        {
            "coefficient": [_Raw(_e(s)) for s in tab["symbol"]],
            "this study": tab["value"],
            level_txt: [_Raw(_interval(lo, hi)) for lo, hi in zip(tab.lo, tab.hi, strict=True)],
            "paper": tab["paper"],
            "paper 90% CI": [
                _Raw(_interval(lo, hi)) for lo, hi in zip(tab.paper_lo, tab.paper_hi, strict=True)
            ],
            "note": [_Raw(_degenerate(n)) for n in tab["note"]],
        }
    )
    facts = tables.fit_facts(doc)
    parts = []
    if facts:
        bits = []
        if "points" in facts:
            bits.append(f"{facts['points']} runs fitted")
        if "form" in facts:
            bits.append(f"form {facts['form']}")
        if "objective" in facts:
            bits.append(
                f"Huber objective {facts['objective']:.4g} "
                f"(δ = {facts.get('huber_delta', float('nan')):g})"
            )
        if "fit_error" in facts:
            bits.append(f"mean |relative error| {facts['fit_error']:.2%}")
        if facts.get("held_out"):
            he = facts.get("heldout_error")
            bits.append(
                f"{facts['held_out']} held out"
                + (f" ({facts['fit_where']!s} fitted)" if facts.get("fit_where") else "")
                + (f", held-out error {he:.2%}" if he is not None else "")
            )
        if "bootstrap_resamples" in facts:
            bits.append(f"{facts['bootstrap_resamples']} bootstrap resamples")
        if "source" in facts:
            bits.append(f"source {facts['source']}")
        parts.append(f'<p class="meta">{_e("; ".join(bits))}</p>')
    else:
        parts.append(f'<p class="meta">No {law} fit was given: the published values only.</p>')
    return _table(shown, left=("coefficient", "note")) + "".join(parts)


def _degenerate(note: str) -> str:
    """A coefficient's note; a degenerate one in bold red, so it is read before its value."""
    if note.startswith("DEGENERATE"):
        return f'<span class="degenerate" style="color:#b00020;font-weight:bold">{_e(note)}</span>'
    return _e(note)


def plan_html(report: Report) -> str:
    plans = report.plans
    if plans is None:
        return "<p>Planning was turned off.</p>"
    tab = tables.plan_table(plans)
    if tab.empty:
        return "<p>The planner found no feasible plan.</p>"
    shown = pd.DataFrame(
        {
            "scenario": [_Raw(_e(SCENARIO_TITLES.get(s, s))) for s in tab["scenario"]],
            "C (FLOPs)": [_Raw(fmt_flops(c)) for c in tab["compute"]],
            "D_S": [_Raw(fmt_count(v)) for v in tab["student_tokens"]],
            "N_T": [_Raw(fmt_count(v)) for v in tab["teacher_params"]],
            "D_T": [_Raw(fmt_count(v)) for v in tab["teacher_tokens"]],
            "L_T": tab["teacher_loss"],
            "L_S": tab["student_loss"],
            "L alone": tab["supervised_loss"],
            "student %": 100 * tab["share_student"],
            "logits %": 100 * tab["share_teacher_logits"],
            "teacher pretr. %": 100 * tab["share_teacher_pretraining"],
            "verdict": [
                _Raw(_degenerate(f"DEGENERATE: on the search bound; {v}") if b else _e(v))
                for v, b in zip(tab["verdict"], tab["on_bound"], strict=True)
            ],
        }
    ).round({"student %": 1, "logits %": 1, "teacher pretr. %": 1})
    head = (
        f'<p class="meta">Student N_S = {fmt_count(plans.student)}; coefficients: '
        f"{_e(plans.label)}; F(N) with n_ctx = {plans.flops.get('n_ctx', 0):g}, "
        f"n_vocab = {plans.flops.get('n_vocab', 0):g}. L alone: the student trained alone "
        'on the whole budget. Full table: <a href="plan.csv">plan.csv</a>.</p>'
    )
    return head + _table(shown, left=("scenario", "verdict"))


def _figure_html(report: Report, fig: Any) -> str:
    if fig.path is None:
        return (
            f'<div class="skipped" id="{_e(fig.name)}"><b>{_e(fig.title)}</b>: '
            f"not drawn. {_e(fig.skipped)}</div>"
        )
    caption = CAPTIONS.get(fig.name, "")
    if fig.name == "parity":
        for law, frame in report.parity.items():
            errs = parity_errors(frame)
            bits = [
                f"{s} {e['mean_abs_rel_error']:.2%} ({e['n_points']} runs)"
                for s, e in errs.items()
                if e.get("n_points")
            ]
            caption += f" {law.capitalize()}: mean |relative error| " + ", ".join(bits) + "."
    if fig.name in ("plan_shares", "distillation_map") and report.plans is not None:
        caption += f" Coefficients: {report.plans.label}."
    return (
        f'<figure id="{_e(fig.name)}"><img src="{_e(fig.path.name)}" alt="{_e(fig.title)}">'
        f"<figcaption><b>{_e(fig.title)}.</b> {_e(caption)}</figcaption></figure>"
    )


def render_page(report: Report) -> str:
    """The whole page as a string."""
    data = report.data
    title = f"kdlab report{': ' + data.study if data.study else ''}"
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Generated {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} by '
        "<code>kdlab report</code>; reproduces Busbridge et al. 2025, <i>Distillation "
        "Scaling Laws</i>.</p>",
    ]
    if report.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
        out.append(
            '<div class="warnings" id="warnings"><b>Degenerate results: read these before '
            f"any number below</b><ul>{items}</ul></div>"
        )
    if report.notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
        out.append(f'<div class="notes"><b>Notes</b><ul>{items}</ul></div>')
    out.append("<h2>Study</h2>")
    counts = tables.runs_by_role(data)
    if not counts.empty:
        counts.index.name = "role"
        out.append(_table(counts, index=True))
    facts = tables.study_facts(data)
    fits = [("supervised fit", data.supervised_fit), ("distillation fit", data.distillation_fit)]
    facts += [(label, f.path) for label, f in fits if f is not None]
    if facts:
        rows = "".join(f'<tr><th class="l">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in facts)
        out.append(f'<table class="facts">{rows}</table>')
    section = None
    for fig in report.figures:
        if fig.section != section:
            section = fig.section
            out.append(f"<h2>{_e(section)}</h2>")
        out.append(_figure_html(report, fig))
    objectives = tables.objective_table(data)
    if not objectives.empty:
        out.append('<h2 id="objectives">Distillation objectives compared</h2>')
        out.append(
            '<p class="meta">Validation loss of the same student under each objective it was '
            "distilled with (the ablations); <i>supervised</i> is the same size and tokens "
            'without a teacher. Table: <a href="objectives.csv">objectives.csv</a>.</p>'
        )
        out.append(_table(objectives, left=("model", "teacher")))
    out.append('<h2 id="plan-table">Compute-optimal plans</h2>')
    out.append(plan_html(report))
    fit = report.plans.source if report.plans and report.plans.source != "paper" else None
    out.append(
        '<p class="meta">Other budgets (FLOPs, GPU-hours or money), teachers and numbers of '
        "students, with the verdict's robustness, interactively: <code>kdlab dashboard"
        f"{' --fit ' + _e(fit) if fit else ''}</code>.</p>"
    )
    out.append('<h2 id="coefficients">Coefficients</h2>')
    out.append("<h3>Supervised law L(N, D) = E + (A/N^α + B/D^β)^γ</h3>")
    out.append(coefficient_html(data.supervised_doc, "supervised"))
    out.append("<h3>Distillation law L_S(N_S, D_S, L_T)</h3>")
    out.append(
        coefficient_html(
            data.distillation_fit.doc if data.distillation_fit else None, "distillation"
        )
    )
    out.append(
        '<p class="meta">Paper values: Busbridge et al. 2025 (its published fits), '
        '90% bootstrap intervals. All tables: <a href="coefficients.csv">'
        "coefficients.csv</a>.</p>"
    )
    out.append("</body></html>")
    return "\n".join(out)


def write_page(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_page(report), encoding="utf-8")
    return path
