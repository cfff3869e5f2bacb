"""Vectorised minimisers for the planner: many small smooth problems solved at once.

The planner's problems (kdlab.laws.plan) have two or one variables in log space, are
smooth, cheap to evaluate on arrays, and come in batches (budgets along a curve,
bootstrap resamples, student sizes). SciPy's optimisers take one problem at a time
through Python callbacks; these take S searches at once and evaluate every candidate
point of every search in one array call. A search reports inf where a point is
infeasible. ``f(points, i)`` always maps the (s, M, d) points of the searches ``i`` to
(s, M) values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FINAL_STEP = 1e-9  # pattern search ends below this step (log space: 1e-9 relative)


def pattern_search(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    step: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    final_step: float = FINAL_STEP,
    max_rounds: int = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine S minima of ``f`` from the points ``x`` (S, d), each within [lo, hi] (S, d).

    Each round evaluates a 5^d grid of the current step around each point and moves to
    its best point if that is better by more than rounding (so values never rise). The
    step is quartered when the point stays (the minimum is within half a step of it),
    halved when the best point is an inner one, and doubled when it is on the grid's
    edge: the minimum lies further on, perhaps along a valley the grid's axes cross at
    an angle. A search ends when its step falls below ``final_step``.
    """
    d = x.shape[1]
    ticks = np.arange(-2, 3, dtype=float)
    offsets = np.stack(np.meshgrid(*[ticks] * d, indexing="ij"), -1).reshape(-1, d)
    edge = np.abs(offsets).max(axis=1) == 2
    centre = len(offsets) // 2
    x, step = x.copy(), np.asarray(step, dtype=float).copy()
    lo, hi = np.broadcast_to(lo, x.shape), np.broadcast_to(hi, x.shape)
    value = np.full(len(x), np.inf)
    for _ in range(max_rounds):
        i = np.nonzero(step >= final_step)[0]
        if not len(i):
            break
        pts = np.clip(x[i, None, :] + step[i, None, None] * offsets, lo[i, None], hi[i, None])
        vals = f(pts, i)
        vals = np.where(np.isnan(vals), np.inf, vals)
        best = np.argmin(vals, axis=1)
        # stay unless clearly better: ties at rounding level would walk the point away
        here, there = vals[:, centre], vals[np.arange(len(i)), best]
        with np.errstate(invalid="ignore"):  # inf - inf where the point is infeasible
            better = (there < here - 1e-14 * np.abs(here)) | (np.isinf(here) & np.isfinite(there))
        best = np.where(better, best, centre)
        x[i] = pts[np.arange(len(i)), best]
        value[i] = vals[np.arange(len(i)), best]
        step[i] *= np.where(edge[best], 2.0, np.where(best == centre, 0.25, 0.5))
    return x, value


def newton_2d(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    lo: float,
    hi: float,
    iterations: int = 8,
) -> np.ndarray:
    """Newton steps on the 2-D searches ``x`` (S, 2), with finite-difference derivatives
    from a 3 x 3 stencil, each step tried at a few lengths (and none) so that no search
    gets worse. Newton's step follows a valley the pattern search would crawl along;
    where the curvature is not positive it falls back to a short step downhill."""
    o = np.array([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)])
    lengths = np.array([0.0, 1.0, 0.5, 0.25, 0.1])
    every = np.arange(len(x))
    for it in range(iterations):
        h = 1e-2 if it < iterations // 2 else 1e-3  # coarse curvature first, then fine
        v = f(np.clip(x[:, None, :] + h * o, lo, hi), every).reshape(-1, 3, 3)
        with np.errstate(all="ignore"):
            g = np.stack([v[:, 2, 1] - v[:, 0, 1], v[:, 1, 2] - v[:, 1, 0]], 1) / (2 * h)
            hxx = (v[:, 2, 1] - 2 * v[:, 1, 1] + v[:, 0, 1]) / h**2
            hyy = (v[:, 1, 2] - 2 * v[:, 1, 1] + v[:, 1, 0]) / h**2
            hxy = (v[:, 2, 2] - v[:, 2, 0] - v[:, 0, 2] + v[:, 0, 0]) / (4 * h**2)
            det = hxx * hyy - hxy**2
            newton = -np.stack([hyy * g[:, 0] - hxy * g[:, 1], hxx * g[:, 1] - hxy * g[:, 0]], 1)
            downhill = -0.5 * g / np.linalg.norm(g, axis=1, keepdims=True)
            step = np.where(((hxx > 0) & (det > 0))[:, None], newton / det[:, None], downhill)
        step = np.where(np.isfinite(step), step, 0.0)
        length = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, 3.0 / np.maximum(length, 1e-300))  # at most 3 in log space
        trials = np.clip(x[:, None, :] + lengths[None, :, None] * step[:, None, :], lo, hi)
        tv = f(trials, every)
        x = trials[every, np.argmin(np.where(np.isnan(tv), np.inf, tv), axis=1)]
    return x


def local_minima(loss: np.ndarray, n: int) -> np.ndarray:
    """``loss`` (P, n * n) on an n x n grid, inf except where no neighbour is lower."""
    grid = np.pad(loss.reshape(-1, n, n), ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
    centre = grid[:, 1:-1, 1:-1]
    lowest = np.ones_like(centre, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                lowest &= centre <= grid[:, 1 + di : n + 1 + di, 1 + dj : n + 1 + dj]
    return np.where(lowest, centre, np.inf).reshape(loss.shape)
