"""Bootstrap over runs: how sure a fit is (the paper: 4096 resamples, 90% intervals).

Each resample draws n runs with replacement, which is the same as weighting every run
by how often it was drawn. All resamples are therefore one batched problem: a (B, n)
weight table, one row of parameters per resample and start, solved together by the
batched L-BFGS of optim.py (vectorised over resamples, using every core torch has).
Each resample starts from the best few optima of the full fit rather than the whole
grid: the resampled objectives are close to the full one, and a full grid per resample
would cost B times the fit. The resamples are solved in the main fit's box: an exponent
the resampled runs do not pin down would otherwise run off, and a few such resamples
would set the interval ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kdlab.laws.forms import LawSpec
from kdlab.laws.objective import HuberObjective
from kdlab.laws.optim import lbfgs_batched
from kdlab.laws.samples import encode_samples


def bootstrap_intervals(
    spec: LawSpec,
    make_objective: Callable[[np.ndarray], HuberObjective],
    n_runs: int,
    starts: Sequence[np.ndarray],
    resamples: int,
    level: float = 0.9,
    seed: int = 0,
    block: int = 512,
    max_iter: int = 500,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
) -> dict[str, Any]:
    """Percentile intervals of every coefficient over ``resamples`` bootstrap refits.

    Returns {"intervals": {name: [lo, hi]}, "interval_level", "bootstrap": {...}} ready
    to merge into a fit document; the per-resample coefficients are summarised by their
    median and standard deviation, and kept (``samples``, see kdlab.laws.samples) for
    intervals on what is computed from the law. ``bounds`` is the main fit's box.
    """
    if not 0 < level < 1:
        raise ValueError(f"The interval level must lie between 0 and 1, not {level}.")
    rng = np.random.default_rng(seed)
    x0 = np.asarray(starts, dtype=float)
    k = len(x0)
    raws: list[np.ndarray] = []
    objectives: list[np.ndarray] = []
    for lo in range(0, resamples, block):
        b = min(block, resamples - lo)
        weights = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=b).astype(float)
        objective = make_objective(weights)
        x_start = torch.as_tensor(np.repeat(x0[None], b, axis=0).reshape(b * k, -1))
        rows = torch.arange(b * k) // k
        x, f, _ = lbfgs_batched(objective, x_start, rows=rows, max_iter=max_iter, bounds=bounds)
        f = f.reshape(b, k)
        best = torch.argmin(torch.nan_to_num(f, nan=float("inf")), dim=1)
        pick = torch.arange(b) * k + best
        raws.append(x[pick].numpy())
        objectives.append(f[torch.arange(b), best].numpy())
    raw = np.concatenate(raws)
    obj = np.concatenate(objectives)
    ok = np.isfinite(obj) & np.all(np.isfinite(raw), axis=1)
    coefs = [spec.to_coefficients(r) for r in raw[ok]]
    names = [n for n in spec.coefficient_names if n not in spec.fixed]
    q_lo, q_hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    intervals, median, std = {}, {}, {}
    for name in names:
        vals = np.array([c[name] for c in coefs])
        intervals[name] = [float(np.percentile(vals, q_lo)), float(np.percentile(vals, q_hi))]
        median[name] = float(np.median(vals))
        std[name] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {
        "intervals": intervals,
        "interval_level": level,
        "bootstrap": {
            "resamples": int(resamples),
            "failed": int((~ok).sum()),
            "seed": seed,
            "method": "percentile, resampling runs with replacement",
            "starts_per_resample": k,
            "median": median,
            "std": std,
            "samples": encode_samples(names, np.array([[c[n] for n in names] for c in coefs])),
        },
    }
