"""Compute accounting of a distillation (the paper's teacher inference and pretraining terms).

    C = 3 F(N_S) D_S + F(N_T) * (delta_lgt * D_S + delta_pre * 3 D_T / K)

F(N) is the paper's forward FLOPs per token (kdlab.models.flops); the backward pass is
twice the forward. K students sharing one teacher's pretraining each pay 1/K of it
(beyond the paper, which has K = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kdlab.laws.io import LawInputError
from kdlab.models.flops import paper_flops_per_token


@dataclass(frozen=True)
class Scenario:
    """Which teacher costs count against the budget."""

    name: str
    delta_lgt: float  # teacher logits (one forward pass per student token)
    delta_pre: float  # teacher pretraining
    meaning: str


SCENARIOS: dict[str, Scenario] = {
    "best": Scenario("best", 0.0, 0.0, "teacher free and fully amortised; best L_T chosen"),
    "inference": Scenario("inference", 1.0, 0.0, "teacher exists; its logits must be computed"),
    "pretraining": Scenario(
        "pretraining", 0.0, 1.0, "teacher must be trained; logits stored and reused"
    ),
    "pretraining+inference": Scenario(
        "pretraining+inference", 1.0, 1.0, "one teacher trained for the student(s)"
    ),
}
_ALIASES = {
    "best-case": "best",
    "best_case": "best",
    "teacher-inference": "inference",
    "teacher_inference": "inference",
    "teacher-pretraining": "pretraining",
    "teacher_pretraining": "pretraining",
    "pretraining-inference": "pretraining+inference",
    "pretraining_inference": "pretraining+inference",
    "pretraining+inference": "pretraining+inference",
    "all": "pretraining+inference",
}


def get_scenario(name: str) -> Scenario:
    """A scenario by name (a few spellings accepted), or a one-sentence error."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SCENARIOS:
        raise LawInputError(f"Unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}.")
    return SCENARIOS[key]


def flops_per_token(n, flops: Mapping[str, float]) -> np.ndarray:
    """F(N) with the settings of a fit (n_ctx, n_vocab, rho, omega)."""
    return paper_flops_per_token(
        n,
        n_ctx=flops.get("n_ctx", 4096),
        n_vocab=flops.get("n_vocab", 32768),
        rho=flops.get("rho", 128.0),
        omega=flops.get("omega", 12.0),
    )


def compute_parts(
    n_s, d_s, n_t, d_t, scenario: Scenario, flops: Mapping[str, float], students: int = 1
) -> dict[str, np.ndarray]:
    """FLOPs of student training, teacher logits and (this student's share of) teacher
    pretraining, and their total."""
    f_s = flops_per_token(n_s, flops)
    f_t = flops_per_token(n_t, flops)
    student = 3.0 * f_s * np.asarray(d_s, dtype=float)
    logits = scenario.delta_lgt * f_t * np.asarray(d_s, dtype=float)
    pretraining = scenario.delta_pre * 3.0 * f_t * np.asarray(d_t, dtype=float) / students
    return {
        "student": student,
        "teacher_logits": logits,
        "teacher_pretraining": pretraining,
        "total": student + logits + pretraining,
    }


def supervised_tokens(n_s, compute, flops: Mapping[str, float]) -> np.ndarray:
    """Tokens the student alone trains on for the same compute: D = C / (3 F(N_S))."""
    return np.asarray(compute, dtype=float) / (3.0 * flops_per_token(n_s, flops))
