"""kdlab's Lightning training step against a plain PyTorch loop of the same model.

For each size, in one process and on the same batches:

- kdlab: the run's ``PretrainModule`` (``kdlab.runner.build_module``) trained by the
  ``lightning.Trainer`` of ``kdlab-train`` (``conf/trainer/cpu.yaml``: fp32, gradient
  clipping 1.0 by norm, progress bar, ``log_every_n_steps`` 10; the runner's callbacks:
  TrainClock, CurveRecorder, ModelCheckpoint, TrainingProgress);
- plain: ``GPT`` with the same seed (same init), the same AdamW muP groups, LambdaLR
  schedule, loss function and ``clip_grad_norm_``, in a bare ``for`` loop.

They run in lockstep (``common.Lockstep``: plain step k, control step k, kdlab step k,
plain step k+1, ...), ``--warmup`` + ``--steps`` steps each, ``--repeats`` times with fresh
models; the control is a second, identical plain loop, whose ratio to the first shows the
noise floor of the measurement. Reported: tokens/s of each (median step), the slowdown
``t_kdlab / t_plain`` (median over steps of the ratio of the two step-k times, with its
interquartile range), the control's ratio, MFU against the fp32
matmul peak measured in the same run, the largest loss difference between the two (they
compute the same thing in the same order: it should be 0), and the amortised cost of the
runner's periodic checkpoint (``checkpoint.every_n_steps``) as a fraction of a step.

A second table times the fixed per-step cost of Lightning at a size where compute is
negligible (nano_L1, batch 1), with single pieces of kdlab's setup switched off.

    python benchmarks/train_throughput.py [--sizes nano_L2,nano_L6] [--steps 12] ...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from common import (
    Lockstep,
    add_timing_arguments,
    build,
    fit_kdlab,
    load_average,
    log,
    machine,
    md_table,
    median,
    paired,
    print_run_footer,
    quantile,
    quiet,
    run_config,
)
from omegaconf import DictConfig

from kdlab.hardware import measure_matmul_flops
from kdlab.losses import combined_student_loss
from kdlab.models.gpt import GPT
from kdlab.models.ladder import flops_per_token, non_embedding_params
from kdlab.modules.base import warmup_cosine
from kdlab.run_plan import RunPlan, plan_run

DEFAULT_SIZES = "nano_L2,nano_L4,nano_L6,micro_L2,micro_L3,micro_L4"

# kdlab variants with one piece switched off, for the per-step overhead table
VARIANTS: dict[str, dict[str, bool | str]] = {
    "kdlab": {},
    "no self.log": {"log_metrics": "none"},
    "self.log on logging steps only": {"log_metrics": "gated"},
    "no progress bar": {"progress_bar": False},
    "no runner callbacks": {"runner_callbacks": False},
    "bare Lightning": {"log_metrics": "none", "progress_bar": False, "runner_callbacks": False},
}


CONTROL = "plain (control)"  # a second plain loop: the noise floor of a lockstep ratio


@dataclass
class Result:
    """Timed step pairs of each variant against the plain loop, and what else was measured."""

    size: str
    n_params: int
    flops_per_token: float
    tokens_per_step: int
    plain: list[float] = field(default_factory=list)  # seconds per timed step
    pairs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (t_v, t_plain)
    max_loss_diff: float = 0.0
    ckpt_s: float = 0.0
    ckpt_every: int = 1

    def ratios(self, variant: str = "kdlab") -> list[float]:
        """Per-step slowdown t_variant / t_plain."""
        return [v / p for v, p in self.pairs[variant]]

    def step_time(self, variant: str) -> float:
        """Median seconds per step of a variant."""
        return median([v for v, _ in self.pairs[variant]])

    def overhead_ms(self, variant: str) -> float:
        """Median per-step extra milliseconds over the plain loop."""
        return 1e3 * median([v - p for v, p in self.pairs[variant]])


def plain_loop(
    plan: RunPlan, cfg_seed: int, module: L.LightningModule
) -> Callable[[Lockstep, int], list[float]]:
    """The same training as the kdlab module as a bare PyTorch loop (a Lockstep loop)."""

    def loop(lockstep: Lockstep, index: int) -> list[float]:
        L.seed_everything(cfg_seed, workers=True, verbose=False)
        model = GPT(plan.shape)  # the module builds its GPT first, so both start identical
        model.train()
        opt = torch.optim.AdamW(
            model.optimizer_groups(module.lr, module.weight_decay), betas=(0.9, 0.95), eps=1e-8
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: warmup_cosine(
                s, module.total_steps, module.warmup_steps, module.min_lr_ratio
            ),
        )
        # Lightning clips the optimizer's parameters in group order: the same order here
        # makes the gradient norm, hence the whole run, bit-identical to kdlab's.
        params = [p for group in opt.param_groups for p in group["params"]]
        losses: list[float] = []
        for x, y in plan.data.train_batches(0, 0, 1):
            lockstep.step(index)
            out = combined_student_loss(model(x), y, kd_weight=0.0, z_loss_weight=module.z_loss)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(out.loss.item())
        return losses

    return loop


def bench_size(
    size: str,
    root: Path,
    args: argparse.Namespace,
    batch_size: int,
    steps: int,
    variants: list[str],
) -> Result:
    """The plain loop and each kdlab variant in lockstep on one size; see the module doc."""
    n_steps = args.warmup + steps + 1  # the last batch's start closes the last timed step
    runs: list[tuple[DictConfig, RunPlan]] = []
    for k in range(1 + len(variants)):  # one data module (and run dir) per loop
        cfg = run_config(root / size / str(k), size, n_steps, batch_size, seed=args.seed)
        runs.append((cfg, plan_run(cfg)))
        runs[-1][1].run_dir.mkdir(parents=True, exist_ok=True)
    shape = runs[0][1].shape
    result = Result(
        size=size,
        n_params=non_embedding_params(shape),
        flops_per_token=flops_per_token(shape),
        tokens_per_step=batch_size * shape.n_ctx,
        pairs={name: [] for name in variants},
        ckpt_every=int(runs[0][0].checkpoint.every_n_steps),
    )
    for _ in range(args.repeats):
        cfg, plan = runs[0]
        loops = [plain_loop(plan, cfg.seed, build(cfg, plan))]
        for name, (cfg, plan) in zip(variants, runs[1:], strict=True):
            if name == CONTROL:
                loops.append(plain_loop(plan, cfg.seed, build(cfg, plan)))
            else:
                loops.append(
                    lambda ls, i, c=cfg, p=plan, v=VARIANTS[name]: fit_kdlab(c, p, ls, i, **v)
                )
        lockstep = Lockstep(len(loops))
        outcomes = lockstep.run(loops, mute=not args.verbose)
        losses = [out if isinstance(out, list) else out[0] for out in outcomes]
        trainer = next(out[1] for out in outcomes if isinstance(out, tuple))
        times = lockstep.step_times
        result.plain += times[0][args.warmup :]
        for k, name in enumerate(variants, start=1):
            result.pairs[name] += paired(times[k], times[0], args.warmup)
            diff = max(abs(a - b) for a, b in zip(losses[0], losses[k], strict=True))
            result.max_loss_diff = max(result.max_loss_diff, diff)
    # one checkpoint like those the runner writes every checkpoint.every_n_steps
    t0 = time.perf_counter()
    trainer.save_checkpoint(runs[1][1].run_dir / "bench.ckpt")
    result.ckpt_s = time.perf_counter() - t0
    return result


def throughput_table(results: list[Result], peak: float) -> str:
    """Plain against kdlab per size."""
    header = [
        "size",
        "N",
        "tok/step",
        "tok/s plain",
        "tok/s kdlab",
        "slowdown t_kdlab/t_plain",
        "IQR",
        "control t_plain'/t_plain",
        "MFU plain",
        "MFU kdlab",
        "max abs dloss",
        "ckpt/step",
    ]
    rows = []
    for r in results:
        tp, tk = median(r.plain), r.step_time("kdlab")
        ratios = r.ratios()
        mfu = [3 * r.flops_per_token * r.tokens_per_step / t / peak for t in (tp, tk)]
        rows.append(
            [
                r.size,
                f"{r.n_params / 1e6:.3f}M",
                str(r.tokens_per_step),
                f"{r.tokens_per_step / tp:,.0f}",
                f"{r.tokens_per_step / tk:,.0f}",
                f"{median(ratios):.3f}",
                f"{quantile(ratios, 0.25):.3f}..{quantile(ratios, 0.75):.3f}",
                f"{median(r.ratios(CONTROL)):.3f}" if CONTROL in r.pairs else "-",
                f"{mfu[0]:.1%}",
                f"{mfu[1]:.1%}",
                f"{r.max_loss_diff:.1e}",
                f"{r.ckpt_s / r.ckpt_every / tk:.2%}",
            ]
        )
    return md_table(header, rows)


def overhead_table(result: Result) -> str:
    """Fixed per-step cost of each kdlab variant above the plain loop, in ms."""
    header = ["loop", "ms/step", "extra ms/step over plain"]
    rows = [["plain loop", f"{1e3 * median(result.plain):.2f}", "0"]]
    for name in result.pairs:
        rows.append(
            [name, f"{1e3 * result.step_time(name):.2f}", f"{result.overhead_ms(name):.2f}"]
        )
    return md_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of ladder_size")
    add_timing_arguments(parser)
    parser.add_argument(
        "--overhead-steps",
        type=int,
        default=60,
        help="timed steps of the per-step overhead table (nano_L1, batch 1); 0 skips it",
    )
    args = parser.parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"load average at start: {load_average()}")
    peaks = [measure_matmul_flops()]
    results = []
    overhead = None
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as tmp:
        for size in args.sizes.split(","):
            log(f"[train_throughput] {size} ...")
            results.append(
                bench_size(
                    size.strip(), Path(tmp), args, args.batch_size, args.steps, [CONTROL, "kdlab"]
                )
            )
        if args.overhead_steps:
            log("[train_throughput] per-step overhead (nano_L1, batch 1) ...")
            overhead = bench_size(
                "nano_L1", Path(tmp), args, 1, args.overhead_steps, [CONTROL, *VARIANTS]
            )
    peaks.append(measure_matmul_flops())
    peak = print_run_footer(args, peaks, start)
    print(throughput_table(results, peak))
    if overhead is not None:
        print(
            f"\nPer-step overhead: nano_L1, batch 1 ({overhead.tokens_per_step} tokens), "
            f"{args.overhead_steps} timed steps, max abs dloss {overhead.max_loss_diff:.1e}\n"
        )
        print(overhead_table(overhead))


if __name__ == "__main__":
    main()
