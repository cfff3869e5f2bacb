"""Multi-start minimisation of a Huber objective, all starts at once.

The paper (and the Chinchilla replications) run SciPy's L-BFGS-B from every point of a
grid of starts, one after another, with finite-difference gradients. Here the same
search is done as one batch: the objective of all S starts is a (S, n) torch table with
exact gradients (written out in objective.py, checked against autograd), so one batched
L-BFGS step costs about one pass over S x n residuals. The search runs in three stages:

1. screen: evaluate the objective at every start (chunked, no gradient, float32, which
   ranks starts as float64 does at a fifth of the cost) and keep the ``keep`` best
   finite ones (all of them when there are fewer);
2. batched L-BFGS (float64, exact gradients, Armijo backtracking that tries four step
   lengths per call) on the kept starts with successive halving: every ``round_iters``
   iterations the worse half of the still-running starts is dropped until
   ``final_keep`` remain, which then run to convergence or ``max_iter``;
3. polish: the best few distinct optima are refined with SciPy L-BFGS-B (analytic
   gradient, tight tolerances) and the best result is kept.

Stage 1 and the halving are heuristics that trade the exhaustiveness of "every start to
convergence" for speed; the settings are parameters so a caller can turn them off
(``keep=None, final_keep=None``) and run every start to the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from kdlab.laws._blas import single_threaded_blas

# objective(X, rows, need_grad) -> (f, g): X is (S, P); f is (S,), g is (S, P) or None.
# rows indexes the batch rows X belongs to (per-row data such as bootstrap weights), or
# None for "row i is row i". See objective.py.
BatchObjective = Callable[
    [torch.Tensor, "torch.Tensor | None", bool], "tuple[torch.Tensor, torch.Tensor | None]"
]


@dataclass
class MultiStartResult:
    """Best optimum of a multi-start search, and how the search went."""

    x: np.ndarray
    fun: float
    n_starts: int
    n_valid: int
    n_optimised: int
    n_polished: int
    candidates: list[tuple[float, np.ndarray]] = field(default_factory=list)
    lbfgs_iterations: int = 0


def value_and_grad(
    objective: BatchObjective, x: torch.Tensor, rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective and its gradient for each row of x."""
    f, g = objective(x, rows, True)
    assert g is not None
    return f, g


