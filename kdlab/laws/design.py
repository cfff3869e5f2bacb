"""Design a grid before paying for it: can its runs identify the law they are meant for?

Whether a grid's losses pin a law's coefficients down depends on where its runs sit
(N, D for the supervised law; N_S, D_S and the teacher's L_T for the distillation law),
how many there are and how noisy one run is, not on the losses themselves. So it can be
answered before any compute: draw losses at the grid's points from a law (the published
one or a pilot fit) with a run's noise (given, or measured from repeated seeds), fit
them with the code a study's runs go through (kdlab.laws.fit, bootstrap included), and
repeat with fresh noise. The spread of the refitted coefficients over the replicates is
what the grid can know (a parametric bootstrap). A coefficient is identified when 90% of
its refits land within ``tolerance`` (relative) of the value the losses were drawn from
and they keep off the optimiser's bounds: a narrow spread around a wrong value (c1 of
the distillation law, which saturates) is not identified either. The replicates also
give the expected extrapolation error, as the paper measures it: fit the weaker runs,
predict the strongest, held out.

The fit's own bootstrap (resampling runs, each resample started from the full fit's
optimum) is reported beside it with how often its interval holds the coefficient the
losses were drawn from: where a law is not identified, resamples stay near the optimum
they start from and the intervals come out too narrow, often around a wrong value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdlab.laws.fit import SearchSettings, fit_distillation, fit_supervised
from kdlab.laws.flags import BOUND_TOL, EXPONENTS, POSITIVE
from kdlab.laws.forms import (
    DISTILLATION_SPEC,
    MAX_EXPONENT,
    distillation_loss,
    supervised_loss,
    supervised_spec,
)
from kdlab.laws.io import LawInputError

SEARCHES = {
    "full": SearchSettings(),  # kdlab fit's defaults
    # 500 iterations, not 200: on the pysrc grid the distillation optimum (c1 ~ 1e2, f1 ~
    # 0.09) is 300-450 batched L-BFGS steps from the paper grid's starts (c1 <= 1.5); at
    # 200 the f1 -> 0 corner (a hinge whose f1 gradient vanishes) converged first and took
    # both polish slots, and 7 of 8 refits of nearly noise-free losses missed the law.
    # Halving every 100 steps, not 25: the corner also wins the early halvings, and with
    # the L2 capacity-gap students in the grid one refit of two kept only corner starts
    "quick": SearchSettings(keep=200, final_keep=20, round_iters=100, max_iter=500, n_polish=2),
}
ON_BOUND_LIMIT = 0.1  # refits on a bound more often than this: not identified


@dataclass
class Grid:
    """A grid's runs as law points, and what it costs.

    ``supervised``: teachers and baselines (N, D, role); ``students``: distilled students
    of one objective (N_S, D_S and either N_T, D_T or a measured L_T). A student whose
    teacher is a run of ``supervised`` (same N and D, role teacher) gets that run's
    simulated loss as L_T; a given L_T is kept as it is.
    """

    name: str
    supervised: pd.DataFrame
    students: pd.DataFrame
    flops: float
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    min_steps: int | None = None  # the shortest run's optimizer steps
    max_passes: float | None = None  # the most any run goes over its data

    @property
    def runs(self) -> int:
        return len(self.supervised) + len(self.students)


@dataclass
class DesignSettings:
    """How a grid is judged: noise of a run, replicates, bootstrap, extrapolation split."""

    noise: float = 0.01  # relative (multiplicative) noise of one run's loss
    replicates: int = 8
    bootstrap: int = 0  # the fit's own bootstrap per replicate (0: not run)
    holdout: float = 0.1  # fraction of each law's runs, the strongest, held out
    tolerance: float = 0.25  # identified: 90% of refits within this of the value
    form: str = "paper"
    huber_delta: float = 1e-4
    start_grid: str | Mapping[str, Mapping[str, Sequence[float]]] = "paper"
    search: str = "quick"
    seed: int = 0


def scaled_law(truth: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The law as seen by runs ``scale`` times smaller in N and in D: L(N, D) of the
    result is the given law's L(scale N, scale D), so every prefactor P of a term P / X^e
    becomes P scale^-e. It moves a published law to a CPU grid's scale (with scale =
    the paper's sizes over the grid's) keeping its exponents, its floor and its
    capacity gap where the paper's grid meets them."""
    if not (np.isfinite(scale) and scale > 0):
        raise LawInputError(f"The law's scale must be a positive number, not {scale}.")
    out: dict[str, Any] = {}
    for law in ("supervised", "distillation"):
        coef = truth.get(law)
        if coef is None:
            out[law] = None
            continue
        coef = dict(coef)
        coef["A"] = coef["A"] * scale ** -coef["alpha"]
        coef["B"] = coef["B"] * scale ** -coef["beta"]
        out[law] = coef
    return out


