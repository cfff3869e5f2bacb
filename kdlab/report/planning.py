"""Compute-optimal plans for the report: many calls of kdlab.laws.plan, run in parallel.

The planner solves one constrained problem per (scenario, student size, budget), about
0.2 s each with SLSQP; a map of where distillation wins needs a few hundred, so they are
spread over worker processes. The planning itself is the laws package's; nothing about
the law or the budget is re-derived here.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kdlab.laws.compute import SCENARIOS, flops_per_token
from kdlab.laws.io import LawInputError, load_coefficients

SCENARIO_ORDER: tuple[str, ...] = tuple(SCENARIOS)
SCENARIO_TITLES = {
    "best": "best case (teacher free)",
    "inference": "teacher inference",
    "pretraining": "teacher pretraining",
    "pretraining+inference": "teacher pretraining + inference",
}
# The budgets of a plan span what the student alone would train on: M = D / N_S tokens
# per parameter from 1 to 10^4 (the paper's students sit at 20 to 320).
TOKENS_PER_PARAM = (1.0, 1e4)
MIN_TOKENS = 1e6  # the planner's lower bound on tokens (kdlab.laws.plan.BOUNDS)
# A worker process starts by importing torch (seconds): below this many plans (about
# 0.2 s each) one process is as fast.
POOL_MIN_TASKS = 100


@dataclass
class PlanSet:
    """Plans of one set of coefficients: the per-scenario table and the advantage map."""

    source: str  # "paper" or the fit JSON's path
    label: str  # how figures name the coefficients
    student: float  # N_S of the plan table and the compute-share figure
    flops: dict[str, float]  # the F(N) settings used
    table: pd.DataFrame  # one row per (scenario, compute)
    map: pd.DataFrame  # one row per (scenario, student, compute)


def on_search_bound(frame: pd.DataFrame) -> pd.Series:
    """Plans that stopped on the planner's search bound (kdlab.laws.flags.plan_flags)."""
    if "warnings" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["warnings"].map(lambda w: isinstance(w, list) and len(w) > 0)


def resolve_plan_coefficients(spec: str, distillation_fit: str | None) -> tuple[str, dict]:
    """``auto`` (the distillation fit if given, else the paper), ``paper`` or a JSON path."""
    if spec == "auto":
        spec = distillation_fit or "paper"
    coefs = load_coefficients(spec)
    if coefs["distillation"] is None:
        raise LawInputError(
            f"{spec} is a supervised fit; planning needs distillation coefficients "
            "(--plan-coefficients paper or a distillation fit JSON)."
        )
    return spec, coefs


def budgets(student: float, flops: Mapping[str, float], points: int) -> np.ndarray:
    """Budgets C = 3 F(N_S) M N_S over TOKENS_PER_PARAM, above the planner's token floor."""
    f = float(flops_per_token(student, flops))
    d_lo = max(TOKENS_PER_PARAM[0] * student, MIN_TOKENS * 1.01)
    d_hi = max(TOKENS_PER_PARAM[1] * student, d_lo * 10)
    return 3.0 * f * np.geomspace(d_lo, d_hi, points)


def _plan_task(task: tuple[dict, float, float, str]) -> dict[str, Any]:
    from kdlab.laws.plan import plan

    coefs, student, compute, scenario = task
    row: dict[str, Any] = {"scenario": scenario, "student_params": student, "compute": compute}
    try:
        result = plan(coefs, student, compute, scenario)
    except (LawInputError, ValueError, FloatingPointError) as exc:
        row["error"] = str(exc)
        return row
    shares = result.pop("compute_shares")
    row.update(result)
    row.update({f"share_{k}": v for k, v in shares.items()})
    return row


def run_plans(
    coefs: Mapping[str, Any], tasks: Sequence[tuple[float, float, str]], jobs: int = 1
) -> pd.DataFrame:
    """plan() for every (student, compute, scenario), in ``jobs`` processes."""
    full = [(dict(coefs, doc={}), float(n), float(c), s) for n, c, s in tasks]
    if jobs <= 1 or len(full) < POOL_MIN_TASKS:
        rows = [_plan_task(t) for t in full]
    else:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            rows = list(pool.map(_plan_task, full, chunksize=max(1, len(full) // (4 * jobs))))
    frame = pd.DataFrame(rows)
    if "error" not in frame.columns:
        frame["error"] = None
    return frame


def build_plans(
    spec: str,
    coefs: Mapping[str, Any],
    student: float,
    sizes: Sequence[float],
    table_points: int = 10,
    map_points: int = 8,
    scenarios: Sequence[str] = SCENARIO_ORDER,
    jobs: int = 1,
) -> PlanSet:
    """The plan table for one student over budgets, and the (size x budget) map."""
    flops = dict(coefs["flops"])
    tasks = [(student, c, s) for s in scenarios for c in budgets(student, flops, table_points)]
    map_tasks: list[tuple[float, float, str]] = []
    if map_points > 1 and len(sizes) > 1:
        # Each size gets the budgets of its own TOKENS_PER_PARAM band: a rectangle in
        # (N_S, C) would spend most plans on students trained far too little or too long.
        grid_n = np.geomspace(min(sizes), max(sizes), map_points)
        map_tasks = [
            (n, c, s) for s in scenarios for n in grid_n for c in budgets(n, flops, map_points)
        ]
    frame = run_plans(coefs, tasks + map_tasks, jobs)
    label = (
        "published coefficients, Busbridge et al. 2025"
        if spec == "paper"
        else (f"fit {os.path.basename(spec)}")
    )
    return PlanSet(
        source=spec,
        label=label,
        student=float(student),
        flops=flops,
        table=frame.iloc[: len(tasks)].reset_index(drop=True),
        map=frame.iloc[len(tasks) :].reset_index(drop=True),
    )


def default_sizes(data_sizes: Sequence[float], spec: str) -> tuple[float, list[float]]:
    """(plan student, map size range): the study's sizes for a fit, the paper's otherwise."""
    sizes = [float(s) for s in data_sizes if np.isfinite(s) and s > 0]
    if spec == "paper" or not sizes:
        return 1.82e9, [1e8, 3e10]  # the paper's largest student; its ladder and beyond
    lo, hi = min(sizes), max(sizes)
    student = float(np.exp(np.median(np.log(sizes))))
    return student, [lo / 2, hi * 4]
