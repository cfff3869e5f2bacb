"""What a report is drawn from: the runs of one comparable study and the fit JSONs.

Everything is read once here so the figures and the page see the same runs, and so a
report can be made from whatever exists: a database without fits (data only), fits
without a database (laws, plans and coefficient tables only), or both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlab.laws.io import LawInputError, load_coefficients, matching_rows
from kdlab.laws.published import PAPER_FLOPS

# Columns that decide whether two losses are comparable (the same validation data), as
# named in the run table and as named in a fit JSON's "data" block.
COMPARABLE = (
    ("corpus_fingerprint", "corpus"),
    ("tokenizer", "tokenizer"),
    ("n_ctx", "n_ctx"),
    ("recipe", "recipe"),
)
SUPERVISED_ROLES = ("teacher", "supervised")


@dataclass
class Fit:
    """One fit JSON: its path, the raw document and the laws package's reading of it."""

    path: str
    doc: dict[str, Any]
    coefs: dict[str, Any]  # kdlab.laws.io.load_coefficients: supervised, distillation, flops

    @property
    def law(self) -> str:
        return str(self.doc.get("law", "supervised"))


@dataclass
class ReportData:
    """The runs and fits a report is made of; empty frames where nothing was recorded."""

    db: str | None
    all_runs: pd.DataFrame  # every run of the database, any status or corpus
    supervised: pd.DataFrame  # finished teachers and supervised baselines: N, D, loss, ...
    students: pd.DataFrame  # finished students: N_S, D_S, L_T, loss, ...
    supervised_fit: Fit | None = None
    distillation_fit: Fit | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def supervised_coef(self) -> dict[str, float] | None:
        """Supervised coefficients: the supervised fit, else those the distillation fit used."""
        if self.supervised_fit is not None:
            return self.supervised_fit.coefs["supervised"]
        if self.distillation_fit is not None:
            return self.distillation_fit.coefs["supervised"]
        return None

    @property
    def supervised_doc(self) -> dict[str, Any] | None:
        if self.supervised_fit is not None:
            return self.supervised_fit.doc
        if self.distillation_fit is not None:
            return dict(self.distillation_fit.doc.get("supervised") or {})
        return None

    @property
    def flops(self) -> dict[str, float]:
        """F(N) settings of the fits (their own compute accounting), else the paper's."""
        for fit in (self.distillation_fit, self.supervised_fit):
            if fit is not None:
                return dict(fit.coefs["flops"])
        return dict(PAPER_FLOPS)

    @property
    def study(self) -> str | None:
        if "study" in self.all_runs.columns:
            names = sorted(self.all_runs["study"].dropna().astype(str).unique())
            if len(names) == 1:
                return names[0]
        return None


def read_runs(url: str | None, notes: list[str]) -> pd.DataFrame:
    """Every run of the database, or an empty frame (with a note) when there is none."""
    if not url:
        notes.append("No run database was given.")
        return pd.DataFrame()
    from kdlab.rundb import shown_url
    from kdlab.rundb.query import runs_frame

    frame = runs_frame(url)
    if frame.empty:
        notes.append(f"The run database {shown_url(url)} holds no runs yet.")
    return frame


def load_fit(path: str | None, law: str) -> Fit | None:
    """A fit JSON as the laws package reads it; refuses a file of the other law."""
    if not path:
        return None
    coefs = load_coefficients(str(path))
    doc = coefs["doc"]
    got = str(doc.get("law", "supervised"))
    if got != law:
        other = "--supervised-fit" if got == "supervised" else "--distillation-fit"
        raise LawInputError(f"{path} is a {got} fit, not a {law} one; pass it as {other}.")
    if doc.get("fit_where") is not None:  # re-applied to the runs: read by its grammar first
        from kdlab.laws.row_filter import parse_filter

        parse_filter(doc["fit_where"], f"the fit_where of {path}")
    return Fit(str(path), doc, coefs)


def _choose_selection(
    runs: pd.DataFrame, fits: list[Fit], wanted: Mapping[str, Any], notes: list[str]
) -> dict[str, Any]:
    """One (corpus, tokenizer, n_ctx, recipe): as asked, else as the fits used, else the
    most runs."""
    selection: dict[str, Any] = {}
    done = runs[runs["status"] == "done"] if "status" in runs.columns else runs
    for col, fit_key in COMPARABLE:
        if col not in runs.columns:
            continue
        if wanted.get(fit_key) is not None:
            selection[col] = wanted[fit_key]
            if col == "corpus_fingerprint" and "corpus" in runs.columns:  # given by name
                named = runs.loc[runs["corpus"].astype(str) == str(wanted[fit_key]), col]
                if named.dropna().astype(str).nunique() == 1:
                    selection[col] = named.dropna().iloc[0]
            continue
        from_fit = [
            f.doc["data"][fit_key]
            for f in fits
            if isinstance(f.doc.get("data"), Mapping) and f.doc["data"].get(fit_key) is not None
        ]
        values = done[col].dropna()
        if from_fit:
            selection[col] = from_fit[0]
        elif values.astype(str).nunique() > 1:
            top = values.astype(str).value_counts().index[0]
            selection[col] = top
            notes.append(
                f"The runs mix several values of {col}; the report shows {col} = {top}, "
                "the one with the most finished runs (losses of different data are not "
                "comparable)."
            )
    return selection


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[col], errors="coerce").astype(float)


