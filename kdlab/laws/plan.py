"""Compute-optimal distillation (PAPER.md §4) and when to train alone instead.

For a student size N_S and a budget C, minimise the distillation law's L_S over the
teacher size N_T, teacher tokens D_T and student tokens D_S within the paper's bounds
(1e6..1e17, or the fit's own scale), subject to the budget of the scenario. Compare with
the same student
trained alone on the whole budget: D = C / (3 F(N_S)).

The search is on (log N_T, log D_T) with D_S eliminated by the budget (L_S falls with
D_S, so the budget binds): a dense grid finds the basin, SLSQP on all three variables
with the budget as a constraint (the paper's method) refines the best grid points.
In the best case L_S depends on the teacher only through L_T, so the teacher loss is
optimised directly and the cheapest teacher reaching it is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.optimize

from kdlab.laws._blas import single_threaded_blas
from kdlab.laws.compute import (
    Scenario,
    compute_parts,
    flops_per_token,
    get_scenario,
    supervised_tokens,
)
from kdlab.laws.flags import plan_warnings
from kdlab.laws.forms import distillation_loss, supervised_loss, supervised_tokens_for_loss
from kdlab.laws.io import PLAN_BOUNDS, LawInputError


def _require_distillation(coefs: Mapping[str, Any]) -> None:
    if coefs.get("distillation") is None:
        raise LawInputError(
            "Planning needs distillation coefficients: use --coefficients paper or a "
            "distillation fit JSON."
        )


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise LawInputError(f"{name} must be a positive number, not {v}.")


class _Problem:
    """L_S and the budget of one (N_S, C, scenario, K) as functions of the teacher."""

    def __init__(self, coefs: Mapping[str, Any], n_s: float, compute: float, sc: Scenario, k: int):
        self.sup = coefs["supervised"]
        self.dist = coefs["distillation"]
        self.flops = coefs["flops"]
        self.n_s, self.compute, self.sc, self.k = n_s, compute, sc, k
        self.f_s = float(flops_per_token(n_s, self.flops))
        self.bounds = coefs.get("bounds", PLAN_BOUNDS)  # on N_T, D_T, D_S
        self.lo, self.hi = np.log(self.bounds[0]), np.log(self.bounds[1])

    def student_tokens(self, n_t, d_t) -> np.ndarray:
        """D_S that spends the rest of the budget (NaN where the teacher alone exceeds it)."""
        f_t = flops_per_token(n_t, self.flops)
        rest = self.compute - self.sc.delta_pre * 3.0 * f_t * d_t / self.k
        d_s = rest / (3.0 * self.f_s + self.sc.delta_lgt * f_t)
        d_s = np.minimum(d_s, self.bounds[1])
        return np.where(d_s >= self.bounds[0], d_s, np.nan)

    def student_loss(self, n_t, d_t, d_s) -> np.ndarray:
        l_t = supervised_loss(n_t, d_t, self.sup)
        return distillation_loss(self.n_s, d_s, l_t, self.dist, self.sup)


def plan(
    coefs: Mapping[str, Any],
    student: float,
    compute: float,
    scenario: str,
    students: int = 1,
    grid_points: int = 161,
) -> dict[str, Any]:
    """Compute-optimal teacher and tokens for one student size and budget; see module doc."""
    _require_distillation(coefs)
    sc = get_scenario(scenario)
    _check_positive(student=student, compute=compute)
    if int(students) != students or students < 1:
        raise LawInputError(f"--students must be a whole number of at least 1, not {students}.")
    students = int(students)
    prob = _Problem(coefs, float(student), float(compute), sc, students)
    d_sup = float(supervised_tokens(student, compute, coefs["flops"]))
    if d_sup < prob.bounds[0]:
        raise LawInputError(
            f"A budget of {compute:.3g} FLOPs buys the {student:.3g}-parameter student only "
            f"{d_sup:.3g} tokens, below the planner's lower bound of {prob.bounds[0]:.0e}."
        )
    with single_threaded_blas():
        if sc.delta_lgt == 0 and sc.delta_pre == 0:
            n_t, d_t, d_s = _best_case(prob)
        else:
            n_t, d_t, d_s = _constrained(prob, grid_points)
    l_t = float(supervised_loss(n_t, d_t, prob.sup))
    l_s = float(prob.student_loss(n_t, d_t, d_s))
    l_sup = float(supervised_loss(student, d_sup, prob.sup))
    parts = compute_parts(student, d_s, n_t, d_t, sc, prob.flops, students)
    total = float(parts["total"])
    shares = {
        k: float(parts[k]) / total for k in ("student", "teacher_logits", "teacher_pretraining")
    }
    result: dict[str, Any] = {
        "scenario": sc.name,
        "student_params": float(student),
        "compute": float(compute),
        "students": students,
        "student_loss": l_s,
        "supervised_loss": l_sup,
        "teacher_loss": l_t,
        "teacher_params": float(n_t),
        "teacher_tokens": float(d_t),
        "student_tokens": float(d_s),
        "supervised_tokens": d_sup,
        "compute_shares": shares,
        "compute_used": total / compute,
        "teacher_pretraining_flops": float(3.0 * flops_per_token(n_t, prob.flops) * d_t),
        "verdict": "distil" if l_s < l_sup else "train alone",
    }
    result["warnings"] = plan_warnings(result, prob.bounds)
    return result


def _best_case(prob: _Problem) -> tuple[float, float, float]:
    """Teacher free: the whole budget trains the student; pick the best L_T, then the
    cheapest (N_T, D_T) within bounds that reaches it."""
    d_s = min(prob.compute / (3.0 * prob.f_s), prob.bounds[1])
    lt_lo = float(supervised_loss(prob.bounds[1], prob.bounds[1], prob.sup))
    lt_hi = float(supervised_loss(prob.bounds[0], prob.bounds[0], prob.sup))
    grid = np.linspace(np.log(lt_lo), np.log(lt_hi), 4001)
    vals = distillation_loss(prob.n_s, d_s, np.exp(grid), prob.dist, prob.sup)
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = scipy.optimize.minimize_scalar(
        lambda g: float(distillation_loss(prob.n_s, d_s, np.exp(g), prob.dist, prob.sup)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12},
    )
    log_lt = float(res.x) if res.fun <= vals[i] else float(grid[i])
    n_t, d_t = _cheapest_teacher(prob, np.exp(log_lt))
    return n_t, d_t, d_s


def _cheapest_teacher(prob: _Problem, l_t: float) -> tuple[float, float]:
    """(N_T, D_T) with L(N_T, D_T) = l_t at the least pretraining compute 3 F(N_T) D_T."""
    u = np.linspace(prob.lo, prob.hi, 2001)
    d = supervised_tokens_for_loss(np.exp(u), l_t, prob.sup)
    ok = np.isfinite(d) & (d >= prob.bounds[0]) & (d <= prob.bounds[1])
    if not ok.any():  # only a corner of the bounds reaches it
        strongest = float(supervised_loss(prob.bounds[1], prob.bounds[1], prob.sup))
        return (
            (prob.bounds[1], prob.bounds[1])
            if l_t <= strongest
            else (prob.bounds[0], prob.bounds[0])
        )
    cost = np.where(ok, flops_per_token(np.exp(u), prob.flops) * np.where(ok, d, 1.0), np.inf)
    i = int(np.argmin(cost))

    def c(v: float) -> float:
        dd = supervised_tokens_for_loss(np.exp(v), l_t, prob.sup)
        if not np.isfinite(dd) or not prob.bounds[0] <= dd <= prob.bounds[1]:
            return np.inf
        return float(np.log(flops_per_token(np.exp(v), prob.flops) * dd))

    lo, hi = u[max(i - 1, 0)], u[min(i + 1, len(u) - 1)]
    res = scipy.optimize.minimize_scalar(c, bounds=(lo, hi), method="bounded")
    v = float(res.x) if np.isfinite(res.fun) and res.fun <= np.log(cost[i]) else float(u[i])
    return float(np.exp(v)), float(supervised_tokens_for_loss(np.exp(v), l_t, prob.sup))


def _constrained(prob: _Problem, grid_points: int) -> tuple[float, float, float]:
    u = np.linspace(prob.lo, prob.hi, grid_points)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    n_t, d_t = np.exp(uu).ravel(), np.exp(vv).ravel()
    d_s = prob.student_tokens(n_t, d_t)
    with np.errstate(invalid="ignore"):
        loss = np.where(
            np.isfinite(d_s), prob.student_loss(n_t, d_t, np.nan_to_num(d_s, nan=1.0)), np.inf
        )
    if not np.isfinite(loss).any():
        raise LawInputError(
            "No teacher within the bounds fits this budget: even the smallest teacher's "
            "cost leaves the student fewer than 1e6 tokens."
        )
    order = np.argsort(loss)[:5]
    best = (float(loss[order[0]]), n_t[order[0]], d_t[order[0]], float(d_s[order[0]]))
    log_c = np.log(prob.compute)

    def objective(x: np.ndarray) -> float:
        return float(np.log(prob.student_loss(*np.exp(x))))

    def budget(x: np.ndarray) -> float:  # >= 0 within budget (log space)
        nt, dt, ds = np.exp(x)
        parts = compute_parts(prob.n_s, ds, nt, dt, prob.sc, prob.flops, prob.k)
        return float(log_c - np.log(parts["total"]))

    for j in order:
        x0 = np.log([n_t[j], d_t[j], d_s[j]])
        try:
            res = scipy.optimize.minimize(
                objective,
                x0,
                method="SLSQP",
                bounds=[(prob.lo, prob.hi)] * 3,
                constraints=[{"type": "ineq", "fun": budget}],
                options={"ftol": 1e-14, "maxiter": 500},
            )
        except (ValueError, FloatingPointError):
            continue
        x = np.clip(res.x, prob.lo, prob.hi)
        if not np.all(np.isfinite(x)) or budget(x) < -1e-9:
            continue
        val = float(np.exp(objective(x)))
        if val < best[0]:
            best = (val, *np.exp(x))
    return float(best[1]), float(best[2]), float(best[3])


def crossover(
    coefs: Mapping[str, Any],
    student: float,
    scenario: str = "best",
    students: int = 1,
    teacher_loss: float | None = None,
    tokens_per_param: tuple[float, float] = (0.1, 1e5),
    points: int = 41,
) -> dict[str, Any]:
    """The compute at which training the student alone overtakes distillation.

    Scans budgets that give the student alone M = D / N_S within ``tokens_per_param``
    (clipped to the planner's bounds) and bisects every change of the winner. With
    ``teacher_loss`` the teacher is fixed and already paid for (the paper's fixed-teacher
    comparison: same student tokens, teacher costs not counted); otherwise each budget
    is planned compute-optimally in ``scenario``. ``crossover_compute`` is the first
    budget above which training alone wins; ``crossovers`` lists every change.
    """
    _require_distillation(coefs)
    sc = get_scenario(scenario)
    _check_positive(student=student)
    if teacher_loss is not None:
        _check_positive(teacher_loss=teacher_loss)
    flops = coefs["flops"]
    f_s = float(flops_per_token(student, flops))
    bounds = coefs.get("bounds", PLAN_BOUNDS)
    d_lo = max(bounds[0], tokens_per_param[0] * student)
    d_hi = min(bounds[1], tokens_per_param[1] * student)
    if d_lo >= d_hi:
        raise LawInputError(f"No budget within the planner's bounds for a {student:.3g} student.")
    log_c = np.linspace(np.log(3 * f_s * d_lo), np.log(3 * f_s * d_hi), points)

    def gap(lc: float) -> float:
        if teacher_loss is not None:
            d = float(np.exp(lc)) / (3.0 * f_s)
            l_s = distillation_loss(
                student, d, teacher_loss, coefs["distillation"], coefs["supervised"]
            )
            return float(l_s - supervised_loss(student, d, coefs["supervised"]))
        p = plan(coefs, student, float(np.exp(lc)), sc.name, students)
        return p["student_loss"] - p["supervised_loss"]

    gaps = np.array([gap(lc) for lc in log_c])
    result: dict[str, Any] = {
        "scenario": "fixed teacher" if teacher_loss is not None else sc.name,
        "teacher_loss": teacher_loss,
        "student_params": float(student),
        "students": students,
        "compute_range": [float(np.exp(log_c[0])), float(np.exp(log_c[-1]))],
        "crossover_compute": None,
        "crossovers": [],
    }
    for i in np.nonzero(np.sign(gaps[:-1]) != np.sign(gaps[1:]))[0]:
        lc = scipy.optimize.brentq(gap, log_c[i], log_c[i + 1], xtol=1e-6)
        c = float(np.exp(lc))
        d = c / (3.0 * f_s)
        winner = "train alone" if gaps[i + 1] >= 0 else "distil"
        result["crossovers"].append(
            {
                "compute": c,
                "supervised_tokens": d,
                "tokens_per_param": d / student,
                "supervised_loss": float(supervised_loss(student, d, coefs["supervised"])),
                "above": winner,
            }
        )
        if winner == "train alone" and result["crossover_compute"] is None:
            result["crossover_compute"] = c
    if not result["crossovers"]:
        better = "distillation" if np.all(gaps < 0) else "training alone"
        result["note"] = f"{better} is better over the whole range"
    elif result["crossover_compute"] is not None:
        result["note"] = "training alone wins above crossover_compute (see crossovers)"
    else:
        result["note"] = "distillation only overtakes training alone as compute grows"
    return result
