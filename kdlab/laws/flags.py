"""Degenerate results, named so that every place that shows them can say so first.

A fit can reproduce its runs to 1% and still mean nothing coefficient by coefficient:
an exponent on the optimiser's bound, a prefactor of 1e16, a floor E of 1e-136, an
interval spanning orders of magnitude. A plan can sit on the planner's search bound (a
teacher trained on 1e17 tokens). Those numbers are artifacts of the grid and the search,
not findings; ``kdlab fit``, ``kdlab plan``, ``kdlab predict`` and the report all take
their warnings from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdlab.laws.forms import MAX_EXPONENT

EXPONENTS = ("alpha", "beta", "gamma")
POSITIVE = ("E", "A", "B", "d1")  # fitted as logs, so they can run off to 0 or to 1e30
BOUND_TOL = 1e-3
RAN_OFF = 1e12  # a prefactor or d1 beyond this: the exponents beside it are not pinned
VANISHED = 1e-6  # E, d1 or f1 below this: a floor or break that the runs never reached
DECADES = 1.0  # an interval wider than this many orders of magnitude
PLAN_BOUND_TOL = 0.01  # within 1% of a search bound (in log space, relative)


def _primed(name: str, law: str) -> str:
    primed = law == "distillation" and name in ("A", "B", "alpha", "beta", "gamma")
    return f"{name}'" if primed else name


def coefficient_flags(doc: Mapping[str, Any]) -> dict[str, str]:
    """{coefficient: why it is degenerate} for a fit document (empty when none is)."""
    law = str(doc.get("law", "supervised"))
    coef = doc.get("coefficients") or {}
    intervals = doc.get("intervals") or {}
    fixed = {"gamma"} if doc.get("form") == "chinchilla" else set()
    out: dict[str, str] = {}
    for name, raw in coef.items():
        if name in fixed or not isinstance(raw, (int, float)):
            continue
        value = float(raw)
        lo_hi = intervals.get(name)
        why = []
        if name in EXPONENTS and (value <= BOUND_TOL or value >= MAX_EXPONENT - BOUND_TOL):
            bound = 0 if value <= BOUND_TOL else MAX_EXPONENT
            why.append(f"on its bound of {bound:g}")
        elif (
            name in EXPONENTS
            and lo_hi
            and (min(lo_hi) <= BOUND_TOL or max(lo_hi) >= MAX_EXPONENT - BOUND_TOL)
        ):
            bound = 0 if min(lo_hi) <= BOUND_TOL else MAX_EXPONENT
            why.append(f"its interval reaches the bound of {bound:g}")
        if name in POSITIVE and value > RAN_OFF:
            why.append(f"ran off to {value:.2g}")
        if name in ("E", "d1", "f1") and abs(value) < VANISHED:
            why.append(f"effectively 0 ({value:.2g})")
        if name in ("c1", "f1") and value < 0:
            why.append("negative, outside the law's meaning")
        if name in POSITIVE and lo_hi and min(lo_hi) > 0:
            decades = float(np.log10(max(lo_hi) / min(lo_hi)))
            if decades > DECADES:
                why.append(f"its interval spans {decades:.1f} orders of magnitude")
        if why:
            out[name] = "; ".join(why)
    return {_primed(name, law): why for name, why in out.items()}


def fit_warnings(doc: Mapping[str, Any] | None) -> list[str]:
    """Sentences a reader should see before a fit's coefficients (empty when it is sound)."""
    if not doc:
        return []
    flags = coefficient_flags(doc)
    if not flags:
        return []
    law = str(doc.get("law", "supervised"))
    listed = "; ".join(f"{name} {why}" for name, why in flags.items())
    return [
        f"The {law} fit is degenerate: {listed}. The flagged coefficients are artifacts of the "
        "grid (too few sizes or budgets, or no run near the floor), not measurements; "
        "the fit may still reproduce its runs, but not beyond them."
    ]


def plan_flags(result: Mapping[str, Any], bounds: Sequence[float]) -> list[str]:
    """Which of the plan's teacher size, teacher tokens and student tokens sit on the
    planner's search bounds: answers the search stopped at, not optima."""
    lo, hi = np.log(float(bounds[0])), np.log(float(bounds[1]))
    tol = PLAN_BOUND_TOL * (hi - lo)
    out = []
    for key, what in (
        ("teacher_params", "teacher size N_T"),
        ("teacher_tokens", "teacher tokens D_T"),
        ("student_tokens", "student tokens D_S"),
    ):
        value = result.get(key)
        if value is None or not value > 0:
            continue
        v = np.log(float(value))
        if v <= lo + tol or v >= hi - tol:
            side = "lower" if v <= lo + tol else "upper"
            out.append(f"{what} = {float(value):.3g} is on the planner's {side} search bound")
    return out


def plan_warnings(result: Mapping[str, Any], bounds: Sequence[float]) -> list[str]:
    """Sentences for a plan on a search bound (empty when it is inside the bounds)."""
    flags = plan_flags(result, bounds)
    if not flags:
        return []
    return [
        "This plan is not an optimum: "
        + "; ".join(flags)
        + ". The law keeps improving toward that bound (a degenerate fit, or a scenario "
        "where the teacher is free), so the answer is the bound, not a recommendation."
    ]


def source_warnings(coefs: Mapping[str, Any]) -> list[str]:
    """The warnings of the fit(s) a prediction or plan is made from (none for the paper's
    published coefficients): kdlab plan --json and the dashboard print the same."""
    doc = coefs.get("doc") or {}
    if doc.get("source") == "paper":
        return []
    return fit_warnings(doc.get("supervised") if doc.get("law") == "distillation" else None) + (
        fit_warnings(doc)
    )
