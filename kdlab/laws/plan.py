"""Compute-optimal distillation (Busbridge et al. 2025, §4) and when to train alone instead.

For a student size N_S and a budget C, minimise the distillation law's L_S over the
teacher size N_T, teacher tokens D_T and student tokens D_S within the paper's bounds
(1e6..1e17, or the fit's own scale), subject to the budget of the scenario. Compare with
the same student trained alone on the whole budget: D = C / (3 F(N_S)).

The search is on (log N_T, log D_T) with D_S eliminated by the budget (L_S falls with
D_S, so the budget binds): a grid finds the basins, and the best few of its local minima
are refined (kdlab.laws.search) by a pattern search, Newton steps along the shallow
valley the optimum usually lies in (many teachers give nearly the same student), and a
pattern search again down to a step of 1e-9 in log space. This reaches the optimum of
the paper's method, SLSQP on all three variables with the budget as a constraint
(tests/test_laws_plan.py checks that SLSQP started there cannot improve on it), and
being plain array arithmetic it solves a batch of problems (budgets along a curve,
bootstrap resamples of the coefficients, student sizes) at once, each for a small part
of what one SLSQP plan cost.
In the best case L_S depends on the teacher only through L_T, so the teacher loss is
optimised directly and the cheapest teacher reaching it is named.

A teacher that already exists (``Teacher``) is not searched for: the student trains on
what the budget leaves after the teacher's logits, if those are counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
from kdlab.laws.search import FINAL_STEP, local_minima, newton_2d, pattern_search

Coefficients = Mapping[str, Any]  # what kdlab.laws.io.load_coefficients returns
CANDIDATES = 3  # best grid points refined per problem
BLOCK = 16  # problems per block of the coarse grid (bounds its memory)
NEAR_STEP = 0.1  # first step of a search started near the answer (log space)


@dataclass(frozen=True)
class Teacher:
    """A teacher that already exists: its loss, or its size and tokens (its loss then
    comes from the supervised law). Counting its logits against the budget (scenario
    ``inference``) needs its size; its pretraining is never counted (already paid)."""

    loss: float | None = None
    params: float | None = None
    tokens: float | None = None


def require_distillation(coefs: Coefficients) -> None:
    if coefs.get("distillation") is None:
        raise LawInputError(
            "Planning needs distillation coefficients: use --coefficients paper or a "
            "distillation fit JSON."
        )


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise LawInputError(f"{name} must be a positive number, not {v}.")


def _stack(coef_sets: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Coefficient dicts -> one dict of (P, 1) arrays, which the law forms broadcast."""
    return {k: np.array([[float(c[k])] for c in coef_sets]) for k in coef_sets[0]}