# ----------------------------------------------------------------------- simulation


def simulate(
    grid: Grid, truth: Mapping[str, Any], noise: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One draw of the grid's losses: the law times exp(noise * N(0, 1)), run by run.

    A teacher outside the grid gets its own draw, shared by all its students.
    """
    sup_coef = truth["supervised"]
    sup = grid.supervised.copy()
    sup["loss_true"] = supervised_loss(sup["N"], sup["D"], sup_coef)
    sup["loss"] = sup["loss_true"] * np.exp(noise * rng.standard_normal(len(sup)))
    st = grid.students.copy()
    if st.empty:
        return sup, st
    if truth.get("distillation") is None:
        raise LawInputError(
            f"{grid.name} has students, but the law to simulate from has no distillation "
            "coefficients: give --law paper or a distillation fit JSON."
        )
    if "L_T" in st.columns:  # measured teachers (a design from a database's runs)
        return sup, _students(st, truth, noise, rng)
    teachers = sup[sup["role"] == "teacher"].groupby(["N", "D"])["loss"].first()
    pairs = st[["N_T", "D_T"]].drop_duplicates()
    drawn = supervised_loss(pairs["N_T"], pairs["D_T"], sup_coef) * np.exp(
        noise * rng.standard_normal(len(pairs))
    )
    l_t = {
        (n, d): float(teachers.get((n, d), v))
        for n, d, v in zip(pairs["N_T"], pairs["D_T"], drawn, strict=True)
    }
    st["L_T"] = [l_t[(n, d)] for n, d in zip(st["N_T"], st["D_T"], strict=True)]
    return sup, _students(st, truth, noise, rng)


def _students(
    st: pd.DataFrame, truth: Mapping[str, Any], noise: float, rng: np.random.Generator
) -> pd.DataFrame:
    st["loss_true"] = distillation_loss(
        st["N_S"], st["D_S"], st["L_T"], truth["distillation"], truth["supervised"]
    )
    st["loss"] = st["loss_true"] * np.exp(noise * rng.standard_normal(len(st)))
    return st


def _holdout_where(frame: pd.DataFrame, fraction: float) -> str | None:
    """--fit-where keeping all but the strongest ``fraction`` of the runs (by true loss)."""
    n_out = int(round(fraction * len(frame)))
    if n_out < 1 or len(frame) - n_out < 2:
        return None
    cut = float(np.sort(frame["loss_true"].to_numpy(float))[n_out - 1])
    return f"loss_true > {cut!r}"


# --------------------------------------------------------------------------- design


def design(
    grid: Grid, truth: Mapping[str, Any], settings: DesignSettings | None = None
) -> dict[str, Any]:
    """Judge ``grid`` under ``truth``: per law, per coefficient, identified or not, and
    the extrapolation error on the strongest runs. Returns a JSON-able document."""
    s = settings or DesignSettings()
    _check_settings(s)
    rng = np.random.default_rng(s.seed)
    fit_sup = _can_fit(grid.supervised, "N", "D", len(supervised_spec(s.form).params))
    fit_dist = _can_fit(grid.students, "N_S", "D_S", len(DISTILLATION_SPEC.params))
    notes = list(grid.notes)
    if not fit_sup:
        notes.append(
            "Too few supervised runs (or one size or one budget) for a supervised fit: "
            "students use the law's own supervised coefficients for Ltilde_S."
        )
    if not len(grid.students):
        notes.append("No students of the main objective: the distillation law is not judged.")
    elif not fit_dist:
        notes.append("Too few students (or one size or one budget) for a distillation fit.")
    records: dict[str, list[dict[str, Any]]] = {"supervised": [], "distillation": []}
    for r in range(s.replicates):
        sup, st = simulate(grid, truth, s.noise, rng)
        sup_coef = truth["supervised"]  # Ltilde_S when there is no supervised fit
        if fit_sup:
            records["supervised"].append(_replicate("supervised", sup, truth, s, r))
            sup_coef = records["supervised"][-1]["coefficients"]
        if fit_dist:
            records["distillation"].append(_replicate("distillation", st, truth, s, r, sup_coef))
    laws = {law: _summarise(recs, truth[law], s, law) for law, recs in records.items() if recs}
    doc = {
        "grid": grid.name,
        "runs": grid.runs,
        "supervised_runs": len(grid.supervised),
        "students": len(grid.students),
        "flops": float(grid.flops),
        "seconds": grid.seconds,
        "min_steps": grid.min_steps,
        "max_passes": grid.max_passes,
        "settings": {
            "noise": s.noise,
            "replicates": s.replicates,
            "bootstrap": s.bootstrap,
            "holdout": s.holdout,
            "tolerance": s.tolerance,
            "form": s.form,
            "search": s.search,
            "seed": s.seed,
        },
        "laws": laws,
        "notes": notes,
    }
    doc["verdict"] = verdict(doc)
    return doc


def _fit(
    law: str,
    frame: pd.DataFrame,
    s: DesignSettings,
    seed: int,
    sup_coef: Mapping[str, float] | None,
    fit_where: str | None = None,
) -> dict[str, Any]:
    """kdlab fit's own fit of one law; the extrapolation fit (``fit_where``) skips the
    bootstrap, which only the full fit reports."""
    kw: dict[str, Any] = dict(
        huber_delta=s.huber_delta,
        grid=_starts(s, law),
        search=SEARCHES[s.search],
        fit_where=fit_where,
        bootstrap=0 if fit_where else s.bootstrap,
        seed=seed,
    )
    if law == "supervised":
        return fit_supervised(frame, form=s.form, **kw)
    return fit_distillation(frame, sup_coef, **kw)


def _replicate(
    law: str,
    frame: pd.DataFrame,
    truth: Mapping[str, Any],
    s: DesignSettings,
    seed: int,
    sup_coef: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One draw's verdict on one law: the fit of every run, and the fit of the weaker."""
    full = _fit(law, frame, s, seed, sup_coef)
    where = _holdout_where(frame, s.holdout)
    extrap = _fit(law, frame, s, seed, sup_coef, where) if where else None
    return _record(full, extrap, frame, truth, law, sup_coef)


def _check_settings(s: DesignSettings) -> None:
    if not (np.isfinite(s.noise) and s.noise > 0):
        raise LawInputError(f"The noise of a run must be a positive number, not {s.noise}.")
    if s.replicates < 2:
        raise LawInputError(f"--replicates must be at least 2, not {s.replicates}.")
    if not 0 <= s.holdout < 1:
        raise LawInputError(f"--holdout must lie in [0, 1), not {s.holdout}.")
    if not s.tolerance > 0:
        raise LawInputError(f"--tolerance must be positive, not {s.tolerance}.")
    if s.search not in SEARCHES:
        raise LawInputError(f"Unknown search {s.search!r}: choose {' or '.join(SEARCHES)}.")


def _can_fit(frame: pd.DataFrame, n_col: str, d_col: str, n_params: int) -> bool:
    return len(frame) > n_params and frame[n_col].nunique() > 1 and frame[d_col].nunique() > 1


def _starts(s: DesignSettings, law: str) -> Any:
    return s.start_grid if isinstance(s.start_grid, str) else s.start_grid[law]


def _record(
    full: Mapping[str, Any],
    extrap: Mapping[str, Any] | None,
    frame: pd.DataFrame,
    truth: Mapping[str, Any],
    law: str,
    sup_coef: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What one replicate's fits tell: coefficients, intervals, errors."""
    out: dict[str, Any] = {
        "coefficients": dict(full["coefficients"]),
        "intervals": dict(full.get("intervals") or {}),
        "fit_error": full["fit_error"]["mean_abs_rel_error"],
        "objective": full["objective"],
        "objective_at_truth": _objective_at(truth, frame, law, full["huber_delta"], sup_coef),
    }
    if extrap is not None and extrap.get("heldout_error"):
        held = frame[~frame.eval(str(extrap["fit_where"]))]
        pred = _predict(extrap["coefficients"], held, law, sup_coef)
        out["extrapolation_error"] = extrap["heldout_error"]["mean_abs_rel_error"]
        out["extrapolation_error_vs_law"] = float(np.mean(np.abs(pred / held["loss_true"] - 1)))
        out["heldout"] = int(len(held))
    return out


def _predict(
    coef: Mapping[str, float], frame: pd.DataFrame, law: str, sup_coef: Mapping[str, float] | None
) -> np.ndarray:
    if law == "supervised":
        return supervised_loss(frame["N"], frame["D"], coef)
    return distillation_loss(frame["N_S"], frame["D_S"], frame["L_T"], coef, sup_coef)


def _objective_at(
    truth: Mapping[str, Any],
    frame: pd.DataFrame,
    law: str,
    delta: float,
    sup_coef: Mapping[str, float] | None,
) -> float:
    """The fit's objective at the coefficients the losses were drawn from: a fit that
    ends above it has missed the truth's basin (a search failure, not the grid's)."""
    pred = _predict(truth[law], frame, law, sup_coef)
    r = np.abs(np.log(pred / frame["loss"].to_numpy(float)))
    return float(np.sum(np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))))


