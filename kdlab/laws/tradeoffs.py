"""Questions answered by many plans at once: loss against budget, the crossover, the
smallest student for a target loss, and how a verdict holds over bootstrap resamples.

Each is a batch of plans (kdlab.laws.plan.plan_batch) over budgets, student sizes or
resampled coefficients, narrowed down where the answer changes; nothing here plans by
itself. ``kdlab plan --crossover`` and ``kdlab dashboard`` use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kdlab.laws.compute import flops_per_token, get_scenario
from kdlab.laws.forms import supervised_loss
from kdlab.laws.io import PLAN_BOUNDS, LawInputError
from kdlab.laws.plan import (
    Coefficients,
    Teacher,
    check_positive,
    plan_batch,
    require_distillation,
)


def _budgets(
    coefs: Coefficients, student: float, tokens_per_param: tuple[float, float], points: int
) -> np.ndarray:
    """Budgets that give the student alone M = D / N_S log-spaced over
    ``tokens_per_param``, clipped to the planner's bounds on D."""
    bounds = coefs.get("bounds", PLAN_BOUNDS)
    d_lo = max(bounds[0], tokens_per_param[0] * student)
    d_hi = min(bounds[1], tokens_per_param[1] * student)
    if d_lo >= d_hi:
        raise LawInputError(f"No budget within the planner's bounds for a {student:.3g} student.")
    return 3 * float(flops_per_token(student, coefs["flops"])) * np.geomspace(d_lo, d_hi, points)


def loss_curve(
    coefs: Coefficients,
    student: float,
    scenario: str = "best",
    students: int = 1,
    teacher: Teacher | None = None,
    tokens_per_param: tuple[float, float] = (0.1, 1e5),
    points: int = 41,
) -> list[dict[str, Any]]:
    """Plans over budgets that give the student alone M = D / N_S from
    ``tokens_per_param[0]`` to ``[1]`` (log-spaced, within the planner's bounds): the
    distilled and the alone loss against compute. Rows as plan_batch's."""
    require_distillation(coefs)
    check_positive(student=student)
    budgets = _budgets(coefs, student, tokens_per_param, points)
    return plan_batch(coefs, student, list(budgets), scenario, students, teacher=teacher)


