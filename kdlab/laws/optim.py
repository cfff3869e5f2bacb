"""Multi-start minimisation of a Huber objective, all starts at once.

The paper (and the Chinchilla replications) run SciPy's L-BFGS-B from every point of a
grid of starts, one after another, with finite-difference gradients. Here the same
search is done as one batch: the objective of all S starts is a (S, n) torch table in
float64 and autograd gives exact gradients, so one batched L-BFGS step costs about one
pass over S x n residuals. The search runs in three stages:

1. screen: evaluate the objective at every start (chunked, no gradient) and keep the
   ``keep`` best finite ones (all of them when there are fewer);
2. batched L-BFGS on the kept starts with successive halving: every ``round_iters``
   iterations the worse half of the still-running starts is dropped until
   ``final_keep`` remain, which then run to convergence;
3. polish: the best few distinct optima are refined with SciPy L-BFGS-B (analytic
   gradient, tight tolerances) and the best result is kept.

Stage 1 and the halving are heuristics that trade the exhaustiveness of "every start to
convergence" for speed; the settings are parameters so a caller can turn them off
(``keep=None, final_keep=None``) and run every start to the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

# objective(X, rows) -> (S,) values; X is (S, P), rows indexes the batch rows X belongs
# to (per-row data such as bootstrap weights), or None for "all rows, in order".
BatchObjective = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber loss: quadratic within delta of zero, linear beyond (same as scipy.special.huber)."""
    ar = r.abs()
    return torch.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


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
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        f = objective(xg, rows)
        (g,) = torch.autograd.grad(f.sum(), xg)
    return f.detach(), g.detach()