def evaluate(
    objective: BatchObjective,
    x: torch.Tensor,
    chunk: int,
    rows: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Objective at every row of x, in chunks of ``chunk`` rows, without gradients.

    With ``dtype`` (and an objective that has ``.to``) the values are computed in that
    precision, e.g. float32 for ranking a grid of starts.
    """
    if dtype is not None and hasattr(objective, "to"):
        objective = objective.to(dtype)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            r = torch.arange(lo, hi) if rows is None else rows[lo:hi]
            xc = x[lo:hi] if dtype is None else x[lo:hi].to(dtype)
            out[lo:hi] = objective(xc, r, False)[0].to(torch.float64)
    return out


def lbfgs_batched(
    objective: BatchObjective,
    x0: torch.Tensor,
    rows: torch.Tensor | None = None,
    max_iter: int = 1000,
    memory: int = 10,
    ftol: float = 1e-10,
    gtol: float = 1e-12,
    round_iters: int | None = None,
    final_keep: int | None = None,
    max_backtrack: int = 6,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched L-BFGS with Armijo backtracking; each row of x0 is an independent start.

    A row stops when its relative decrease falls below ``ftol``, its largest gradient
    component below ``gtol``, or no step decreases it. With ``round_iters`` and
    ``final_keep``, the worse half of the running rows is also stopped every
    ``round_iters`` iterations until ``final_keep`` are left (successive halving).
    The state of running rows is kept compact, so stopped rows cost nothing.

    With ``bounds`` (SciPy's list of (low, high)) every point stays in the box: steps
    are projected onto it, and a coordinate on a bound that the gradient pushes further
    out is held there for that step. Without them an optimum found outside
    the box is useless to the bounded polish that follows: clipped back, it starts far
    from anything good.
    Returns (x, f, iterations); stopped rows keep their last point (f = inf where the
    objective was never finite).
    """
    n_rows, p_count = x0.shape
    rows = torch.arange(n_rows) if rows is None else rows
    lower, upper = (torch.as_tensor(b, dtype=x0.dtype) for b in box_arrays(bounds, p_count))

    def project(v: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(v, upper), lower)

    x_out = project(x0.detach().clone())
    f, g = value_and_grad(objective, x_out, rows)
    ok = torch.isfinite(f) & torch.isfinite(g).all(1)
    f_out = torch.where(ok, f, torch.full_like(f, float("inf")))
    idx = ok.nonzero().flatten()  # rows of x_out still running
    x, f, g, r = x_out[idx], f[idx], g[idx], rows[idx]
    k = idx.numel()
    s_hist = torch.zeros(memory, k, p_count, dtype=x.dtype)
    y_hist = torch.zeros(memory, k, p_count, dtype=x.dtype)
    rho = torch.zeros(memory, k, dtype=x.dtype)
    h0 = torch.ones(k, dtype=x.dtype)
    fresh = torch.ones(k, dtype=torch.bool)  # no curvature pair yet
    n_pairs = 0
    it = 0
    for it in range(1, max_iter + 1):
        if idx.numel() == 0:
            break
        # two-loop recursion over the ring buffer, newest pair first
        order = [(n_pairs - 1 - j) % memory for j in range(min(n_pairs, memory))]
        q = g.clone()
        alphas = []
        for j in order:
            al = rho[j] * (s_hist[j] * q).sum(1)
            q.sub_(al[:, None] * y_hist[j])
            alphas.append(al)
        q.mul_(h0[:, None])
        for j, al in zip(reversed(order), reversed(alphas), strict=True):
            be = rho[j] * (y_hist[j] * q).sum(1)
            q.add_(s_hist[j] * (al - be)[:, None])
        d = q.neg_()
        # on a bound: a coordinate the gradient pushes out of the box stays put; one the
        # gradient pulls back in while d points out means stale curvature memory
        at_lo, at_hi = x <= lower, x >= upper
        held = (at_lo & (g > 0)) | (at_hi & (g < 0))
        stale = ((at_lo & (g < 0) & (d < 0)) | (at_hi & (g > 0) & (d > 0))).any(1)
        d = torch.where(held, torch.zeros_like(d), d)
        gd = (g * d).sum(1)
        bad = ~(gd < 0) | ~torch.isfinite(gd) | stale
        if bad.any():  # projected steepest descent, and the memory starts again
            d[bad] = torch.where(held[bad], torch.zeros_like(g[bad]), -g[bad])
            gd[bad] = (g[bad] * d[bad]).sum(1)
            rho[:, bad] = 0.0
            h0[bad] = 1.0
        t = torch.ones(idx.numel(), dtype=x.dtype)
        first = fresh | bad  # no curvature information: a unit-length first move
        if first.any():
            t[first] = torch.clamp(1.0 / d[first].norm(dim=1).clamp_min(1e-300), max=1.0)
        x_new = project(x + t[:, None] * d)
        f_new, g_new = value_and_grad(objective, x_new, r)
        accepted = _armijo(f_new, g_new, f, (g * (x_new - x)).sum(1))
        pending = ~accepted
        for _ in range(max_backtrack):
            if not pending.any():
                break
            pi = pending.nonzero().flatten()
            # next step: minimiser of the quadratic through f(0), f'(0), f(t), within
            # [t/10, t/2]; with three shorter fall-backs evaluated in the same call
            tp, fo, fn, gdp = t[pi], f[pi], f_new[pi], gd[pi]
            denom = 2.0 * (fn - fo - gdp * tp)
            t_q = torch.where(torch.isfinite(denom) & (denom > 0), -gdp * tp * tp / denom, 0.1 * tp)
            t_q = torch.minimum(torch.maximum(t_q, 0.1 * tp), 0.5 * tp)
            trials = t_q[None, :] * _BACKTRACK[:, None]  # (4, m), largest first
            xt = project(x[pi][None] + trials[..., None] * d[pi][None])
            ft, gt = value_and_grad(objective, xt.reshape(-1, p_count), r[pi].repeat(4))
            ft, gt = ft.reshape(4, -1), gt.reshape(4, -1, p_count)
            moved = ((xt - x[pi][None]) * g[pi][None]).sum(-1)  # g . step, < 0 downhill
            ok_t = _armijo(
                ft.reshape(-1), gt.reshape(-1, p_count), fo.repeat(4), moved.reshape(-1)
            ).reshape(4, -1)
            # the largest accepted trial, else the smallest one (to go on shrinking from)
            pick = torch.where(ok_t.any(0), ok_t.int().argmax(0), torch.full_like(pi, 3))
            cols = torch.arange(pi.numel())
            t[pi] = trials[pick, cols]
            x_new[pi] = xt[pick, cols]
            f_new[pi], g_new[pi] = ft[pick, cols], gt[pick, cols]
            acc = ok_t[pick, cols]
            accepted[pi] = acc
            pending[pi] = ~acc
        # curvature pair; rho = 0 skips it where y's <= 0 (keeps H positive definite)
        s_vec = x_new - x
        y_vec = g_new - g
        sy = (s_vec * y_vec).sum(1)
        yy = (y_vec * y_vec).sum(1)
        good = accepted & (sy > 1e-12 * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (sy > 0)
        slot = n_pairs % memory
        zero = torch.zeros_like(s_vec)
        s_hist[slot] = torch.where(good[:, None], s_vec, zero)
        y_hist[slot] = torch.where(good[:, None], y_vec, zero)
        safe_sy = torch.where(good, sy, torch.ones_like(sy))
        rho[slot] = torch.where(good, 1.0 / safe_sy, torch.zeros_like(sy))
        h0 = torch.where(good, sy / torch.where(good, yy, torch.ones_like(yy)), h0)
        fresh &= ~good
        n_pairs += 1
        decrease = f - f_new
        scale = torch.maximum(f.abs(), f_new.abs()).clamp_min(1e-300)
        a2 = accepted[:, None]
        x = torch.where(a2, x_new, x)
        f = torch.where(accepted, f_new, f)
        g = torch.where(a2, g_new, g)
        x_out[idx] = x
        f_out[idx] = f
        # stopping rules, then successive halving among the rows still running
        stop = ~accepted | (decrease <= ftol * scale) | (g.abs().amax(1) <= gtol)
        keep = ~stop
        if round_iters and final_keep and it % round_iters == 0 and int(keep.sum()) > final_keep:
            running = keep.nonzero().flatten()
            n_keep = max(final_keep, running.numel() // 2)
            keep = torch.zeros_like(keep)
            keep[running[torch.argsort(f[running])[:n_keep]]] = True
        if not keep.all():
            idx, x, f, g, r = idx[keep], x[keep], f[keep], g[keep], r[keep]
            s_hist, y_hist, rho = s_hist[:, keep], y_hist[:, keep], rho[:, keep]
            h0, fresh = h0[keep], fresh[keep]
    return x_out, f_out, it


_BACKTRACK = torch.tensor([1.0, 0.2, 0.04, 0.008], dtype=torch.float64)


def _armijo(f_new, g_new, f_old, slope_step, c1: float = 1e-4) -> torch.Tensor:
    """Sufficient decrease along the step taken; slope_step = g . (x_new - x) < 0."""
    finite = torch.isfinite(f_new) & torch.isfinite(g_new).all(1)
    return finite & (slope_step < 0) & (f_new <= f_old + c1 * slope_step)


def box_arrays(
    bounds: Sequence[tuple[float | None, float | None]] | None, n_params: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of a SciPy bounds list as arrays (infinite where open)."""
    if bounds is None:
        return np.full(n_params, -np.inf), np.full(n_params, np.inf)
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds], dtype=float)
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds], dtype=float)
    return lo, hi


def polish(
    objective: BatchObjective,
    x0: np.ndarray,
    max_iter: int = 20000,
    rounds: int = 3,
    row: int | None = None,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
) -> tuple[np.ndarray, float]:
    """Refine one start with SciPy L-BFGS-B (exact gradient), restarting while it helps.

    L-BFGS-B stops early on the kinks of a Huber objective; restarting from where it
    stopped (fresh curvature memory) usually gets the last digits.
    """

    rows = None if row is None else torch.tensor([row])

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.as_tensor(v, dtype=torch.float64)[None, :]
        f, g = value_and_grad(objective, x, rows)
        fv = float(f[0])
        if not np.isfinite(fv) or not torch.isfinite(g).all():
            return float("inf"), np.zeros_like(v)
        return fv, g[0].numpy().copy()

    x = np.clip(np.asarray(x0, dtype=float), *box_arrays(bounds, len(x0)))
    best_f = fun(x)[0]
    for _ in range(rounds):
        res = scipy.optimize.minimize(
            fun,
            x,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-14, "maxcor": 20},
        )
        if not np.isfinite(res.fun) or res.fun >= best_f - 1e-14 * abs(best_f):
            if np.isfinite(res.fun) and res.fun < best_f:
                x, best_f = res.x, float(res.fun)
            break
        x, best_f = res.x, float(res.fun)
    return x, best_f


def distinct_best(
    x: torch.Tensor, f: torch.Tensor, count: int, tol: float = 1e-3
) -> list[tuple[float, np.ndarray]]:
    """The ``count`` best rows of x (by f) that differ from each other by more than tol."""
    order = torch.argsort(f)
    chosen: list[tuple[float, np.ndarray]] = []
    for i in order.tolist():
        if not torch.isfinite(f[i]):
            break
        xi = x[i].numpy()
        if all(np.abs(xi - xc).max() > tol for _, xc in chosen):
            chosen.append((float(f[i]), xi.copy()))
            if len(chosen) >= count:
                break
    return chosen


def multistart(
    objective: BatchObjective,
    starts: np.ndarray,
    keep: int | None = 2000,
    final_keep: int | None = 250,
    round_iters: int = 25,
    max_iter: int = 1000,
    n_polish: int = 5,
    chunk_elements: int = 4_000_000,
    n_data: int = 1,
    screen_float32: bool = True,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
) -> MultiStartResult:
    """Minimise ``objective`` from every start (rows of ``starts``), keep the best optimum.

    See the module docstring for the three stages. ``n_data`` (runs per objective row)
    only sizes the screening chunks.
    """
    x_all = torch.as_tensor(np.asarray(starts, dtype=float), dtype=torch.float64)
    n_starts = x_all.shape[0]
    chunk = max(1, chunk_elements // max(1, n_data))
    # float32 ranks the starts as float64 would (relative error ~1e-7) at a fifth of the cost
    f0 = evaluate(objective, x_all, chunk, dtype=torch.float32 if screen_float32 else None)
    valid = torch.isfinite(f0)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("The objective is not finite at any start of the grid.")
    idx = valid.nonzero().flatten()
    if keep is not None and idx.numel() > keep:
        idx = idx[torch.argsort(f0[idx])[:keep]]
    x_run = x_all[idx]
    x_opt, f_opt, iters = lbfgs_batched(
        objective,
        x_run,
        rows=None,
        max_iter=max_iter,
        round_iters=round_iters if final_keep else None,
        final_keep=final_keep,
        bounds=bounds,
    )
    candidates = distinct_best(x_opt, f_opt, n_polish)
    with single_threaded_blas():
        polished = [polish(objective, xc, bounds=bounds) for _, xc in candidates]
    polished.sort(key=lambda t: t[1])
    best_x, best_f = polished[0]
    return MultiStartResult(
        x=best_x,
        fun=best_f,
        n_starts=n_starts,
        n_valid=n_valid,
        n_optimised=int(idx.numel()),
        n_polished=len(polished),
        candidates=[(f, x) for x, f in polished],
        lbfgs_iterations=iters,
    )
