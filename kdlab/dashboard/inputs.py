"""The dashboard's fields, read and checked one by one, and the budget in three units.

The page sends its fields as text (what a person typed: ``198M``, ``1e21``, ``2.5``);
each is read here, and a field that cannot be used raises ``FieldError``: one sentence,
and the field to show it beside. The same fields, as a URL query, make the link that
reopens a plan, so every field has a plain name and a default.

The budget may be FLOPs, GPU-hours or money. A GPU-hour delivers peak x MFU x 3600
FLOPs (the accelerator's dense bf16 peak from kdlab.accelerators, the model FLOPs
utilisation a run reaches), and costs the price per GPU-hour.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdlab.accelerators import ACCELERATORS
from kdlab.laws.cli import number
from kdlab.laws.io import LawInputError

DEFAULT_MFU = 40.0  # percent; what large dense training runs commonly reach in bf16
DEFAULTS: dict[str, str] = {
    "laws": "paper",  # paper | file | db
    "fit": "",  # a fit JSON (laws=file)
    "db": "",  # a run database URL (laws=db)
    "bootstrap": "100",  # resamples of a fit made from the run database
    "fit_options": "",  # more kdlab fit options for it, e.g. --kd-objective '...'
    "budget_unit": "flops",  # flops | gpu_hours | money
    "budget": "1e21",
    "gpu": "h100-80gb",
    "mfu": "",  # percent; empty: measured in the run database, else DEFAULT_MFU
    "price": "2.5",  # per GPU-hour
    "currency": "$",
    "teacher": "train",  # train | exists
    "teacher_kind": "optimal",  # exists: optimal (any size) | loss | size
    "teacher_loss": "2.1",
    "teacher_params": "1B",
    "teacher_tokens": "20B",
    "logits": "1",  # 1: the teacher's logits are computed on the student's tokens
    "students": "1",  # K students share the teacher
    "student_by": "size",  # size | target
    "student": "198M",
    "target": "2.45",
}
CHOICES = {
    "laws": ("paper", "file", "db"),
    "budget_unit": ("flops", "gpu_hours", "money"),
    "teacher": ("train", "exists"),
    "teacher_kind": ("optimal", "loss", "size"),
    "logits": ("0", "1"),
    "student_by": ("size", "target"),
}


class FieldError(LawInputError):
    """A field that cannot be used: ``field`` names it, the message is one sentence."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Inputs:
    """The checked fields (``fields`` keeps them as text, for the link)."""

    fields: dict[str, str]
    budget_value: float
    mfu: float  # fraction
    price: float
    students: int
    student: float | None  # N_S, or None when a target loss picks it
    target: float | None
    teacher_loss: float | None
    teacher_params: float | None
    teacher_tokens: float | None

    @property
    def scenario(self) -> str:
        """The paper's scenario the answers to 'teacher?' and 'logits?' describe."""
        logits = self.fields["logits"] == "1"
        if self.fields["teacher"] == "exists":
            return "inference" if logits else "best"
        return "pretraining+inference" if logits else "pretraining"

    @property
    def given_teacher(self) -> bool:
        return self.fields["teacher"] == "exists" and self.fields["teacher_kind"] != "optimal"

    @property
    def peak(self) -> float:
        return ACCELERATORS[self.fields["gpu"]].bf16_peak_flops

    def flops_per_gpu_hour(self) -> float:
        return self.peak * self.mfu * 3600.0

    def budget_flops(self) -> float:
        unit = self.fields["budget_unit"]
        if unit == "flops":
            return self.budget_value
        hours = self.budget_value if unit == "gpu_hours" else self.budget_value / self.price
        return hours * self.flops_per_gpu_hour()

    def cost(self, flops: float) -> dict[str, float]:
        """FLOPs in the three units of the page."""
        hours = flops / self.flops_per_gpu_hour()
        return {"flops": flops, "gpu_hours": hours, "money": hours * self.price}


def _positive(fields: Mapping[str, str], name: str, what: str) -> float:
    text = fields[name].strip()
    told = what[0].upper() + what[1:]
    if not text:
        raise FieldError(name, f"Enter {what}.")
    try:
        value = float(number(text))
    except argparse.ArgumentTypeError as err:
        if "positive" in str(err):  # a number, but zero or negative
            raise FieldError(name, f"{told} must be a positive number, not {text}.") from None
        raise FieldError(name, f"{told} must be a number, not {text!r}.") from None
    if not value > 0 or value == float("inf"):
        raise FieldError(name, f"{told} must be a positive number, not {text}.")
    return value


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, bool):  # a checkbox sent as JSON
        return "1" if value else "0"
    return str(value)


def read_inputs(raw: Mapping[str, Any], default_mfu: float | None = None) -> Inputs:
    """The page's fields (missing ones take DEFAULTS) -> Inputs, or a FieldError.

    ``default_mfu`` (a fraction) replaces DEFAULT_MFU when the MFU field is empty: what
    the run database measured.
    """
    fields = {k: _text(raw.get(k), v) for k, v in DEFAULTS.items()}
    for name, allowed in CHOICES.items():
        if fields[name] not in allowed:
            raise FieldError(
                name, f"{name} must be one of {', '.join(allowed)}, not {fields[name]!r}."
            )
    if fields["gpu"] not in ACCELERATORS:
        raise FieldError(
            "gpu", f"Unknown GPU {fields['gpu']!r}; choose one of {', '.join(ACCELERATORS)}."
        )
    what = {
        "flops": "the budget in FLOPs",
        "gpu_hours": "the budget in GPU-hours",
        "money": "the budget in money",
    }
    budget = _positive(fields, "budget", what[fields["budget_unit"]])
    if fields["mfu"].strip():
        mfu = _positive(fields, "mfu", "the MFU (percent of peak)") / 100.0
        if mfu > 1:
            raise FieldError(
                "mfu", f"The MFU is a percentage of the peak, at most 100, not {fields['mfu']}."
            )
    else:
        mfu = default_mfu if default_mfu else DEFAULT_MFU / 100.0
    price = _positive(fields, "price", "the price per GPU-hour")
    try:
        students = int(fields["students"].strip())
    except ValueError:
        students = 0
    if students < 1:
        raise FieldError(
            "students",
            "The number of students must be a whole number of at least 1, not "
            f"{fields['students']!r}.",
        )
    by_size = fields["student_by"] == "size"
    student = _positive(fields, "student", "the student's size (parameters)") if by_size else None
    target = None if by_size else _positive(fields, "target", "the target loss")
    kind = fields["teacher_kind"] if fields["teacher"] == "exists" else "optimal"
    teacher_loss = (
        _positive(fields, "teacher_loss", "the teacher's loss") if kind == "loss" else None
    )
    sized = kind == "size"
    teacher_params = _positive(fields, "teacher_params", "the teacher's size") if sized else None
    teacher_tokens = _positive(fields, "teacher_tokens", "the teacher's tokens") if sized else None
    if kind == "loss" and fields["logits"] == "1":
        raise FieldError(
            "teacher_loss",
            "Counting the teacher's logits needs its size: give its size and tokens, or "
            "untick 'logits computed' if they are already stored.",
        )
    return Inputs(
        fields=fields,
        budget_value=budget,
        mfu=mfu,
        price=price,
        students=students,
        student=student,
        target=target,
        teacher_loss=teacher_loss,
        teacher_params=teacher_params,
        teacher_tokens=teacher_tokens,
    )
