"""Fitting the supervised and distillation laws as the paper does (a Huber loss on log
residuals, L-BFGS-B from a grid of starts) and describing the fit.

A fit is a plain dict, written as the fit JSON (``kdlab fit --out``): ``law``, ``form``,
``coefficients`` (E, A, B, alpha, beta, gamma / A, B, alpha, beta, gamma, c0, c1, f1,
d1), ``objective``, ``n_points``, intervals when bootstrapped, and how it was obtained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from kdlab.laws.bootstrap import bootstrap_intervals
from kdlab.laws.flags import coefficient_flags, fit_warnings
from kdlab.laws.forms import (
    DISTILLATION_SPEC,
    LawSpec,
    distillation_loss,
    supervised_loss,
    supervised_spec,
)
from kdlab.laws.grids import defined_starts, grid_starts, resolve_grid
from kdlab.laws.io import LawInputError, plan_bounds_for, validate_points
from kdlab.laws.objective import DistillationObjective, HuberObjective, SupervisedObjective
from kdlab.laws.optim import multistart
from kdlab.laws.published import PAPER_FLOPS
from kdlab.laws.row_filter import parse_filter


@dataclass
class SearchSettings:
    """How the multi-start search trades exhaustiveness for time (see optim.py).

    keep: starts kept after screening the objective at every grid point (None: all);
    final_keep: starts left by successive halving, run to the end (None: no halving);
    round_iters: iterations between halvings; max_iter: batched L-BFGS iterations;
    n_polish: distinct optima refined with SciPy L-BFGS-B;
    threads: torch threads while fitting (None: leave torch's setting). One by default:
    on a machine whose cores are shared, torch's thread barrier costs milliseconds per
    operation and a two-thread fit can run ten times slower than a one-thread one.
    """

    keep: int | None = 1000
    final_keep: int | None = 100
    round_iters: int = 25
    max_iter: int = 300
    n_polish: int = 5
    threads: int | None = 1


@contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op threads for a block, then restore them."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def select_points(
    df: pd.DataFrame, drop_highest: int = 0, fit_where: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs to fit, held-out runs): drop the K highest losses, then split by a row filter
    (kdlab.laws.row_filter's grammar: read, never evaluated as code).

    Dropping the highest losses follows Epoch AI's replication (the first, unconverged
    points of a sweep); the split is the paper's extrapolation test (fit the weaker runs,
    report the error on the stronger ones).
    """
    if drop_highest < 0:
        raise LawInputError(f"--drop-highest must be 0 or more, not {drop_highest}.")
    if drop_highest >= len(df):
        raise LawInputError(
            f"Dropping the {drop_highest} highest losses leaves none of the {len(df)} runs."
        )
    if drop_highest:
        df = df.loc[df["loss"].sort_values(kind="stable").index[: len(df) - drop_highest]]
    if fit_where is None:
        return df, df.iloc[:0]
    mask = parse_filter(fit_where).mask(df)
    return df[mask], df[~mask]


def error_summary(pred: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """Relative prediction errors: what the paper quotes for its extrapolation test."""
    if len(loss) == 0:
        return {"n_points": 0}
    rel = pred / loss - 1.0
    return {
        "n_points": int(len(loss)),
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "mean_rel_error": float(np.mean(rel)),
        "rmse_log": float(np.sqrt(np.mean(np.log(pred / loss) ** 2))),
    }


# sizes and token counts, whose range sets the planner's bounds for this fit
SCALE_COLUMNS = ("N", "D", "N_S", "D_S")


def _fit(
    spec: LawSpec,
    frame: pd.DataFrame,
    heldout: pd.DataFrame,
    make_objective: Callable[[pd.DataFrame, np.ndarray | None], HuberObjective],
    predict: Callable[[pd.DataFrame, Mapping[str, float]], np.ndarray],
    huber_delta: float,
    grid: str | Mapping[str, Sequence[float]],
    search: SearchSettings,
    bootstrap: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    if not (huber_delta > 0 and np.isfinite(huber_delta)):
        raise LawInputError(f"The Huber delta must be a positive number, not {huber_delta}.")
    if bootstrap < 0:
        raise LawInputError(f"--bootstrap must be 0 or more resamples, not {bootstrap}.")
    validate_points(frame, spec.law, len(spec.params), "runs selected for the fit")
    try:
        grid_values = resolve_grid(spec, grid)
    except ValueError as exc:
        raise LawInputError(str(exc)) from None
    starts = grid_starts(spec, grid_values)
    usable = defined_starts(spec, starts)
    t0 = time.perf_counter()
    objective = make_objective(frame, None)
    with torch_threads(search.threads):
        result = multistart(
            objective,
            starts[usable],
            keep=search.keep,
            final_keep=search.final_keep,
            round_iters=search.round_iters,
            max_iter=search.max_iter,
            n_polish=search.n_polish,
            n_data=len(frame),
            bounds=spec.bounds(),
        )
    fit_time = time.perf_counter() - t0
    coef = spec.to_coefficients(result.x)
    # the scale the fit was made at, for a report or plan that has no runs to look at
    data_range = {
        c: [float(frame[c].min()), float(frame[c].max())] for c in SCALE_COLUMNS if c in frame
    }
    doc: dict[str, Any] = {
        "law": spec.law,
        "form": spec.form,
        "coefficients": coef,
        "objective": result.fun,
        "n_points": int(len(frame)),
        "huber_delta": huber_delta,
        "grid": grid if isinstance(grid, str) else "custom",
        "grid_values": grid_values,
        "n_starts": int(len(starts)),
        "n_starts_defined": int(usable.sum()),
        "n_starts_optimised": result.n_optimised,
        "search": asdict(search),
        "raw_parameters": dict(zip(spec.params, map(float, result.x), strict=True)),
        "other_optima": [
            {"objective": f, "coefficients": spec.to_coefficients(x)}
            for f, x in result.candidates[1:]
        ],
        "fit_error": error_summary(predict(frame, coef), frame["loss"].to_numpy(float)),
        "heldout_error": error_summary(predict(heldout, coef), heldout["loss"].to_numpy(float))
        if len(heldout)
        else None,
        "n_heldout": int(len(heldout)),
        "fit_seconds": round(fit_time, 3),
        "plan_bounds": plan_bounds_for(*data_range.values()),
        "data_range": data_range,
    }
    if bootstrap:
        t1 = time.perf_counter()
        with torch_threads(search.threads):
            boot = bootstrap_intervals(
                spec,
                lambda w: make_objective(frame, w),
                len(frame),
                [x for _, x in result.candidates[:3]],
                resamples=bootstrap,
                level=level,
                seed=seed,
                bounds=spec.bounds(),
            )
        doc.update(boot)
        doc["bootstrap"]["seconds"] = round(time.perf_counter() - t1, 3)
    doc["flags"] = coefficient_flags(doc)
    doc["warnings"] = fit_warnings(doc)
    return doc


def fit_supervised(
    df: pd.DataFrame,
    form: str = "paper",
    huber_delta: float = 1e-4,
    grid: str | Mapping[str, Sequence[float]] = "paper",
    search: SearchSettings | None = None,
    drop_highest: int = 0,
    fit_where: str | None = None,
    bootstrap: int = 0,
    level: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit L(N, D) = E + (A / N^alpha + B / D^beta)^gamma to runs with columns N, D, loss."""
    try:
        spec = supervised_spec(form)
    except ValueError as exc:
        raise LawInputError(str(exc)) from None
    validate_points(df, "supervised", len(spec.params))
    frame, heldout = select_points(df, drop_highest, fit_where)

    def make(fr: pd.DataFrame, w: np.ndarray | None) -> HuberObjective:
        return SupervisedObjective(spec, fr["N"], fr["D"], fr["loss"], huber_delta, w)

    def predict(fr: pd.DataFrame, coef: Mapping[str, float]) -> np.ndarray:
        return supervised_loss(fr["N"].to_numpy(float), fr["D"].to_numpy(float), coef)

    doc = _fit(
        spec,
        frame,
        heldout,
        make,
        predict,
        huber_delta,
        grid,
        search or SearchSettings(),
        bootstrap,
        level,
        seed,
    )
    doc.update(drop_highest=drop_highest, fit_where=fit_where)
    return doc


def fit_distillation(
    df: pd.DataFrame,
    supervised: Mapping[str, float],
    huber_delta: float = 1e-4,
    grid: str | Mapping[str, Sequence[float]] = "paper",
    search: SearchSettings | None = None,
    drop_highest: int = 0,
    fit_where: str | None = None,
    bootstrap: int = 0,
    level: float = 0.9,
    seed: int = 0,
    supervised_doc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the distillation law to student runs with columns N_S, D_S, L_T, loss.

    Ltilde_S (what each student would reach alone) comes from ``supervised``; the fit
    JSON carries those coefficients so predict and plan need nothing else.
    """
    spec = DISTILLATION_SPEC
    validate_points(df, "distillation", len(spec.params))
    frame, heldout = select_points(df, drop_highest, fit_where)

    def make(fr: pd.DataFrame, w: np.ndarray | None) -> HuberObjective:
        sup = supervised_loss(fr["N_S"].to_numpy(float), fr["D_S"].to_numpy(float), supervised)
        return DistillationObjective(
            spec, fr["N_S"], fr["D_S"], fr["L_T"], sup, fr["loss"], huber_delta, w
        )

    def predict(fr: pd.DataFrame, coef: Mapping[str, float]) -> np.ndarray:
        return distillation_loss(
            fr["N_S"].to_numpy(float),
            fr["D_S"].to_numpy(float),
            fr["L_T"].to_numpy(float),
            coef,
            supervised,
        )

    doc = _fit(
        spec,
        frame,
        heldout,
        make,
        predict,
        huber_delta,
        grid,
        search or SearchSettings(),
        bootstrap,
        level,
        seed,
    )
    sup_doc = dict(supervised_doc or {})
    sup_doc.setdefault("law", "supervised")
    sup_doc["coefficients"] = dict(supervised)
    doc.update(drop_highest=drop_highest, fit_where=fit_where, supervised=sup_doc)
    return doc


def default_flops(
    n_ctx: float | None = None, n_vocab: float | None = None, rho: float | None = None
) -> dict[str, float]:
    """F(N) settings stored with a fit for ``kdlab plan`` (paper's unless told otherwise)."""
    out = dict(PAPER_FLOPS)
    if rho is not None:
        out["rho"] = float(rho)
    if n_ctx is not None:
        out["n_ctx"] = float(n_ctx)
    if n_vocab is not None:
        out["n_vocab"] = float(n_vocab)
    return out
