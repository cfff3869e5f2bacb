"""Grids of starting points for the multi-start fits (the paper's fitting procedure).

A grid maps each raw parameter (see ``forms.LawSpec.params``) to its candidate values;
the starts are the Cartesian product. Raw parameters are logs for E, A, B, d1.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kdlab.laws.forms import LawSpec

_HALVES_TO_1_5 = [0.0, 0.5, 1.0, 1.5]

# The paper's supervised grid: log A, log B in {0..20 step 5}; log E in {-1..1.5 step 0.5};
# alpha, beta, gamma in {0, 0.5, 1, 1.5}. 9,600 starts (600 with gamma fixed to 1).
SUPERVISED_PAPER_GRID: dict[str, list[float]] = {
    "e": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5],
    "a": [0.0, 5.0, 10.0, 15.0, 20.0],
    "b": [0.0, 5.0, 10.0, 15.0, 20.0],
    "alpha": _HALVES_TO_1_5,
    "beta": _HALVES_TO_1_5,
    "gamma": _HALVES_TO_1_5,
}

# Epoch AI's Chinchilla replication (Besiroglu et al. 2024): a, b in {0..25 step 5},
# e in {-1..1 step 0.5}, alpha, beta in {0..2 step 0.5}: 4,500 starts. gamma (paper
# form only, not part of Epoch's grid) takes the paper's values.
SUPERVISED_EPOCH_GRID: dict[str, list[float]] = {
    "e": [-1.0, -0.5, 0.0, 0.5, 1.0],
    "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
    "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
    "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
    "beta": [0.0, 0.5, 1.0, 1.5, 2.0],
    "gamma": _HALVES_TO_1_5,
}

# The paper's distillation grid: 5 * 5 * 27 * 64 * 5 = 216,000 starts, of which the 54,000
# with f1 = 0 are undefined (the law divides by f1) and skipped.
DISTILLATION_PAPER_GRID: dict[str, list[float]] = {
    "a": [0.0, 5.0, 10.0, 15.0, 20.0],
    "b": [0.0, 5.0, 10.0, 15.0, 20.0],
    "alpha": [0.0, 0.5, 1.0],
    "beta": [0.0, 0.5, 1.0],
    "gamma": [0.0, 0.5, 1.0],
    "c0": _HALVES_TO_1_5,
    "c1": _HALVES_TO_1_5,
    "f1": _HALVES_TO_1_5,
    "log_d1": [-1.0, -0.5, 0.0, 0.5, 1.0],
}

NAMED = {
    ("supervised", "paper"): SUPERVISED_PAPER_GRID,
    ("supervised", "epoch"): SUPERVISED_EPOCH_GRID,
    ("distillation", "paper"): DISTILLATION_PAPER_GRID,
}


def resolve_grid(spec: LawSpec, grid: str | Mapping[str, Sequence[float]]) -> dict[str, list]:
    """A grid name (``paper``, ``epoch``), a JSON file, or a mapping -> the grid for spec."""
    if isinstance(grid, str):
        if (spec.law, grid) in NAMED:
            grid = NAMED[(spec.law, grid)]
        elif grid.endswith(".json") or Path(grid).is_file():
            try:
                grid = json.loads(Path(grid).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"Cannot read the grid file {grid}: {exc}.") from None
        else:
            names = sorted(g for law, g in NAMED if law == spec.law)
            raise ValueError(
                f"Unknown grid {grid!r} for the {spec.law} law: use {' or '.join(names)}, "
                "or a JSON file mapping each parameter to its start values."
            )
    missing = [p for p in spec.params if p not in grid]
    if missing:
        raise ValueError(
            f"The grid gives no start values for {', '.join(missing)} "
            f"(the {spec.form} form needs {', '.join(spec.params)})."
        )
    out = {p: [float(v) for v in np.atleast_1d(grid[p])] for p in spec.params}
    if any(len(v) == 0 for v in out.values()):
        raise ValueError("Every parameter of the grid needs at least one start value.")
    return out


def grid_starts(spec: LawSpec, grid: Mapping[str, Sequence[float]]) -> np.ndarray:
    """All starts of a grid as rows (S, P), columns in spec.params order."""
    return np.array(list(itertools.product(*(grid[p] for p in spec.params))), dtype=float)


def defined_starts(spec: LawSpec, starts: np.ndarray) -> np.ndarray:
    """Mask of starts where the law is defined (the distillation law needs f1 != 0)."""
    ok = np.all(np.isfinite(starts), axis=1)
    if "f1" in spec.params:
        ok &= starts[:, spec.params.index("f1")] != 0.0
    return ok