def supervised_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished teachers and supervised baselines, with the law's names N, D, loss."""
    cols = ["key", "role", "model", "N", "D", "loss", "flops", "flops_per_token", "family"]
    cols.append("known_floor")  # the least reachable loss, where known (a Markov chain's)
    if runs.empty or "role" not in runs.columns:
        return pd.DataFrame(columns=cols)
    sel = runs[(runs["status"] == "done") & runs["role"].isin(SUPERVISED_ROLES)]
    out = pd.DataFrame(
        {
            "key": sel["key"],
            "role": sel["role"],
            "model": sel.get("model"),
            "N": _num(sel, "n_params"),
            "D": _num(sel, "tokens"),
            "loss": _num(sel, "val_loss"),
            "flops": _num(sel, "flops"),
            "flops_per_token": _num(sel, "flops_per_token"),
            "family": sel.get("family"),
            "known_floor": _num(sel, "known_floor"),
        }
    )
    ok = np.isfinite(out[["N", "D", "loss"]]).all(axis=1) & (out[["N", "D", "loss"]] > 0).all(
        axis=1
    )
    return out[ok].reset_index(drop=True)


def student_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished students with the law's names N_S, D_S, L_T, loss and their teacher."""
    cols = ["key", "model", "N_S", "D_S", "L_T", "loss", "teacher_key", "N_T", "D_T", "flops"]
    cols.append("kd_objective")
    if runs.empty or "role" not in runs.columns:
        return pd.DataFrame(columns=cols)
    sel = runs[(runs["status"] == "done") & (runs["role"] == "student")]
    out = pd.DataFrame(
        {
            "key": sel["key"],
            "model": sel.get("model"),
            "N_S": _num(sel, "n_params"),
            "D_S": _num(sel, "tokens"),
            "L_T": _num(sel, "teacher_loss"),
            "loss": _num(sel, "val_loss"),
            "teacher_key": sel.get("teacher_key"),
            "N_T": _num(sel, "teacher_n_params"),
            "D_T": _num(sel, "teacher_tokens"),
            "flops": _num(sel, "flops"),
            "kd_objective": sel.get("kd_objective"),
        }
    )
    need = ["N_S", "D_S", "L_T", "loss"]
    ok = np.isfinite(out[need]).all(axis=1) & (out[need] > 0).all(axis=1)
    return out[ok].reset_index(drop=True)


def load_report_data(
    db: str | None,
    supervised_fit: str | None = None,
    distillation_fit: str | None = None,
    study: str | None = None,
    corpus: str | None = None,
    tokenizer: str | None = None,
    n_ctx: int | None = None,
    recipe: str | None = None,
) -> ReportData:
    """Read the runs and fits once; see the module doc for what may be missing."""
    notes: list[str] = []
    sup = load_fit(supervised_fit, "supervised")
    dist = load_fit(distillation_fit, "distillation")
    runs = read_runs(db, notes)
    if study is not None and "study" in runs.columns:
        runs = runs[runs["study"].astype(str) == str(study)]
        if runs.empty:
            notes.append(f"No run belongs to the study {study!r}.")
    selection: dict[str, Any] = {}
    chosen = runs
    if not runs.empty:
        wanted = {"corpus": corpus, "tokenizer": tokenizer, "n_ctx": n_ctx, "recipe": recipe}
        selection = _choose_selection(runs, [f for f in (sup, dist) if f], wanted, notes)
        chosen = matching_rows(runs, selection)
        left_out = len(runs) - len(chosen)
        if left_out:
            notes.append(f"{left_out} run(s) of other data are left out of the figures.")
    if sup is not None and dist is not None:
        used = dist.coefs["supervised"]
        own = sup.coefs["supervised"]
        if any(not np.isclose(used.get(k, np.nan), own.get(k, np.nan)) for k in own):
            notes.append(
                "The distillation fit used other supervised coefficients than the supervised "
                "fit given; its own are used for its predictions (Ltilde_S)."
            )
    supervised = supervised_frame(chosen)
    students = _one_objective(student_frame(chosen), dist, notes)
    if supervised.empty and sup is not None:
        supervised = _csv_frame(sup, "supervised", notes)
    if students.empty and dist is not None:
        students = _csv_frame(dist, "distillation", notes)
    return ReportData(
        db=db,
        all_runs=runs,
        supervised=supervised,
        students=students,
        supervised_fit=sup,
        distillation_fit=dist,
        selection=selection,
        notes=notes,
    )