class _Batch:
    """L_S and the budget of P problems (coefficients, N_S, C) of one scenario and K, as
    functions of the teacher; every array is (P, points)."""

    def __init__(
        self,
        coef_sets: Sequence[Coefficients],
        n_s: np.ndarray,
        compute: np.ndarray,
        sc: Scenario,
        k: int,
    ):
        self.sup = _stack([c["supervised"] for c in coef_sets])
        self.dist = _stack([c["distillation"] for c in coef_sets])
        self.flops = coef_sets[0]["flops"]  # one F(N) and one box for the whole batch
        self.bounds = tuple(coef_sets[0].get("bounds", PLAN_BOUNDS))  # on N_T, D_T, D_S
        self.n_s, self.compute = n_s[:, None], compute[:, None]
        self.sc, self.k = sc, k
        self.f_s = flops_per_token(self.n_s, self.flops)
        self.lo, self.hi = np.log(self.bounds[0]), np.log(self.bounds[1])

    def rows(self, index: np.ndarray) -> _Batch:
        """The same problems restricted to ``index``."""
        out = object.__new__(_Batch)
        out.__dict__.update(self.__dict__)
        for name in ("sup", "dist"):
            setattr(out, name, {k: v[index] for k, v in getattr(self, name).items()})
        out.n_s, out.compute, out.f_s = self.n_s[index], self.compute[index], self.f_s[index]
        return out

    def student_tokens(self, n_t, d_t) -> np.ndarray:
        """D_S that spends the rest of the budget (NaN where the teacher alone exceeds it)."""
        f_t = flops_per_token(n_t, self.flops)
        rest = self.compute - self.sc.delta_pre * 3.0 * f_t * d_t / self.k
        d_s = np.minimum(rest / (3.0 * self.f_s + self.sc.delta_lgt * f_t), self.bounds[1])
        return np.where(d_s >= self.bounds[0], d_s, np.nan)

    def student_loss(self, n_t, d_t, d_s) -> np.ndarray:
        l_t = supervised_loss(n_t, d_t, self.sup)
        return distillation_loss(self.n_s, d_s, l_t, self.dist, self.sup)

    def loss_at(self, log_nt: np.ndarray, log_dt: np.ndarray) -> np.ndarray:
        """L_S of the teacher exp(log_nt), exp(log_dt) and the student tokens the budget
        leaves; inf where the teacher leaves too few."""
        n_t, d_t = np.exp(log_nt), np.exp(log_dt)
        d_s = self.student_tokens(n_t, d_t)
        with np.errstate(invalid="ignore"):
            loss = self.student_loss(n_t, d_t, np.nan_to_num(d_s, nan=1.0))
        return np.where(np.isfinite(d_s) & np.isfinite(loss), loss, np.inf)


def _grid_starts(b: _Batch, grid_points: int) -> tuple[np.ndarray, float]:
    """The best few local minima of a grid over (log N_T, log D_T): (P, CANDIDATES, 2),
    NaN where infeasible, and the grid's step."""
    u = np.linspace(b.lo, b.hi, grid_points)
    uu, vv = (g.ravel()[None, :] for g in np.meshgrid(u, u, indexing="ij"))
    p = len(b.n_s)
    starts = np.full((p, CANDIDATES, 2), np.nan)
    for first in range(0, p, BLOCK):  # the grid in blocks of problems: bounded memory
        rows = np.arange(first, min(first + BLOCK, p))
        minima = local_minima(b.rows(rows).loss_at(uu, vv), grid_points)
        top = np.argsort(minima, axis=1)[:, :CANDIDATES]  # one search per basin
        feasible = np.isfinite(np.take_along_axis(minima, top, 1))[..., None]
        starts[rows] = np.where(feasible, np.stack([uu[0][top], vv[0][top]], -1), np.nan)
    return starts, float(u[1] - u[0])