def evaluate(
    objective: BatchObjective, x: torch.Tensor, chunk: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Objective at every row of x, in chunks of ``chunk`` rows, without gradients."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    with torch.no_grad():
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            r = torch.arange(lo, hi) if rows is None else rows[lo:hi]
            out[lo:hi] = objective(x[lo:hi], r)
    return out


def lbfgs_batched(
    objective: BatchObjective,
    x0: torch.Tensor,
    rows: torch.Tensor | None = None,
    max_iter: int = 1000,
    memory: int = 10,
    ftol: float = 1e-12,
    gtol: float = 1e-12,
    round_iters: int | None = None,
    final_keep: int | None = None,
    max_backtrack: int = 40,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched L-BFGS with Armijo backtracking; each row of x0 is an independent start.

    Rows stop when their relative decrease falls below ``ftol``, their largest gradient
    component below ``gtol``, or no step decreases them. With ``round_iters`` and
    ``final_keep``, the worse half of the running rows is also stopped every
    ``round_iters`` iterations until ``final_keep`` are left (successive halving).
    Returns (x, f, iterations); stopped rows keep their last point.
    """
    s_count, p_count = x0.shape
    if rows is None:
        rows = torch.arange(s_count)
    x = x0.detach().clone()
    f, g = value_and_grad(objective, x, rows)
    ok = torch.isfinite(f) & torch.isfinite(g).all(1)
    f = torch.where(ok, f, torch.full_like(f, float("inf")))
    active = ok.nonzero().flatten()
    s_hist = torch.zeros(memory, s_count, p_count, dtype=x.dtype)
    y_hist = torch.zeros(memory, s_count, p_count, dtype=x.dtype)
    rho = torch.zeros(memory, s_count, dtype=x.dtype)
    h0 = torch.ones(s_count, dtype=x.dtype)
    fresh = torch.ones(s_count, dtype=torch.bool)  # no curvature pair yet
    n_pairs = 0
    it = 0
    for it in range(1, max_iter + 1):
        if active.numel() == 0:
            break
        a = active
        ga = g[a]
        # two-loop recursion over the shared ring buffer (newest first)
        order = [(n_pairs - 1 - j) % memory for j in range(min(n_pairs, memory))]
        q = ga.clone()
        alphas = []
        for j in order:
            al = rho[j, a] * (s_hist[j, a] * q).sum(1)
            q -= al[:, None] * y_hist[j, a]
            alphas.append(al)
        q *= h0[a][:, None]
        for j, al in zip(reversed(order), reversed(alphas), strict=True):
            be = rho[j, a] * (y_hist[j, a] * q).sum(1)
            q += s_hist[j, a] * (al - be)[:, None]
        d = -q
        gd = (ga * d).sum(1)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        if bad.any():
            d[bad] = -ga[bad]
            gd[bad] = -(ga[bad] ** 2).sum(1)
        # first step of a start without curvature information: unit-length move
        t = torch.ones(a.numel(), dtype=x.dtype)
        first = fresh[a] | bad
        if first.any():
            t[first] = torch.clamp(1.0 / d[first].norm(dim=1), max=1.0)
        xa, fa = x[a], f[a]
        x_new = xa + t[:, None] * d
        f_new, g_new = value_and_grad(objective, x_new, rows[a])
        accepted = _armijo(f_new, g_new, fa, t, gd)
        pending = ~accepted
        for _ in range(max_backtrack):
            if not pending.any():
                break
            p = pending.nonzero().flatten()
            t[p] *= 0.5
            x_new[p] = xa[p] + t[p, None] * d[p]
            fp, gp = value_and_grad(objective, x_new[p], rows[a[p]])
            f_new[p], g_new[p] = fp, gp
            acc = _armijo(fp, gp, fa[p], t[p], gd[p])
            accepted[p] = acc
            pending[p] = ~acc
        # curvature pairs (skipped, via rho = 0, where y's < 0: keeps H positive definite)
        s_vec = x_new - xa
        y_vec = g_new - ga
        sy = (s_vec * y_vec).sum(1)
        yy = (y_vec * y_vec).sum(1)
        good = accepted & (sy > 1e-12 * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (sy > 0)
        slot = n_pairs % memory
        s_hist[slot, a] = torch.where(good[:, None], s_vec, torch.zeros_like(s_vec))
        y_hist[slot, a] = torch.where(good[:, None], y_vec, torch.zeros_like(y_vec))
        rho[slot, a] = torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), 0.0)
        h0[a] = torch.where(good, sy / torch.where(good, yy, torch.ones_like(yy)), h0[a])
        fresh[a] = fresh[a] & ~good
        n_pairs += 1
        acc_idx = a[accepted]
        x[acc_idx] = x_new[accepted]
        f[acc_idx] = f_new[accepted]
        g[acc_idx] = g_new[accepted]
        # stopping rules
        decrease = fa - f_new
        scale = torch.maximum(fa.abs(), f_new.abs()).clamp_min(1e-300)
        small_step = accepted & (decrease <= ftol * scale)
        flat = g_new.abs().amax(1) <= gtol
        stop = ~accepted | small_step | (accepted & flat)
        active = a[~stop]
        if round_iters and final_keep and it % round_iters == 0 and active.numel() > final_keep:
            keep = max(final_keep, active.numel() // 2)
            best = torch.argsort(f[active])[:keep]
            active = active[best]
    return x, f, it


def _armijo(f_new, g_new, f_old, t, gd, c1: float = 1e-4) -> torch.Tensor:
    finite = torch.isfinite(f_new) & torch.isfinite(g_new).all(1)
    return finite & (f_new <= f_old + c1 * t * gd)


def polish(
    objective: BatchObjective,
    x0: np.ndarray,
    max_iter: int = 20000,
    rounds: int = 3,
) -> tuple[np.ndarray, float]:
    """Refine one start with SciPy L-BFGS-B (exact gradient), restarting while it helps.

    L-BFGS-B stops early on the kinks of a Huber objective; restarting from where it
    stopped (fresh curvature memory) usually gets the last digits.
    """

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.as_tensor(v, dtype=torch.float64)[None, :]
        f, g = value_and_grad(objective, x, None)
        fv = float(f[0])
        if not np.isfinite(fv) or not torch.isfinite(g).all():
            return float("inf"), np.zeros_like(v)
        return fv, g[0].numpy().copy()

    x = np.asarray(x0, dtype=float)
    best_f = fun(x)[0]
    for _ in range(rounds):
        res = scipy.optimize.minimize(
            fun,
            x,
            jac=True,
            method="L-BFGS-B",
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
) -> MultiStartResult:
    """Minimise ``objective`` from every start (rows of ``starts``), keep the best optimum.

    See the module docstring for the three stages. ``n_data`` (runs per objective row)
    only sizes the screening chunks.
    """
    x_all = torch.as_tensor(np.asarray(starts, dtype=float), dtype=torch.float64)
    n_starts = x_all.shape[0]
    chunk = max(1, chunk_elements // max(1, n_data))
    f0 = evaluate(objective, x_all, chunk)
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
    )
    candidates = distinct_best(x_opt, f_opt, n_polish)
    polished = [polish(objective, xc) for _, xc in candidates]
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