def _on_bound(name: str, value: float) -> bool:
    if name not in EXPONENTS:
        return False
    return value <= BOUND_TOL or value >= MAX_EXPONENT - BOUND_TOL


def _summarise(
    recs: list[dict[str, Any]], truth: Mapping[str, float], s: DesignSettings, law: str
) -> dict[str, Any]:
    names = list(recs[0]["coefficients"])
    if law == "supervised" and s.form == "chinchilla":
        names.remove("gamma")
    coefficients = {n: _coefficient(n, recs, truth[n], s) for n in names}
    derived = {}
    for name in ("alpha", "beta"):
        values = np.array([r["coefficients"][name] * r["coefficients"]["gamma"] for r in recs])
        derived[f"{name}*gamma"] = _spread(values, truth[name] * truth.get("gamma", 1.0))
    out: dict[str, Any] = {
        "coefficients": coefficients,
        "derived": derived,
        "identified": all(c["identified"] for c in coefficients.values()),
        "not_identified": [n for n, c in coefficients.items() if not c["identified"]],
        "fit_error": float(np.median([r["fit_error"] for r in recs])),
        "search_failures": int(
            sum(r["objective"] > r["objective_at_truth"] * (1 + 1e-6) + 1e-15 for r in recs)
        ),
        "replicates": len(recs),
    }
    extrap = [r for r in recs if "extrapolation_error" in r]
    if extrap:
        errs = np.array([r["extrapolation_error"] for r in extrap])
        vs_law = np.array([r["extrapolation_error_vs_law"] for r in extrap])
        out["extrapolation"] = {
            "heldout": extrap[0]["heldout"],
            "error_median": float(np.median(errs)),
            "error_p90": float(np.percentile(errs, 90)),
            "error_vs_law_median": float(np.median(vs_law)),
        }
    return out


