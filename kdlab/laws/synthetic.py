"""Synthetic runs drawn from the published laws on the paper's experiment grid.

No run data came with the paper, so the fitting code is checked by recovery: draw
losses from the published coefficients on a grid shaped like the paper's experiments, add noise,
fit, and compare with the truth. Used by the tests and ``benchmarks/fit_speed.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdlab.laws.forms import distillation_loss, supervised_loss
from kdlab.laws.published import PAPER_DISTILLATION, PAPER_SUPERVISED

# the paper's model ladder, non-embedding parameters
LADDER = np.array(
    [103e6, 143e6, 198e6, 266e6, 340e6, 546e6, 975e6, 1.82e9, 2.72e9, 4.82e9, 7.75e9, 12.6e9]
)
BUDGETS = np.array([3e19, 1e20, 3e20, 1e21])
FIXED_M_TEACHERS = LADDER[5:]  # 546M .. 12.6B at M = 20
STUDENTS = LADDER[:8]  # 103M .. 1.82B
STUDENT_M = (20, 40, 80, 160, 320)


def _isoflop(budget: float, sizes: np.ndarray, m_lo: float = 2.0, m_hi: float = 2000.0):
    """(N, D) along one IsoFLOP profile, C = 6 N D, keeping sensible tokens per parameter."""
    d = budget / (6.0 * sizes)
    keep = (d / sizes >= m_lo) & (d / sizes <= m_hi)
    return sizes[keep], d[keep]


def paper_like_distillation_grid() -> pd.DataFrame:
    """(N_S, D_S, N_T, D_T) of the paper's three experiment families, without losses."""
    rows: list[tuple[float, float, float, float, str]] = []
    for n_t in FIXED_M_TEACHERS:  # 1. fixed-M teachers x IsoFLOP students
        for c in BUDGETS:
            for n_s, d_s in zip(*_isoflop(c, LADDER[:9]), strict=True):
                rows.append((n_s, d_s, n_t, 20 * n_t, "fixed-M teacher x IsoFLOP student"))
    for c in BUDGETS:  # 2. IsoFLOP teachers x fixed-M students
        for n_t, d_t in zip(*_isoflop(c, LADDER), strict=True):
            for n_s in STUDENTS:
                rows.append((n_s, 20 * n_s, n_t, d_t, "IsoFLOP teacher x fixed-M student"))
    for n_t in FIXED_M_TEACHERS:  # 3. fixed-M teachers x fixed-M students
        for n_s in STUDENTS:
            for m in STUDENT_M:
                rows.append((n_s, m * n_s, n_t, 20 * n_t, "fixed-M teacher x fixed-M student"))
    return pd.DataFrame(rows, columns=["N_S", "D_S", "N_T", "D_T", "family"])


def paper_like_distillation_runs(
    n_runs: int | None = 700, noise: float = 0.01, seed: int = 0
) -> pd.DataFrame:
    """Student runs with losses from the published laws and multiplicative noise.

    L_T is the published supervised law at the teacher's (N_T, D_T); the student's loss
    is the published distillation law times exp(noise * standard normal). The noise-free
    value is kept in ``loss_true``. With ``n_runs``, the grid is subsampled (or repeated
    with fresh noise) to exactly that many runs.
    """
    rng = np.random.default_rng(seed)
    grid = paper_like_distillation_grid()
    if n_runs is not None:
        idx = rng.choice(len(grid), size=n_runs, replace=n_runs > len(grid))
        grid = grid.iloc[np.sort(idx)].reset_index(drop=True)
    grid["L_T"] = supervised_loss(grid.N_T, grid.D_T, PAPER_SUPERVISED)
    true = distillation_loss(grid.N_S, grid.D_S, grid.L_T, PAPER_DISTILLATION, PAPER_SUPERVISED)
    grid["loss_true"] = true
    grid["loss"] = true * np.exp(noise * rng.standard_normal(len(grid)))
    return grid


def paper_like_supervised_runs(noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """Supervised runs (M = 20 ladder, long runs, IsoFLOP profiles) from the published law."""
    rng = np.random.default_rng(seed)
    pts = [(n, 20 * n) for n in LADDER]
    pts += [(n, m * n) for n in LADDER[:6] for m in (80, 320)]
    for c in BUDGETS:
        pts += list(zip(*_isoflop(c, LADDER), strict=True))
    df = pd.DataFrame(pts, columns=["N", "D"])
    df["loss_true"] = supervised_loss(df.N, df.D, PAPER_SUPERVISED)
    df["loss"] = df.loss_true * np.exp(noise * rng.standard_normal(len(df)))
    return df