def _one_objective(students: pd.DataFrame, dist: Fit | None, notes: list[str]) -> pd.DataFrame:
    """The students of one distillation objective: the fit's, else the most common.

    Ablation students (lambda = 0, other tau) follow other laws; they stay in the
    database and the run table but not in the law's figures.
    """
    labels = students["kd_objective"].fillna("").astype(str)
    if labels.nunique() < 2:
        return students
    data = (dist.doc.get("data") or {}) if dist is not None else {}
    label = data.get("kd_objective") or labels.value_counts().index[0]
    kept = students[labels == str(label)]
    notes.append(
        f"The figures show the students distilled with {label}; {len(students) - len(kept)} "
        "student(s) of other objectives (ablations) are left out of them."
    )
    return kept.reset_index(drop=True)


def _csv_source(doc: Mapping[str, Any]) -> str | None:
    source = str((doc.get("data") or {}).get("source") or "")
    return source if source.endswith(".csv") and Path(source).is_file() else None


def _csv_frame(fit: Fit, law: str, notes: list[str]) -> pd.DataFrame:
    """The runs of a fit made from a CSV (kdlab fit --csv), when the database has none."""
    from kdlab.laws.io import read_csv_points

    source = _csv_source(fit.doc)
    empty = (
        supervised_frame(pd.DataFrame()) if law == "supervised" else student_frame(pd.DataFrame())
    )
    if source is None:
        return empty
    flops_col = (fit.doc.get("data") or {}).get("flops_col")
    try:
        pts = read_csv_points(source, law, flops_col=flops_col)
    except LawInputError as exc:
        notes.append(f"Cannot re-read the {law} fit's CSV: {exc}")
        return empty
    out = empty.reindex(range(len(pts)))
    for col in pts.columns:
        if col in out.columns:
            out[col] = pts[col].to_numpy()
    out["key"] = [f"{Path(source).name}:{i}" for i in range(len(pts))]
    if law == "supervised":
        out["role"] = "csv"
        out["flops"] = pd.to_numeric(pts[flops_col], errors="coerce") if flops_col else np.nan
    notes.append(f"The {law} runs are read from the fit's CSV {source}.")
    return out.astype(
        {
            c: float
            for c in out.columns
            if c
            in ("N", "D", "loss", "flops", "flops_per_token", "N_S", "D_S", "L_T", "N_T", "D_T")
        }
    )


# --------------------------------------------------------------- fit membership


def fit_membership(data: ReportData, law: str) -> pd.DataFrame | None:
    """The runs a fit saw, labelled fitted / held out / dropped / new, with predictions.

    Re-applies the fit's own selection (kdlab.laws.fit.select_points with its
    drop_highest and fit_where) to the runs it recorded, so the held-out runs of an
    extrapolation test are the ones the fit left out. Runs recorded after the fit are
    "new". None when the fit or its runs are missing.
    """
    from kdlab.laws.fit import select_points
    from kdlab.laws.forms import distillation_loss, supervised_loss

    # Only a fit of this law knows its runs: the supervised part of a distillation fit
    # carries no run list, so it gets no parity plot of its own.
    fit = data.supervised_fit if law == "supervised" else data.distillation_fit
    if fit is None:
        return None
    doc = fit.doc
    points = _fit_points(data, law, doc)
    if points is None or points.empty:
        return None
    keys = (doc.get("data") or {}).get("run_keys")
    if keys is not None and "run_key" in points.columns:
        seen = points["run_key"].astype(str).isin({str(k) for k in keys})
    else:
        seen = pd.Series(True, index=points.index)
    points = points.copy()
    points["status"] = np.where(seen, "dropped", "new")
    try:
        fitted, held = select_points(
            points[seen], int(doc.get("drop_highest") or 0), doc.get("fit_where")
        )
    except LawInputError:
        fitted, held = points[seen], points.iloc[:0]
    points.loc[fitted.index, "status"] = "fitted"
    points.loc[held.index, "status"] = "held out"
    if law == "supervised":
        points["pred"] = supervised_loss(points["N"], points["D"], fit.coefs["supervised"])
    else:
        points["pred"] = distillation_loss(
            points["N_S"],
            points["D_S"],
            points["L_T"],
            fit.coefs["distillation"],
            fit.coefs["supervised"],
        )
    return points


def _fit_points(data: ReportData, law: str, doc: Mapping[str, Any]) -> pd.DataFrame | None:
    """The points the fit was made from: its CSV when it still exists, else the runs of
    the database that the report shows."""
    source = _csv_source(doc)
    if source is not None:
        from kdlab.laws.io import read_csv_points

        try:
            return read_csv_points(source, law, flops_col=(doc.get("data") or {}).get("flops_col"))
        except LawInputError as exc:
            data.notes.append(f"Cannot re-read the {law} fit's CSV {source}: {exc}")
            return None
    if data.db and not data.all_runs.empty:
        from kdlab.rundb.query import fit_points

        pts = pd.DataFrame(fit_points(data.db, law))
        if "run_key" in pts.columns:
            keep = data.supervised if law == "supervised" else data.students
            pts = pts[pts["run_key"].isin(set(keep["key"]))]
        return pts.reset_index(drop=True)
    return None
