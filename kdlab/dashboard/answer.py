"""What the page shows for one set of inputs, all of it computed by kdlab.laws' planner.

For the situation the inputs describe (teacher to train or existing, logits computed or
stored: one of the paper's four scenarios) the answer holds the plan, the same plan in
every other scenario for comparison, the loss against budget of distilling and of
training alone with their crossover, the verdict's robustness over the fit's bootstrap
resamples, and the costs in FLOPs, GPU-hours and money. Nothing here plans: every number
comes from plan, plan_batch, loss_curve, crossover, smallest_student or robustness,
the functions ``kdlab plan`` uses.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import time
from collections.abc import Iterator
from typing import Any

from kdlab.dashboard.inputs import FieldError, Inputs
from kdlab.dashboard.laws import Laws
from kdlab.laws.cli import PLAN_JSON_KEYS
from kdlab.laws.compute import SCENARIOS
from kdlab.laws.flags import source_warnings
from kdlab.laws.io import LawInputError
from kdlab.laws.plan import Teacher, plan
from kdlab.laws.tradeoffs import crossover, loss_curve, robustness, smallest_student

CURVE_TOKENS_PER_PARAM = (0.1, 1e5)  # kdlab plan --crossover's range, widened to the budget
MEMO_SIZE = 64  # curves kept per set of laws


@contextlib.contextmanager
def blame(field: str) -> Iterator[None]:
    """Planner errors inside the block are shown beside ``field``."""
    try:
        yield
    except FieldError:
        raise
    except LawInputError as exc:
        raise FieldError(field, str(exc)) from None


def _teacher(inputs: Inputs) -> Teacher | None:
    if not inputs.given_teacher:
        return None
    return Teacher(inputs.teacher_loss, inputs.teacher_params, inputs.teacher_tokens)


def _shown_plan(p: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """A plan with its cost in the page's three units, per student and for all K."""
    per_student = p["compute"] * p["compute_used"]
    return {
        **p,
        "advantage": p["supervised_loss"] - p["student_loss"],
        "cost": inputs.cost(per_student),
        "cost_all_students": inputs.cost(per_student * p["students"]),
    }


def _command(laws: Laws, p: dict[str, Any]) -> str:
    """The command line that prints the same plan (or, for a given teacher, the same
    student loss)."""
    head = f"kdlab {{}} --coefficients {shlex.quote(laws.spec)}"
    if p["teacher_given"]:
        teacher = (
            f"--teacher-params {p['teacher_params']!r} --teacher-tokens {p['teacher_tokens']!r}"
            if p["teacher_params"] is not None
            else f"--teacher-loss {p['teacher_loss']!r}"
        )
        return (
            f"{head.format('predict')} --n {p['student_params']!r} "
            f"--d {p['student_tokens']!r} {teacher} --json"
        )
    return (
        f"{head.format('plan')} --student {p['student_params']!r} --compute {p['compute']!r} "
        f"--scenario {p['scenario']} --students {p['students']} --json"
    )


def _curve(
    laws: Laws,
    student: float,
    scenario: str,
    k: int,
    teacher: Teacher | None,
    span: tuple[float, float],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Loss against budget and the crossover; kept with the laws, since changing only
    the budget (or its units) leaves them as they are."""
    key = (student, scenario, k, teacher, span)
    if key not in laws.memo:
        with blame("budget"):
            curve = loss_curve(laws.coefs, student, scenario, k, teacher, span)
            cross = crossover(laws.coefs, student, scenario, k, teacher=teacher, curve=curve)
        if len(laws.memo) >= MEMO_SIZE:
            laws.memo.clear()
        laws.memo[key] = curve, cross
    return laws.memo[key]


def answer(inputs: Inputs, laws: Laws) -> dict[str, Any]:
    """Everything the page shows for ``inputs``; FieldError names the field at fault."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    coefs, k, scenario = laws.coefs, inputs.students, inputs.scenario
    teacher = _teacher(inputs)
    compute = inputs.budget_flops()
    student_note = "as entered"
    if inputs.student is None:
        with blame("target"):
            found = smallest_student(coefs, inputs.target, compute, scenario, k, teacher)
        student = found["student_params"]
        student_note = f"the smallest reaching a loss of {inputs.target:g}"
    else:
        student = inputs.student
    with blame("budget"):
        chosen = plan(coefs, student, compute, scenario, k, teacher=teacher)
    rows = [{"label": "your situation", "selected": True, **_shown_plan(chosen, inputs)}]
    for name, sc in SCENARIOS.items():  # every scenario with the best teacher for it
        if name == scenario and teacher is None:
            continue
        label = f"{name}: {sc.meaning}"
        try:
            other = plan(coefs, student, compute, name, k)
        except LawInputError as exc:
            rows.append({"label": label, "scenario": name, "selected": False, "error": str(exc)})
            continue
        rows.append({"label": label, "selected": False, **_shown_plan(other, inputs)})
    m = chosen["supervised_tokens"] / student
    # widened to whole decades around a budget outside it, so that nearby budgets share
    # one curve
    lo, hi = CURVE_TOKENS_PER_PARAM
    span = (
        min(lo, 10 ** math.floor(math.log10(m / 3))),
        max(hi, 10 ** math.ceil(math.log10(m * 3))),
    )
    curve, cross = _curve(laws, student, scenario, k, teacher, span)
    level = (laws.intervals or {}).get("level") or 0.9
    if laws.resamples:
        robust: dict[str, Any] = robustness(laws.resamples, chosen, teacher, level)
        robust["note"] = laws.resamples_note
    else:
        robust = {"unavailable": laws.resamples_note}
    return {
        "laws": laws.describe(),
        "scenario": scenario,
        "scenario_meaning": SCENARIOS[scenario].meaning,
        "teacher_given": teacher is not None,
        "budget": inputs.cost(compute),
        "per_gpu_hour": inputs.flops_per_gpu_hour(),
        "mfu": inputs.mfu,
        "student": {"params": student, "how": student_note},
        "rows": rows,
        # as `kdlab plan --json` prints it: the fit's own warnings before the plan's
        "plan_json": {
            **{key: chosen[key] for key in PLAN_JSON_KEYS},
            "warnings": source_warnings(laws.coefs) + chosen.get("warnings", []),
        },
        "command": _command(laws, chosen),
        "curve": {
            "compute": [r["compute"] for r in curve],
            "distil": [r.get("student_loss") for r in curve],
            "alone": [r.get("supervised_loss") for r in curve],
            "budget": compute,
            "crossovers": cross["crossovers"],
            "note": cross["note"],
        },
        "robustness": robust,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.thread_time() - start_cpu,  # this request's own work
    }
