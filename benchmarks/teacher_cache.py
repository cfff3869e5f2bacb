"""A student's step from a teacher-logit cache against the same student with its teacher
online, and the cache's bytes per token for each k.

For each student <- teacher pair, in one process, on the same batches (Markov corpus,
V = 256), three runs built by ``kdlab.runner`` and trained by the ``kdlab-train`` Trainer
(``common.py``), in lockstep:

- supervised: the student's ``PretrainModule`` run (the floor: no teacher at all);
- online: ``objective=distill objective.top_k=K`` with a frozen random-init teacher
  GPT (``teacher.checkpoint``): the teacher runs forward every step (and is truncated);
- online full: the same without truncation (the paper's objective), for reference;
- cached: ``teacher=cache teacher.cache.k=K`` from the same teacher's cache, written
  first by ``kdlab teacher cache``'s own code: the batch brings the top K.

Expected: t_online / t_cached = (3 F_S + F_T) / (3 F_S) (the issue's (6 N_S + 2 N_T) /
6 N_S with F = 2N), less the top-k bookkeeping both share. Then, for each K, the bytes
per token of a cache's records at V = 256 (1-byte ids) and V = 32768 (2-byte ids),
fp16 and fp32, from ``record_dtype`` and, at V = 256, the files actually written.

    python benchmarks/teacher_cache.py [--pairs nano_L1:nano_L4,...] [--k 32] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from common import (
    Lockstep,
    add_timing_arguments,
    fit_kdlab,
    load_average,
    log,
    machine,
    md_table,
    median,
    print_run_footer,
    quantile,
    quiet,
    run_config,
)
from distill_overhead import make_teacher

from kdlab.hardware import measure_matmul_flops
from kdlab.models.ladder import LADDERS, flops_per_token, non_embedding_params
from kdlab.run_plan import plan_run
from kdlab.rundb import RunStore
from kdlab.teachers.cache import CacheIdentity, bytes_per_token
from kdlab.teachers.cli import build_cache

DEFAULT_PAIRS = "nano_L1:nano_L4,nano_L2:nano_L6,micro_L2:micro_L6"
LOOPS = ("supervised", "online", "online full", "cached")
KS = (8, 16, 32, 64, 128)


def cache_overrides(weights: Path, k: int, tokens: int) -> tuple[str, ...]:
    return (
        "objective=distill",
        "teacher=cache",
        f"teacher.checkpoint={weights}",
        f"teacher.cache.k={k}",
        f"teacher.cache.tokens={tokens}",
    )


def bench_pair(pair: str, root: Path, args: argparse.Namespace) -> dict:
    student, teacher = pair.split(":")
    weights = make_teacher(teacher, root / pair, args.seed)
    n_steps = args.warmup + args.steps + 1
    n_ctx = LADDERS[student.split("_")[0]][student.split("_")[1]].n_ctx
    tokens = n_steps * args.batch_size * n_ctx
    runs = {
        "supervised": ("role=supervised",),
        "online": (
            "objective=distill",
            f"teacher.checkpoint={weights}",
            f"objective.top_k={args.k}",
        ),
        "online full": ("objective=distill", f"teacher.checkpoint={weights}"),
        "cached": cache_overrides(weights, args.k, tokens),
    }
    built = {}
    for name, extra in runs.items():
        cfg = run_config(root / pair / name, student, n_steps, args.batch_size, args.seed, extra)
        if name == "cached":
            start = time.perf_counter()
            build_cache(cfg, device="cpu", batch=args.batch_size, skip=set())
            log(f"{pair}: cache written in {time.perf_counter() - start:.0f} s")
        plan = plan_run(cfg)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        built[name] = (cfg, plan)
    times: dict[str, list[float]] = {name: [] for name in LOOPS}
    for _ in range(args.repeats):
        loops = [
            lambda ls, i, c=built[name][0], p=built[name][1]: fit_kdlab(c, p, ls, i)
            for name in LOOPS
        ]
        lockstep = Lockstep(len(loops))
        lockstep.run(loops, mute=not args.verbose)
        for name, step_times in zip(LOOPS, lockstep.step_times, strict=True):
            times[name] += step_times[args.warmup :]
    s_shape = built["supervised"][1].shape
    t_shape = LADDERS[teacher.split("_")[0]][teacher.split("_")[1]]
    return {
        "pair": f"{student} <- {teacher}",
        "n_s": non_embedding_params(s_shape),
        "n_t": non_embedding_params(t_shape),
        "f_s": flops_per_token(s_shape),
        "f_t": flops_per_token(dataclasses.replace(t_shape, vocab_size=256)),
        "times": times,
    }


def step_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        t = r["times"]
        ratio = [a / b for a, b in zip(t["online"], t["cached"], strict=True)]
        full = [a / b for a, b in zip(t["online full"], t["cached"], strict=True)]
        over_sup = [a / b for a, b in zip(t["cached"], t["supervised"], strict=True)]
        ideal = (3 * r["f_s"] + r["f_t"]) / (3 * r["f_s"])
        rows.append(
            [
                r["pair"],
                f"{r['n_s'] / 1e6:.3f}M",
                f"{r['n_t'] / 1e6:.3f}M",
                f"{1e3 * median(t['supervised']):.0f}",
                f"{1e3 * median(t['online']):.0f}",
                f"{1e3 * median(t['online full']):.0f}",
                f"{1e3 * median(t['cached']):.0f}",
                f"{median(ratio):.2f}",
                f"{quantile(ratio, 0.25):.2f}..{quantile(ratio, 0.75):.2f}",
                f"{median(full):.2f}",
                f"{ideal:.2f}",
                f"{median(over_sup):.2f}",
            ]
        )
    header = [
        "student <- teacher",
        "N_S",
        "N_T",
        "ms/step supervised",
        "ms/step online top-k",
        "ms/step online full",
        "ms/step cached",
        "online top-k / cached",
        "IQR",
        "online full / cached",
        "expected (3F_S+F_T)/3F_S",
        "cached / supervised",
    ]
    return md_table(header, rows)


def bytes_table(root: Path, args: argparse.Namespace) -> str:
    """Bytes per token by k: computed for V = 256 and 32768, measured at V = 256."""
    weights = make_teacher("nano_L1", root / "bytes", args.seed)
    rows = []
    for k in KS:
        measured = {}
        for dtype in ("float16", "float32"):
            extra = (*cache_overrides(weights, k, 4096), f"teacher.cache.dtype={dtype}")
            cfg = run_config(root / "bytes" / f"{k}-{dtype}", "nano_L1", 2, 16, args.seed, extra)
            row = build_cache(cfg, device="cpu", batch=16, skip=set())
            store = RunStore(f"sqlite:///{root / 'bytes' / f'{k}-{dtype}'}/runs/kdlab.db")
            inference = store.get_inference(row["key"])
            measured[dtype] = inference["bytes"] / inference["tokens"]
        computed = {}
        for vocab in (256, 32768):
            for dtype in ("float16", "float32"):
                identity = CacheIdentity("t", "c", "tok", vocab, 8192, "student", 128, k, dtype)
                computed[(vocab, dtype)] = bytes_per_token(identity)
        rows.append(
            [
                str(k),
                f"{computed[(256, 'float16')]:.0f} ({measured['float16']:.1f})",
                f"{computed[(256, 'float32')]:.0f} ({measured['float32']:.1f})",
                f"{computed[(32768, 'float16')]:.0f}",
                f"{computed[(32768, 'float32')]:.0f}",
            ]
        )
    header = [
        "k",
        "V 256 fp16 (files)",
        "V 256 fp32 (files)",
        "V 32768 fp16",
        "V 32768 fp32",
    ]
    return md_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="student:teacher,...")
    parser.add_argument("--k", type=int, default=32, help="cache k (and the online top_k)")
    parser.add_argument("--skip-bytes", action="store_true", help="only the step times")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not args.verbose:
        quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# teacher_cache, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {machine()}; load average at start: {load_average()}")
    peaks = [measure_matmul_flops()]
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for pair in args.pairs.split(","):
            log(f"timing {pair}")
            results.append(bench_pair(pair, Path(tmp), args))
        print(f"\nstep time, k = {args.k} (median per step, lockstep)\n")
        print(step_table(results))
        if not args.skip_bytes:
            print("\nbytes per token (computed; at V 256 the files written, in brackets)\n")
            print(bytes_table(Path(tmp), args))
    peaks.append(measure_matmul_flops())
    print()
    print_run_footer(args, peaks, start)


if __name__ == "__main__":
    main()