def _constrained(
    b: _Batch, grid_points: int, near: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """(N_T, D_T, D_S) of each problem; NaN rows where no teacher fits the budget.

    ``near``: teachers (N_T, D_T), one or one per problem, to search from instead of the
    grid's basins, for problems close to ones already solved; problems where it does not
    fit (or is NaN) use the grid.
    """
    p = len(b.n_s)
    starts, step0 = np.full((p, CANDIDATES, 2), np.nan), NEAR_STEP
    if near is not None:
        starts[:, 0] = np.log(np.broadcast_to(near, (p, 2)))
        with np.errstate(invalid="ignore"):
            fits = np.isfinite(b.loss_at(starts[:, :1, 0], starts[:, :1, 1])[:, 0])
        starts[~fits] = np.nan
    else:
        fits = np.zeros(p, dtype=bool)
    if not fits.all():
        rest = np.nonzero(~fits)[0]
        starts[rest], step0 = _grid_starts(b.rows(rest), grid_points)
    # every candidate is its own search; problems without a feasible one stay NaN
    search = np.nonzero(np.isfinite(starts[..., 0]).ravel())[0]
    problem = search // CANDIDATES
    step = np.where(fits[problem], NEAR_STEP, step0)

    def loss(pts: np.ndarray, i: np.ndarray) -> np.ndarray:
        return b.rows(problem[i]).loss_at(pts[..., 0], pts[..., 1])

    # into the basin, along its valley, then down to the final step
    x, _ = pattern_search(loss, starts.reshape(-1, 2)[search], step, b.lo, b.hi, 1e-5, 25)
    x = newton_2d(loss, x, b.lo, b.hi)
    x, val = pattern_search(loss, x, np.full(len(search), 1e-4), b.lo, b.hi, FINAL_STEP, 30)
    best = np.full((p, 2), np.nan)
    best_val = np.full(p, np.inf)
    for j, k in enumerate(problem):  # the best candidate of each problem
        if val[j] < best_val[k]:
            best_val[k], best[k] = val[j], x[j]
    n_t, d_t = np.exp(best[:, 0]), np.exp(best[:, 1])
    with np.errstate(invalid="ignore"):
        d_s = b.student_tokens(n_t[:, None], d_t[:, None])[:, 0]
    return n_t, d_t, d_s


def _best_case(b: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher free: the whole budget trains the student; pick the best L_T, then the
    cheapest (N_T, D_T) within bounds that reaches it."""
    d_s = np.minimum(b.compute / (3.0 * b.f_s), b.bounds[1])  # (P, 1)
    g_lo = np.log(supervised_loss(b.bounds[1], b.bounds[1], b.sup))  # (P, 1)
    g_hi = np.log(supervised_loss(b.bounds[0], b.bounds[0], b.sup))
    grid = g_lo + (g_hi - g_lo) * np.linspace(0.0, 1.0, 401)  # (P, 401) of log L_T

    def loss(g: np.ndarray, i: np.ndarray) -> np.ndarray:
        sub = b.rows(i)
        return distillation_loss(sub.n_s, d_s[i], np.exp(g[..., 0]), sub.dist, sub.sup)

    every = np.arange(len(d_s))
    start = np.take_along_axis(grid, np.argmin(loss(grid[..., None], every), axis=1)[:, None], 1)
    log_lt, _ = pattern_search(loss, start, (g_hi - g_lo)[:, 0] / 400, g_lo, g_hi)
    n_t, d_t = _cheapest_teacher(b, np.exp(log_lt[:, 0]))
    return n_t, d_t, d_s[:, 0]


def _cheapest_teacher(b: _Batch, l_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_T, D_T) with L(N_T, D_T) = l_t at the least pretraining compute 3 F(N_T) D_T."""
    target = l_t[:, None]

    def log_cost(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        n = np.exp(u[..., 0])
        d = supervised_tokens_for_loss(n, target[i], b.rows(i).sup)
        ok = np.isfinite(d) & (d >= b.bounds[0]) & (d <= b.bounds[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok, np.log(flops_per_token(n, b.flops) * np.where(ok, d, 1.0)), np.inf)

    u = np.linspace(b.lo, b.hi, 401)
    every = np.arange(len(l_t))
    cost = log_cost(np.broadcast_to(u, (len(l_t), len(u)))[..., None], every)
    reachable = np.isfinite(cost).any(axis=1)
    start = u[np.argmin(cost, axis=1)][:, None]
    x, _ = pattern_search(log_cost, start, np.full(len(l_t), u[1] - u[0]), b.lo, b.hi)
    n_t = np.exp(x[:, 0])
    d_t = supervised_tokens_for_loss(n_t[:, None], target, b.sup)[:, 0]
    # only a corner of the bounds reaches it: the strongest or the weakest teacher
    strongest = supervised_loss(b.bounds[1], b.bounds[1], b.sup)[:, 0]
    corner = np.where(l_t <= strongest, b.bounds[1], b.bounds[0])
    return np.where(reachable, n_t, corner), np.where(reachable, d_t, corner)


def _given_teacher(b: _Batch, teacher: Teacher) -> tuple[np.ndarray, np.ndarray]:
    """(L_T, D_S) of an existing teacher: the student gets what its logits leave."""
    if teacher.loss is not None:
        l_t = np.full(len(b.n_s), float(teacher.loss))
    else:
        l_t = supervised_loss(teacher.params, teacher.tokens, b.sup)[:, 0]
    f_t = 0.0 if teacher.params is None else flops_per_token(teacher.params, b.flops)
    d_s = np.minimum(b.compute / (3.0 * b.f_s + b.sc.delta_lgt * f_t), b.bounds[1])[:, 0]
    return l_t, d_s


def _check_teacher(teacher: Teacher, sc: Scenario) -> None:
    if sc.delta_pre:
        raise LawInputError(
            f"A given teacher is already trained: scenario {sc.name} pays for training one; "
            "choose best or inference."
        )
    if (teacher.params is None) != (teacher.tokens is None):
        raise LawInputError("Give the teacher's size and tokens together.")
    if teacher.params is None and teacher.loss is None:
        raise LawInputError("A given teacher needs its loss, or its size and tokens.")
    if teacher.params is not None and teacher.loss is not None:
        raise LawInputError("Give either the teacher's loss or its size and tokens, not both.")
    if teacher.params is not None:
        check_positive(teacher_params=teacher.params, teacher_tokens=teacher.tokens)
    else:
        check_positive(teacher_loss=teacher.loss)
        if sc.delta_lgt:
            raise LawInputError(
                "Counting the teacher's logits needs its size: give its size and tokens, "
                "or choose scenario best (logits already stored)."
            )


def _as_list(value: Any, what: str) -> list:
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not items:
        raise LawInputError(f"No {what} to plan for.")
    return items


def plan(
    coefs: Coefficients,
    student: float,
    compute: float,
    scenario: str,
    students: int = 1,
    grid_points: int = 81,
    teacher: Teacher | None = None,
) -> dict[str, Any]:
    """Compute-optimal teacher and tokens for one student size and budget (see the
    module doc), or the plan with an existing ``teacher``."""
    (result,) = plan_batch(coefs, student, compute, scenario, students, grid_points, teacher)
    if "error" in result:
        raise LawInputError(result["error"])
    return result


def plan_batch(
    coefs: Coefficients | Sequence[Coefficients],
    student: float | Sequence[float],
    compute: float | Sequence[float],
    scenario: str,
    students: int = 1,
    grid_points: int = 81,
    teacher: Teacher | None = None,
    near: Sequence[float] | np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """``plan`` for many problems at once, solved together.

    ``coefs`` (one set, or one per problem: bootstrap resamples), ``student`` and
    ``compute`` (one value or one per problem) broadcast to P problems; F(N) and the
    bounds are those of the first set. ``near``: a teacher (N_T, D_T), or one per problem
    (P, 2), that solves a problem close to these (the fit's own plan, for its
    resamples; a close budget's), searched from instead of the grid. A problem the
    planner cannot solve gets a row holding ``error`` (the sentence ``plan`` raises)
    instead of a plan.
    """
    coef_list = _as_list(coefs, "coefficients")
    for c in coef_list:
        require_distillation(c)
    sc = get_scenario(scenario)
    n_s, c_all = _as_list(student, "student sizes"), _as_list(compute, "budgets")
    for n in n_s:
        check_positive(student=n)
    for c in c_all:
        check_positive(compute=c)
    if int(students) != students or students < 1:
        raise LawInputError(f"--students must be a whole number of at least 1, not {students}.")
    if teacher is not None:
        _check_teacher(teacher, sc)
    p = max(len(coef_list), len(n_s), len(c_all))
    if any(len(v) not in (1, p) for v in (coef_list, n_s, c_all)):
        raise LawInputError(
            "Give one value, or one per problem, of the coefficients, student and compute."
        )
    coef_list, n_s, c_all = ([v[0]] * p if len(v) == 1 else v for v in (coef_list, n_s, c_all))
    b = _Batch(coef_list, np.asarray(n_s, float), np.asarray(c_all, float), sc, int(students))
    d_sup = supervised_tokens(b.n_s, b.compute, b.flops)[:, 0]
    errors: list[str | None] = [None] * p
    for i in np.nonzero((d_sup < b.bounds[0]) | (d_sup > b.bounds[1]))[0]:
        side, bound = ("below", "lower") if d_sup[i] < b.bounds[0] else ("above", "upper")
        errors[i] = (
            f"A budget of {b.compute[i, 0]:.3g} FLOPs buys the {b.n_s[i, 0]:.3g}-parameter "
            f"student alone {d_sup[i]:.3g} tokens, {side} the planner's {bound} bound of "
            f"{b.bounds[0 if side == 'below' else 1]:.0e} tokens (--bounds LO HI)."
        )
    solve = (d_sup >= b.bounds[0]) & (d_sup <= b.bounds[1])
    n_t, d_t, d_s, l_t = (np.full(p, np.nan) for _ in range(4))
    if solve.any():
        sub = b.rows(np.nonzero(solve)[0])
        if teacher is not None:
            l_t[solve], d_s[solve] = _given_teacher(sub, teacher)
            n_t[solve] = np.nan if teacher.params is None else teacher.params
            d_t[solve] = np.nan if teacher.tokens is None else teacher.tokens
        else:
            best_case = sc.delta_lgt == 0 and sc.delta_pre == 0
            start = None if near is None else np.broadcast_to(np.asarray(near, float), (p, 2))
            found = (
                _best_case(sub)
                if best_case
                else _constrained(sub, grid_points, None if start is None else start[solve])
            )
            n_t[solve], d_t[solve], d_s[solve] = found
            with np.errstate(invalid="ignore"):
                l_t = supervised_loss(n_t[:, None], d_t[:, None], b.sup)[:, 0]
    for i in np.nonzero(solve & ~np.isfinite(d_s))[0]:
        errors[i] = (
            "No teacher within the bounds fits this budget: even the smallest teacher's "
            f"cost leaves the student fewer than {b.bounds[0]:.0e} tokens."
        )
    with np.errstate(invalid="ignore"):
        l_s = distillation_loss(b.n_s, d_s[:, None], l_t[:, None], b.dist, b.sup)[:, 0]
        l_sup = supervised_loss(b.n_s, d_sup[:, None], b.sup)[:, 0]
    rows = []
    for i in range(p):
        head = {
            "scenario": sc.name,
            "student_params": float(b.n_s[i, 0]),
            "compute": float(b.compute[i, 0]),
        }
        if errors[i]:
            rows.append({**head, "error": errors[i]})
            continue
        known = bool(np.isfinite(n_t[i]))  # a teacher given by its loss has no size
        # a given teacher's pretraining is paid (_check_teacher: delta_pre = 0), and its
        # logits are counted only when its size is known
        parts = compute_parts(
            head["student_params"],
            d_s[i],
            n_t[i] if known else 1.0,
            d_t[i] if known else 0.0,
            sc,
            b.flops,
            b.k,
        )
        total = float(parts["total"])
        shares = {
            k: float(parts[k]) / total for k in ("student", "teacher_logits", "teacher_pretraining")
        }
        pretraining = 0.0 if teacher else float(3.0 * flops_per_token(n_t[i], b.flops) * d_t[i])
        rows.append(
            {
                **head,
                "students": b.k,
                "student_loss": float(l_s[i]),
                "supervised_loss": float(l_sup[i]),
                "teacher_loss": float(l_t[i]),
                "teacher_params": float(n_t[i]) if known else None,
                "teacher_tokens": float(d_t[i]) if known else None,
                "teacher_given": teacher is not None,
                "student_tokens": float(d_s[i]),
                "supervised_tokens": float(d_sup[i]),
                "compute_shares": shares,
                "compute_used": total / head["compute"],
                "teacher_pretraining_flops": pretraining,
                "verdict": "distil" if l_s[i] < l_sup[i] else "train alone",
            }
        )
        rows[-1]["warnings"] = plan_warnings(rows[-1], b.bounds)
    return rows