def _spread(values: np.ndarray, truth: float) -> dict[str, Any]:
    """Median and 90% range of the refits, and how far that range reaches from the truth."""
    p05, p50, p95 = np.percentile(values, [5, 50, 95])
    reach = max(abs(p05 - truth), abs(p95 - truth))
    return {
        "truth": float(truth),
        "median": float(p50),
        "p05": float(p05),
        "p95": float(p95),
        "rel_error": float(reach / abs(truth)) if truth else float("inf"),
    }


def _coefficient(
    name: str, recs: list[dict[str, Any]], truth: float, s: DesignSettings
) -> dict[str, Any]:
    values = np.array([r["coefficients"][name] for r in recs], dtype=float)
    out = _spread(values, truth)
    if name in POSITIVE and out["p05"] > 0:
        out["decades"] = float(np.log10(out["p95"] / out["p05"]))
    out["on_bound"] = float(np.mean([_on_bound(name, v) for v in values]))
    boots = [r["intervals"][name] for r in recs if name in r.get("intervals", {})]
    if boots:
        lo, hi = np.array(boots, dtype=float).T
        out["bootstrap"] = {
            "lo_median": float(np.median(lo)),
            "hi_median": float(np.median(hi)),
            "coverage": float(np.mean((lo <= truth) & (truth <= hi))),
            "on_bound": float(
                np.mean([_on_bound(name, a) or _on_bound(name, b) for a, b in boots])
            ),
        }
    reasons = []
    if out["on_bound"] > ON_BOUND_LIMIT:
        reasons.append(f"on a bound in {out['on_bound']:.0%} of refits")
    if out.get("decades", 0) >= 1:
        reasons.append(f"refits span {out['decades']:.1f} decades")
    elif not out["rel_error"] <= s.tolerance:
        side = "below" if out["p95"] < truth else "above" if out["p05"] > truth else "around"
        reasons.append(f"refits reach {out['rel_error']:.0%} from the value ({side} it)")
    out["identified"] = not reasons
    out["reason"] = "; ".join(reasons)
    return out


