"""The report's tables as DataFrames: study summary, coefficients beside the paper's, plans.

Kept apart from the HTML so the same tables go to CSV files and to W&B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kdlab.laws.flags import coefficient_flags
from kdlab.laws.io import DISTILLATION_KEYS, matching_rows
from kdlab.laws.published import (
    PAPER_DISTILLATION,
    PAPER_DISTILLATION_CI90,
    PAPER_SUPERVISED,
    PAPER_SUPERVISED_CI90,
)
from kdlab.report.data import ReportData
from kdlab.report.planning import PlanSet, on_search_bound
from kdlab.rundb import shown_url

SUPERVISED_NAMES = ("E", "A", "B", "alpha", "beta", "gamma")
GREEK = {"alpha": "α", "beta": "β", "gamma": "γ"}


def display_name(name: str, law: str) -> str:
    """alpha -> α; the distillation law's A, B, α, β, γ are primed as in the paper."""
    text = GREEK.get(name, name)
    if law == "distillation" and name in ("A", "B", "alpha", "beta", "gamma"):
        text += "′"
    return text


def coefficient_table(doc: Mapping[str, Any] | None, law: str) -> pd.DataFrame:
    """One row per coefficient: this study's value and interval, and the paper's.

    Columns: coefficient, symbol, value, lo, hi, level, paper, paper_lo, paper_hi, note.
    Without a fit the study's columns are empty, so the paper's values still show. The
    note says when a coefficient is degenerate (kdlab.laws.flags).
    """
    if law == "supervised":
        names, paper, paper_ci = SUPERVISED_NAMES, PAPER_SUPERVISED, PAPER_SUPERVISED_CI90
    else:
        names, paper, paper_ci = DISTILLATION_KEYS, PAPER_DISTILLATION, PAPER_DISTILLATION_CI90
    coef = dict((doc or {}).get("coefficients") or {})
    intervals = dict((doc or {}).get("intervals") or {})
    level = (doc or {}).get("interval_level")
    flags = coefficient_flags({"law": law, **doc}) if doc else {}
    rows = []
    for name in names:
        lo_hi = intervals.get(name)
        note = ""
        if doc and name == "gamma" and law == "supervised" and doc.get("form") == "chinchilla":
            note = "fixed to 1 (Chinchilla form)"
        flag = flags.get(name) or flags.get(f"{name}'")
        if flag:
            note = f"DEGENERATE: {flag}"
        rows.append(
            {
                "coefficient": name,
                "symbol": display_name(name, law),
                "value": float(coef[name]) if name in coef else np.nan,
                "lo": float(lo_hi[0]) if lo_hi else np.nan,
                "hi": float(lo_hi[1]) if lo_hi else np.nan,
                "level": float(level) if level and lo_hi else np.nan,
                "paper": paper[name],
                "paper_lo": paper_ci[name][0],
                "paper_hi": paper_ci[name][1],
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def objective_table(data: ReportData) -> pd.DataFrame:
    """Validation loss of the same student (size, tokens, teacher) under each distillation
    objective it was trained with: the paper's distillation ablations, one column per objective.

    Empty unless some student was trained with more than one objective. A supervised
    run of the same size and tokens, where there is one, is the "alone" column.
    """
    runs = data.all_runs
    need = {"role", "status", "kd_objective", "teacher_model", "teacher_loss"}
    if runs.empty or not need <= set(runs.columns):
        return pd.DataFrame()
    done = matching_rows(runs[runs["status"] == "done"], data.selection)
    students = done[(done["role"] == "student") & done["kd_objective"].notna()]
    if students["kd_objective"].nunique() < 2:
        return pd.DataFrame()
    keys = ["model", "n_params", "tokens", "teacher_model", "teacher_loss"]
    table = students.pivot_table(
        index=keys, columns="kd_objective", values="val_loss", aggfunc="min"
    )
    table = table[table.notna().sum(axis=1) >= 2]
    if table.empty:
        return pd.DataFrame()
    alone = done[done["role"] == "supervised"].groupby(["n_params", "tokens"])["val_loss"].min()
    table = table.reset_index()
    sizes = zip(table["n_params"], table["tokens"], strict=True)
    table.insert(len(keys), "supervised", [alone.get(nd, np.nan) for nd in sizes])
    table.columns.name = None
    names = {"n_params": "N_S", "tokens": "D_S", "teacher_model": "teacher", "teacher_loss": "L_T"}
    return table.rename(columns=names)


def capacity_gap_table(students: pd.DataFrame) -> pd.DataFrame:
    """Per student configuration (N_S, D_S) and teacher: the student's loss over its seeds.

    Columns N_S, D_S, teacher_key, L_T, loss (mean), loss_sd (sample s.d., NaN for one
    seed), seeds. Students of one teacher share its L_T (the teacher's seed is fixed), so
    the spread is the student's own seed noise: what a capacity-gap effect must exceed.
    """
    if students.empty:
        return pd.DataFrame(
            columns=["N_S", "D_S", "teacher_key", "L_T", "loss", "loss_sd", "seeds"]
        )
    teacher = students["teacher_key"] if "teacher_key" in students else students["L_T"]
    frame = students.assign(teacher_key=teacher.astype(str))
    table = frame.groupby(["N_S", "D_S", "teacher_key"], as_index=False).agg(
        L_T=("L_T", "mean"), loss=("loss", "mean"), loss_sd=("loss", "std"), seeds=("loss", "size")
    )
    return table.sort_values(["N_S", "D_S", "L_T"]).reset_index(drop=True)


def fit_facts(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """The one-line facts of a fit: points, objective, errors, bootstrap size."""
    if not doc:
        return {}
    out: dict[str, Any] = {
        "form": doc.get("form"),
        "points": doc.get("n_points"),
        "objective": doc.get("objective"),
        "huber_delta": doc.get("huber_delta"),
        "held_out": doc.get("n_heldout"),
        "fit_where": doc.get("fit_where"),
    }
    for key in ("fit_error", "heldout_error"):
        err = doc.get(key) or {}
        if err.get("n_points"):
            out[key] = err.get("mean_abs_rel_error")
    boot = doc.get("bootstrap")
    if isinstance(boot, Mapping):
        out["bootstrap_resamples"] = boot.get("resamples")
    if doc.get("source"):
        out["source"] = doc.get("source")
    return {k: v for k, v in out.items() if v is not None}


def runs_by_role(data: ReportData) -> pd.DataFrame:
    """Counts of runs by role (rows) and status (columns), all data included."""
    runs = data.all_runs
    if runs.empty or "role" not in runs.columns:
        return pd.DataFrame()
    table = pd.crosstab(runs["role"], runs["status"], margins=True, margins_name="total")
    return table


def study_facts(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) lines of the study summary: data, tokenizer, sizes, tokens."""
    runs = data.all_runs
    facts: list[tuple[str, str]] = []
    if data.db:
        facts.append(("run database", shown_url(data.db)))
    for col, label in (
        ("study", "study"),
        ("corpus", "corpus"),
        ("corpus_fingerprint", "corpus fingerprint"),
        ("tokenizer", "tokenizer"),
        ("vocab_size", "vocabulary"),
        ("n_ctx", "context length"),
        ("recipe", "training recipe"),
        ("family", "experiment families"),
    ):
        if col in runs.columns:
            counts = runs[col].dropna().astype(str).value_counts()
            if len(counts):
                facts.append((label, ", ".join(f"{v} ({n})" for v, n in counts.items())))
    if data.selection:
        sel = ", ".join(f"{k} = {v}" for k, v in data.selection.items())
        facts.append(("figures show", sel))
    from kdlab.report.figures import fmt_count

    sup, st = data.supervised, data.students
    if not sup.empty:
        facts.append(
            (
                "supervised runs (done)",
                f"{len(sup)}: N {fmt_count(sup.N.min())}–{fmt_count(sup.N.max())}, "
                f"D {fmt_count(sup.D.min())}–{fmt_count(sup.D.max())}, "
                f"loss {sup.loss.min():.3f}–{sup.loss.max():.3f}",
            )
        )
    if not st.empty:
        facts.append(
            (
                "students (done)",
                f"{len(st)}: N_S {fmt_count(st.N_S.min())}–{fmt_count(st.N_S.max())}, "
                f"D_S {fmt_count(st.D_S.min())}–{fmt_count(st.D_S.max())}, "
                f"L_T {st.L_T.min():.3f}–{st.L_T.max():.3f}, "
                f"{st['teacher_key'].nunique()} teacher(s)",
            )
        )
    return facts


PLAN_COLUMNS = {
    "scenario": "scenario",
    "compute": "C (FLOPs)",
    "student_tokens": "D_S",
    "teacher_params": "N_T",
    "teacher_tokens": "D_T",
    "teacher_loss": "L_T",
    "student_loss": "L_S",
    "supervised_loss": "L alone",
    "gain": "L_S − L alone",
    "on_bound": "on search bound",
    "share_student": "student",
    "share_teacher_logits": "logits",
    "share_teacher_pretraining": "teacher pretr.",
    "verdict": "verdict",
}


def plan_table(plans: PlanSet, per_scenario: int = 4) -> pd.DataFrame:
    """A few budgets per scenario (spread over the range) of the plan for the page."""
    tab = plans.table
    if tab.empty:
        return pd.DataFrame(columns=list(PLAN_COLUMNS))
    if "error" in tab.columns:
        tab = tab[tab["error"].isna()]
    parts = []
    for _, g in tab.groupby("scenario", sort=False):
        g = g.sort_values("compute")
        idx = np.unique(np.linspace(0, len(g) - 1, min(per_scenario, len(g))).round().astype(int))
        parts.append(g.iloc[idx])
    if not parts:
        return pd.DataFrame(columns=list(PLAN_COLUMNS))
    out = pd.concat(parts)
    out = out.assign(
        gain=out["student_loss"] - out["supervised_loss"], on_bound=on_search_bound(out)
    )
    return out[[c for c in PLAN_COLUMNS if c in out.columns]].reset_index(drop=True)
