"""Speed of kdlab's scaling-law fits (issue 4), results go to BENCHMARKS.md "## fit_speed".

1. Epoch AI's Chinchilla fit (240 points, chinchilla form, Huber delta 1e-3, Epoch's
   4,500-start grid) by kdlab against the reference approach: SciPy L-BFGS-B with
   finite-difference gradients from every start, one start after another, keeping the
   best. Both run in this process on the same data; the reference may time a fixed,
   evenly spread share of the starts (--ref-share) and is then extrapolated, which the
   output says. Target: kdlab at least 50x faster, same optimum.
2. The distillation law on 700 synthetic runs (published law, paper-like grid, 1%
   noise) with the paper's full grid of 216,000 starts. Target: under 60 s on 2 cores.

    python benchmarks/fit_speed.py [--ref-share 0.2] [--threads 1] [--json out.json]

BLAS is limited to one thread for both sides (SciPy's L-BFGS-B calls BLAS on vectors of
5 numbers, where a BLAS thread pool only adds latency).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy/SciPy load
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.special  # noqa: E402
import torch  # noqa: E402

from kdlab.laws.fit import SearchSettings, fit_distillation, fit_supervised  # noqa: E402
from kdlab.laws.forms import CHINCHILLA_SPEC, distillation_loss  # noqa: E402
from kdlab.laws.grids import grid_starts, resolve_grid  # noqa: E402
from kdlab.laws.io import read_csv_points  # noqa: E402
from kdlab.laws.published import PAPER_SUPERVISED  # noqa: E402
from kdlab.laws.synthetic import paper_like_distillation_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCH_CSV = ROOT / "data" / "chinchilla_epoch_svg_extracted.csv"
EPOCH_PUBLISHED = {
    "objective": 0.0010182740,
    "E": 1.81724,
    "A": 477.88,
    "B": 2143.96,
    "alpha": 0.347317,
    "beta": 0.367185,
}


class Clock:
    """Wall and process-CPU seconds of a block (CPU time is less disturbed by other
    processes on a shared machine)."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def reference_fit(n, d, loss, starts: np.ndarray, delta: float = 1e-3):
    """Epoch's procedure: L-BFGS-B (finite-difference gradients) from each start in turn."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)

    def objective(p: np.ndarray) -> float:
        e, a, b, alpha, beta = p
        pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
        return float(np.sum(scipy.special.huber(delta, pred - log_l)))

    best = None
    for s in starts:
        res = scipy.optimize.minimize(objective, s, method="L-BFGS-B")
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    return best


def bench_epoch(ref_share: float, threads: int) -> dict:
    df = read_csv_points(EPOCH_CSV, "supervised", {"N": "Model Size"}, "Training FLOP")
    with Clock() as ours_t:
        doc = fit_supervised(
            df,
            form="chinchilla",
            huber_delta=1e-3,
            grid="epoch",
            drop_highest=5,
            search=SearchSettings(threads=threads),
        )
    fit = df.loc[df["loss"].sort_values(kind="stable").index[: len(df) - 5]]
    starts = grid_starts(CHINCHILLA_SPEC, resolve_grid(CHINCHILLA_SPEC, "epoch"))
    step = max(1, round(1 / ref_share))
    share = starts[::step]  # evenly spread over the grid, every step-th start
    with Clock() as ref_t:
        ref = reference_fit(fit["N"].to_numpy(), fit["D"].to_numpy(), fit["loss"].to_numpy(), share)
    scale = len(starts) / len(share)
    ref_coef = CHINCHILLA_SPEC.to_coefficients(ref.x)
    out = {
        "n_points": doc["n_points"],
        "n_starts": len(starts),
        "kdlab": {
            "wall_s": ours_t.wall,
            "cpu_s": ours_t.cpu,
            "objective": doc["objective"],
            "coefficients": doc["coefficients"],
            "starts_optimised": doc["n_starts_optimised"],
        },
        "reference": {
            "starts_timed": len(share),
            "wall_s_timed": ref_t.wall,
            "cpu_s_timed": ref_t.cpu,
            "wall_s_all_starts": ref_t.wall * scale,
            "cpu_s_all_starts": ref_t.cpu * scale,
            "extrapolated": scale > 1,
            "objective": float(ref.fun),
            "coefficients": ref_coef,
        },
        "published": EPOCH_PUBLISHED,
    }
    out["speedup_wall"] = out["reference"]["wall_s_all_starts"] / ours_t.wall
    out["speedup_cpu"] = out["reference"]["cpu_s_all_starts"] / ours_t.cpu
    out["objective_rel_diff_vs_reference"] = doc["objective"] / ref.fun - 1
    out["objective_rel_diff_vs_published"] = doc["objective"] / EPOCH_PUBLISHED["objective"] - 1
    out["max_coef_rel_diff_vs_published"] = max(
        abs(doc["coefficients"][k] / EPOCH_PUBLISHED[k] - 1)
        for k in ("E", "A", "B", "alpha", "beta")
    )
    return out


def bench_distillation(threads: int, n_runs: int = 700) -> dict:
    runs = paper_like_distillation_runs(n_runs=n_runs, noise=0.01, seed=0)
    with Clock() as t:
        doc = fit_distillation(
            runs, PAPER_SUPERVISED, grid="paper", search=SearchSettings(threads=threads)
        )
    pred = distillation_loss(runs.N_S, runs.D_S, runs.L_T, doc["coefficients"], PAPER_SUPERVISED)
    return {
        "n_runs": n_runs,
        "n_starts": doc["n_starts"],
        "n_starts_defined": doc["n_starts_defined"],
        "n_starts_optimised": doc["n_starts_optimised"],
        "wall_s": t.wall,
        "cpu_s": t.cpu,
        "objective": doc["objective"],
        "max_rel_error_vs_truth": float(np.max(np.abs(pred / runs.loss_true - 1))),
        "coefficients": doc["coefficients"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--ref-share",
        type=float,
        default=0.2,
        help="share of the 4,500 starts the reference runs (1: all)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for kdlab")
    ap.add_argument("--skip-distillation", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_avg_before": load,
    }
    print(f"environment: {env}", flush=True)
    epoch = bench_epoch(args.ref_share, args.threads)
    k, r = epoch["kdlab"], epoch["reference"]
    print("\n## Epoch AI Chinchilla fit (240 points, 4,500 starts, Huber delta 1e-3)")
    print("| method | wall s | CPU s | Huber sum | E | A | B | alpha | beta |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [
        ("kdlab (batched, screened)", k, k["wall_s"], k["cpu_s"]),
        (f"reference, {r['starts_timed']} starts timed", r, r["wall_s_timed"], r["cpu_s_timed"]),
    ]
    if r["extrapolated"]:
        rows.append(
            (
                "reference, all 4,500 (extrapolated)",
                r,
                r["wall_s_all_starts"],
                r["cpu_s_all_starts"],
            )
        )
    for name, row, w, c in rows:
        co = row["coefficients"]
        print(
            f"| {name} | {w:.2f} | {c:.2f} | {row['objective']:.10f} | {co['E']:.5f} | "
            f"{co['A']:.2f} | {co['B']:.2f} | {co['alpha']:.6f} | {co['beta']:.6f} |"
        )
    print(
        f"speed-up: {epoch['speedup_wall']:.0f}x wall, {epoch['speedup_cpu']:.0f}x CPU; "
        f"Huber sum vs reference {epoch['objective_rel_diff_vs_reference']:+.2e}, vs Epoch's "
        f"{epoch['objective_rel_diff_vs_published']:+.2e}; largest coefficient difference vs "
        f"Epoch's {epoch['max_coef_rel_diff_vs_published']:.2e}",
        flush=True,
    )
    results = {"environment": env, "epoch": epoch}
    if not args.skip_distillation:
        dist = bench_distillation(args.threads)
        results["distillation"] = dist
        print("\n## Distillation law, 700 runs, paper grid")
        print(
            f"{dist['n_starts']} starts ({dist['n_starts_defined']} defined, "
            f"{dist['n_starts_optimised']} optimised after screening): "
            f"{dist['wall_s']:.1f} s wall, {dist['cpu_s']:.1f} s CPU; Huber sum "
            f"{dist['objective']:.8g}; max |rel error| vs the noise-free truth "
            f"{dist['max_rel_error_vs_truth']:.3%}"
        )
    results["environment"]["load_avg_after"] = os.getloadavg() if load else None
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