def crossover(
    coefs: Coefficients,
    student: float,
    scenario: str = "best",
    students: int = 1,
    teacher_loss: float | None = None,
    tokens_per_param: tuple[float, float] = (0.1, 1e5),
    points: int = 41,
    teacher: Teacher | None = None,
    curve: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The compute at which training the student alone overtakes distillation.

    Scans the loss_curve of the same arguments (or ``curve``, when it is already at
    hand) and narrows down every change of the winner (``_crossings``). With
    ``teacher_loss`` the teacher is fixed and already paid for (the paper's fixed-teacher
    comparison: same student tokens, teacher costs not counted); with ``teacher`` it is
    that existing teacher in ``scenario`` (best or inference); otherwise each budget is
    planned compute-optimally in ``scenario``. ``crossover_compute`` is the first budget
    above which training alone wins; ``crossovers`` lists every change.
    """
    if teacher_loss is not None:
        teacher, scenario = Teacher(loss=teacher_loss), "best"
    if curve is None:
        curve = loss_curve(coefs, student, scenario, students, teacher, tokens_per_param, points)
    sc = get_scenario(scenario)
    f_s = float(flops_per_token(student, coefs["flops"]))

    def gaps(log_computes: np.ndarray, near: np.ndarray) -> np.ndarray:
        """L_S - L_alone at the budgets exp(log_computes), each searched from the teacher
        ``near`` it; NaN where no teacher fits."""
        budgets = list(np.exp(log_computes))
        given = teacher is not None
        rows = plan_batch(
            coefs,
            student,
            budgets,
            sc.name,
            students,
            teacher=teacher,
            near=None if given else near,
        )
        return np.array([_gap(r) for r in rows])

    log_c = np.log([r["compute"] for r in curve])
    gap = np.array([_gap(r) for r in curve])
    result: dict[str, Any] = {
        "scenario": "fixed teacher" if teacher is not None else sc.name,
        "teacher_loss": None if teacher is None else teacher.loss,
        "student_params": float(student),
        "students": students,
        "compute_range": [float(np.exp(log_c[0])), float(np.exp(log_c[-1]))],
        "crossover_compute": None,
        "crossovers": [],
    }
    changes = np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0)[0]
    brackets = [(log_c[i], log_c[i + 1], gap[i], gap[i + 1]) for i in changes]
    near = np.array([_teacher_of(curve[i]) for i in changes], dtype=float)
    for lc, (_, _, _, after) in zip(_crossings(gaps, brackets, near), brackets, strict=True):
        c = float(np.exp(lc))
        d = c / (3.0 * f_s)
        winner = "train alone" if after >= 0 else "distil"
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
        better = "distillation" if np.all(gap[np.isfinite(gap)] < 0) else "training alone"
        result["note"] = f"{better} is better over the whole range"
    elif result["crossover_compute"] is not None:
        result["note"] = "training alone wins above crossover_compute (see crossovers)"
    else:
        result["note"] = "distillation only overtakes training alone as compute grows"
    return result


def _crossings(
    gaps: Callable[[np.ndarray, np.ndarray], np.ndarray],
    brackets: list[tuple[float, float, float, float]],
    near: np.ndarray,
    rounds: int = 4,
    splits: int = 8,
) -> list[float]:
    """Where ``gaps`` changes sign in each bracket (x0, x1, gap0, gap1): every round
    plans ``splits`` budgets inside every bracket at once, searched from the teacher
    ``near`` it (one per bracket), and keeps the part where the sign changes (9^4 = 6561
    times narrower after 4 rounds); then the gap, smooth at that scale, is interpolated
    linearly to zero."""
    for _ in range(rounds if brackets else 0):
        inner = np.array([np.linspace(a, b, splits + 2)[1:-1] for a, b, _, _ in brackets])
        values = gaps(inner.ravel(), np.repeat(near, splits, axis=0)).reshape(inner.shape)
        narrowed = []
        for (a, b, ga, gb), xs, ys in zip(brackets, inner, values, strict=True):
            x, y = [a, *xs, b], [ga, *ys, gb]
            j = next((j for j in range(len(x) - 1) if np.sign(y[j]) * np.sign(y[j + 1]) < 0), None)
            narrowed.append((a, b, ga, gb) if j is None else (x[j], x[j + 1], y[j], y[j + 1]))
        brackets = narrowed
    return [float(a - ga * (b - a) / (gb - ga)) for a, b, ga, gb in brackets]


def _teacher_of(row: Mapping[str, Any]) -> tuple[float, float]:
    """A plan row's teacher (NaN for a row without one)."""
    if "error" in row or row["teacher_params"] is None:
        return np.nan, np.nan
    return row["teacher_params"], row["teacher_tokens"]


def _gap(row: Mapping[str, Any]) -> float:
    """L_S - L_alone of a plan row (NaN for a row the planner could not solve)."""
    return row["student_loss"] - row["supervised_loss"] if "error" not in row else np.nan


def _best_loss(row: Mapping[str, Any]) -> float:
    """The loss of the better option of a plan row: distil or train alone."""
    return min(row["student_loss"], row["supervised_loss"]) if "error" not in row else np.nan


def smallest_student(
    coefs: Coefficients,
    target_loss: float,
    compute: float,
    scenario: str,
    students: int = 1,
    teacher: Teacher | None = None,
    points: int = 17,
    rounds: int = 4,
    splits: int = 8,
) -> dict[str, Any]:
    """The smallest student whose better option (distil in ``scenario``, or train alone)
    reaches ``target_loss`` with ``compute`` FLOPs: the cheapest to serve. Returns its
    plan; a target below every size's loss is a one-sentence error.

    The loss of the better option against N_S at a fixed budget is U-shaped (small
    students lack capacity, large ones tokens), so the smallest size reaching the target
    is where it first crosses it: ``points`` sizes from the bounds' smallest to the
    largest the budget can train on the bounds' fewest tokens, then ``rounds`` times
    ``splits`` sizes inside the bracket (9^4 = 6561 times narrower).
    """
    require_distillation(coefs)
    check_positive(target_loss=target_loss, compute=compute)
    bounds = coefs.get("bounds", PLAN_BOUNDS)
    largest = min(bounds[1], max(compute / (6.0 * bounds[0]), 10 * bounds[0]))  # F(N) > 2N
    sizes = np.geomspace(bounds[0], largest, points)
    rows = plan_batch(coefs, list(sizes), compute, scenario, students, teacher=teacher)
    best = np.array([_best_loss(r) for r in rows])
    if not np.isfinite(best).any():
        raise LawInputError(rows[0]["error"])
    reached = np.nonzero(best <= target_loss)[0]
    if not len(reached):
        i = int(np.nanargmin(best))
        raise LawInputError(
            f"No student reaches a loss of {target_loss:g} with {compute:.3g} FLOPs: the "
            f"lowest is {best[i]:.4f}, at N_S = {sizes[i]:.3g}."
        )
    hit = rows[reached[0]]
    lo, hi = sizes[max(reached[0] - 1, 0)], sizes[reached[0]]
    for _ in range(rounds if reached[0] else 0):
        inner = np.geomspace(lo, hi, splits + 2)[1:-1]
        near = None if teacher is not None else _teacher_of(hit)
        rows = plan_batch(
            coefs, list(inner), compute, scenario, students, teacher=teacher, near=near
        )
        ok = np.nonzero(np.array([_best_loss(r) for r in rows]) <= target_loss)[0]
        if len(ok):
            hit, hi = rows[ok[0]], inner[ok[0]]
            lo = inner[ok[0] - 1] if ok[0] else lo
        else:
            lo = inner[-1]
    return hit


def robustness(
    resamples: Sequence[Coefficients],
    plan_row: Mapping[str, Any],
    teacher: Teacher | None = None,
    level: float = 0.9,
) -> dict[str, Any]:
    """How a plan's verdict and losses vary over the bootstrap resamples of its laws.

    Each resample plans the same student, budget, scenario and K again (each is
    optimal under its own coefficients, searched from the fit's own plan). Returns the
    share of the resamples that reach the same verdict, and the ``level`` percentile
    intervals of the distilled loss, the alone loss and their difference.
    """
    if not resamples:
        raise LawInputError("There are no bootstrap resamples to check the verdict with.")
    rows = plan_batch(
        list(resamples),
        plan_row["student_params"],
        plan_row["compute"],
        plan_row["scenario"],
        plan_row["students"],
        teacher=teacher,
        near=None if plan_row["teacher_given"] else _teacher_of(plan_row),
    )
    solved = [r for r in rows if "error" not in r]
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: Sequence[float]) -> list[float] | None:
        return [float(v) for v in np.percentile(values, q)] if len(values) else None

    same = sum(r["verdict"] == plan_row["verdict"] for r in solved)
    return {
        "resamples": len(rows),
        "unsolved": len(rows) - len(solved),
        "same_verdict": same,
        "share_same_verdict": same / len(solved) if solved else None,
        "interval_level": level,
        "student_loss_interval": interval([r["student_loss"] for r in solved]),
        "supervised_loss_interval": interval([r["supervised_loss"] for r in solved]),
        # what distillation gains over training alone (negative: it loses)
        "advantage_interval": interval([-_gap(r) for r in solved]),
    }
