"""Cost of a distillation step against the same student's supervised step.

For each teacher/student pair, in one process and on the same batches (the student split):

- supervised: the run's ``PretrainModule`` for the student (``role=supervised``);
- distill: the run's ``DistillModule`` (``objective=distill``, a frozen random-init
  teacher GPT given as ``teacher.checkpoint``), forward KL, lambda = tau = 1;

both built by ``kdlab.runner`` and trained by the Trainer of ``kdlab-train`` (see
``common.py``), plus three plain loops that split the extra cost:

- teacher fwd: the teacher's forward as ``DistillModule.teacher_logits`` runs it
  (eval, no_grad), alone;
- loss NTP / loss NTP+KD: ``combined_student_loss`` forward and backward on stored
  logits of the batch's shape, without and with the distillation term (lambda 0 and 1);
  the difference is the KD term's own cost.

All five run in lockstep (``common.Lockstep``), so step k of each is timed within seconds
of the others. The measured ratio ``t_distill / t_supervised`` (median over steps of the
per-step ratio) is compared with the FLOP ideal ``(3 F_S + F_T) / (3 F_S)``, F from
``flops_per_token`` (matmuls only: a student training step is 3 F_S, the teacher forward
F_T). Target: measured / ideal <= 1.10.

    python benchmarks/distill_overhead.py [--pairs nano_L1:nano_L3,micro_L2:micro_L4] ...
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
from omegaconf import DictConfig

from kdlab.hardware import measure_matmul_flops
from kdlab.losses import combined_student_loss
from kdlab.models.gpt import GPT
from kdlab.models.ladder import LADDERS, flops_per_token, non_embedding_params
from kdlab.run_plan import RunPlan, plan_run
from kdlab.teacher import frozen, load_weights, save_weights

DEFAULT_PAIRS = (
    "nano_L1:nano_L3,nano_L2:nano_L4,nano_L3:nano_L6,micro_L2:micro_L4,micro_L3:micro_L6"
)
LOOPS = ("supervised", "distill", "teacher fwd", "loss NTP", "loss NTP+KD")


@dataclass
class PairResult:
    """Timed steps of each loop (seconds, aligned by step) and the pair's FLOPs."""

    student: str
    teacher: str
    n_student: int
    n_teacher: int
    f_student: float
    f_teacher: float
    times: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ideal(self) -> float:
        """(3 F_S + F_T) / (3 F_S)."""
        return (3 * self.f_student + self.f_teacher) / (3 * self.f_student)

    def per_step(self, num: str, den: str = "supervised") -> list[float]:
        """Per-step ratios t_num / t_den."""
        return [a / b for a, b in zip(self.times[num], self.times[den], strict=True)]

    def share(self, *loops: str, minus: str | None = None) -> float:
        """Median per step of (sum of ``loops`` - ``minus``) / t_supervised."""
        values = []
        for k, sup in enumerate(self.times["supervised"]):
            extra = sum(self.times[name][k] for name in loops)
            if minus is not None:
                extra -= self.times[minus][k]
            values.append(extra / sup)
        return median(values)


def make_teacher(model: str, root: Path, seed: int) -> Path:
    """A random-init teacher GPT (V = 256) saved as kdlab saves a finished run's weights."""
    ladder, name = model.split("_", 1)
    shape = LADDERS[ladder][name]
    torch.manual_seed(seed)
    directory = root / f"teacher-{model}"
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(GPT(shape), directory)
    return directory / "model.pt"


def teacher_loop(plan: RunPlan, weights: Path) -> Callable[[Lockstep, int], None]:
    """The teacher forward of ``DistillModule.teacher_logits``, alone, on the same batches."""

    def loop(lockstep: Lockstep, index: int) -> None:
        teacher = frozen(load_weights(weights))
        for x, _ in plan.data.train_batches(0, 0, 1):
            lockstep.step(index)
            with torch.no_grad():
                teacher.eval()
                teacher(x)

    return loop


def loss_loop(plan: RunPlan, kd_weight: float) -> Callable[[Lockstep, int], None]:
    """``combined_student_loss`` forward + backward on stored logits of the batch's shape."""

    def loop(lockstep: Lockstep, index: int) -> None:
        torch.manual_seed(0)
        shape = (plan.data.batch_size, plan.shape.n_ctx, plan.shape.vocab_size)
        student = torch.randn(shape).requires_grad_(True)
        teacher = torch.randn(shape)
        for _, y in plan.data.train_batches(0, 0, 1):
            lockstep.step(index)
            out = combined_student_loss(
                student, y, teacher, kd_weight=kd_weight, z_loss_weight=1e-4
            )
            out.loss.backward()
            student.grad = None

    return loop