def verdict(doc: Mapping[str, Any]) -> str:
    """One sentence per law: identified, or which coefficients are not."""
    parts = []
    for law, res in doc["laws"].items():
        ex = res.get("extrapolation")
        tail = (
            f"; extrapolation to the {ex['heldout']} strongest runs off by "
            f"{ex['error_median']:.1%} (median over replicates)"
            if ex
            else ""
        )
        if res["identified"]:
            parts.append(f"{law} law identified{tail}")
        else:
            parts.append(f"{law} law NOT identified ({', '.join(res['not_identified'])}){tail}")
    if not parts:
        return "Nothing to judge: the grid has too few runs for either law."
    return "; ".join(parts) + "."


# -------------------------------------------------------------------------- ranking


def rank(docs: Sequence[Mapping[str, Any]], budget: float | None = None) -> list[dict[str, Any]]:
    """Candidate grids best first: within budget, fewest unidentified coefficients, then
    smallest extrapolation error, then cheapest."""

    def key(doc: Mapping[str, Any]) -> tuple:
        laws = doc["laws"].values()
        missing = sum(len(r["not_identified"]) for r in laws)
        extrap = max(
            [r["extrapolation"]["error_median"] for r in laws if "extrapolation" in r] or [0]
        )
        over = budget is not None and doc["flops"] > budget
        return (over, missing, extrap, doc["flops"])

    out = []
    for doc in sorted(docs, key=key):
        over, missing, extrap, flops = key(doc)
        out.append(
            {
                "grid": doc["grid"],
                "within_budget": not over,
                "not_identified": missing,
                "extrapolation_error": extrap,
                "flops": flops,
                "runs": doc["runs"],
            }
        )
    return out


# ---------------------------------------------------------------------------- noise


NOISE_GROUP = (
    "role",
    "n_params",
    "tokens",
    "corpus_fingerprint",
    "tokenizer",
    "n_ctx",
    "batch_size",
    "lr",
    "kd_objective",
    "teacher_n_params",
    "teacher_tokens",
)


def measured_noise(runs: pd.DataFrame) -> dict[str, Any]:
    """Relative noise of a run, pooled over groups of finished runs that differ only in
    their seed: sqrt of the pooled variance of log(loss). Raises when there are none."""
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    cols = [c for c in NOISE_GROUP if c in done.columns]
    ss, dof, groups = 0.0, 0, 0
    keyed = done.assign(**{c: done[c].astype(str) for c in cols})
    for _, g in keyed.groupby(cols, dropna=False) if cols and "seed" in done else []:
        if g["seed"].nunique() < 2:
            continue
        logs = np.log(g["val_loss"].to_numpy(float))
        ss += float(np.sum((logs - logs.mean()) ** 2))
        dof += len(logs) - 1
        groups += 1
    if not dof:
        raise LawInputError(
            "No runs in the database differ only in their seed, so a run's noise cannot "
            "be measured there; give --noise as a number (e.g. 0.01 for 1%)."
        )
    return {"noise": float(np.sqrt(ss / dof)), "groups": groups, "runs": dof + groups}
