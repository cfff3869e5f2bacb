"""Published coefficients of Busbridge et al. 2025: its supervised law (Eq. 1), its
distillation law and its compute accounting.

Kept as plain data so ``--coefficients paper`` and a fit JSON go down the same path.
"""

from __future__ import annotations

from typing import Any

PAPER_SUPERVISED: dict[str, float] = {
    "E": 1.220,
    "A": 3355.0,
    "B": 18186.0,
    "alpha": 0.408,
    "beta": 0.431,
    "gamma": 0.452,
}

PAPER_SUPERVISED_CI90: dict[str, tuple[float, float]] = {
    "E": (1.190, 1.247),
    "A": (3346.0, 3360.0),
    "B": (18157.0, 18236.0),
    "alpha": (0.405, 0.411),
    "beta": (0.428, 0.433),
    "gamma": (0.442, 0.461),
}

PAPER_DISTILLATION: dict[str, float] = {
    "A": 2243.0,
    "B": 24181.0,
    "alpha": 0.321,
    "beta": 0.637,
    "gamma": 0.764,
    "c0": 2.549,
    "c1": 522.6,
    "f1": 0.090,
    "d1": 1.315,
}

PAPER_DISTILLATION_CI90: dict[str, tuple[float, float]] = {
    "A": (2227.0, 2255.0),
    "B": (24084.0, 24266.0),
    "alpha": (0.319, 0.324),
    "beta": (0.634, 0.640),
    "gamma": (0.732, 0.788),
    "c0": (2.425, 2.615),
    "c1": (522.6, 522.6),
    "f1": (0.088, 0.093),
    "d1": (1.302, 1.327),
}

# The paper's F(N) settings (its FLOP estimate and model ladder): aspect ratio 128,
# omega 12, context 4096, vocabulary 32768.
PAPER_FLOPS: dict[str, float] = {"n_ctx": 4096, "n_vocab": 32768, "rho": 128.0, "omega": 12.0}


def paper_fit_document() -> dict[str, Any]:
    """The published fits in the shape of a distillation fit JSON (see fit.py)."""
    return {
        "law": "distillation",
        "form": "distillation",
        "source": "paper",
        "coefficients": dict(PAPER_DISTILLATION),
        "intervals": {k: list(v) for k, v in PAPER_DISTILLATION_CI90.items()},
        "interval_level": 0.9,
        "n_points": 697,
        "supervised": {
            "law": "supervised",
            "form": "paper",
            "coefficients": dict(PAPER_SUPERVISED),
            "intervals": {k: list(v) for k, v in PAPER_SUPERVISED_CI90.items()},
            "interval_level": 0.9,
            "n_points": 73,
        },
        "flops": dict(PAPER_FLOPS),
    }