def bench_pair(pair: str, root: Path, args: argparse.Namespace) -> PairResult:
    student, teacher = pair.split(":")
    weights = make_teacher(teacher, root / pair, args.seed)
    n_steps = args.warmup + args.steps + 1  # the last batch's start closes the last step
    plans: dict[str, tuple[DictConfig, RunPlan]] = {}
    for name, extra in (
        ("supervised", ("role=supervised",)),
        ("distill", ("objective=distill", f"teacher.checkpoint={weights}")),
    ):
        cfg = run_config(root / pair / name, student, n_steps, args.batch_size, args.seed, extra)
        plan = plan_run(cfg)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        plans[name] = (cfg, plan)
    sup_plan = plans["supervised"][1]
    t_shape = load_weights(weights).shape
    result = PairResult(
        student=student,
        teacher=teacher,
        n_student=non_embedding_params(sup_plan.shape),
        n_teacher=non_embedding_params(t_shape),
        f_student=flops_per_token(sup_plan.shape),
        f_teacher=flops_per_token(t_shape),
        times={name: [] for name in LOOPS},
    )
    for _ in range(args.repeats):
        loops: list[Callable[[Lockstep, int], object]] = [
            lambda ls, i, c=plans[name][0], p=plans[name][1]: fit_kdlab(c, p, ls, i)
            for name in ("supervised", "distill")
        ]
        loops += [
            teacher_loop(sup_plan, weights),
            loss_loop(sup_plan, 0.0),
            loss_loop(sup_plan, 1.0),
        ]
        lockstep = Lockstep(len(loops))
        lockstep.run(loops, mute=not args.verbose)
        for name, times in zip(LOOPS, lockstep.step_times, strict=True):
            result.times[name] += times[args.warmup :]
    return result


def table(results: list[PairResult], peak: float, tokens: dict[str, int]) -> str:
    header = [
        "student <- teacher",
        "N_S",
        "N_T",
        "ms/step sup",
        "ms/step distill",
        "measured t_dist/t_sup",
        "IQR",
        "ideal (3F_S+F_T)/3F_S",
        "measured/ideal",
        "teacher fwd / t_sup (ideal F_T/3F_S)",
        "KD loss / t_sup",
        "unexplained / t_sup",
        "MFU sup",
        "MFU teacher fwd",
    ]
    rows = []
    for r in results:
        ratios = r.per_step("distill")
        measured = median(ratios)
        t_sup = median(r.times["supervised"])
        t_fwd = median(r.times["teacher fwd"])
        n_tok = tokens[r.student]
        kd = r.share("loss NTP+KD", minus="loss NTP")
        teacher_share = r.share("teacher fwd")
        rows.append(
            [
                f"{r.student} <- {r.teacher}",
                f"{r.n_student / 1e6:.3f}M",
                f"{r.n_teacher / 1e6:.3f}M",
                f"{1e3 * t_sup:.0f}",
                f"{1e3 * median(r.times['distill']):.0f}",
                f"{measured:.2f}",
                f"{quantile(ratios, 0.25):.2f}..{quantile(ratios, 0.75):.2f}",
                f"{r.ideal:.2f}",
                f"{measured / r.ideal:.3f}",
                f"{teacher_share:.2f} ({r.f_teacher / (3 * r.f_student):.2f})",
                f"{kd:.2f}",
                f"{measured - 1 - teacher_share - kd:+.2f}",
                f"{3 * r.f_student * n_tok / t_sup / peak:.1%}",
                f"{r.f_teacher * n_tok / t_fwd / peak:.1%}",
            ]
        )
    return md_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma list of student:teacher")
    add_timing_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    start = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"load average at start: {load_average()}")
    peaks = [measure_matmul_flops()]
    results = []
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as tmp:
        for pair in args.pairs.split(","):
            log(f"[distill_overhead] {pair} ...")
            results.append(bench_pair(pair.strip(), Path(tmp), args))
    peaks.append(measure_matmul_flops())
    tokens = {
        r.student: args.batch_size * LADDERS[r.student.split("_")[0]]["L1"].n_ctx for r in results
    }
    peak = print_run_footer(args, peaks, start)
    print(table(results, peak, tokens))


if __name__ == "__main__":
    main()
