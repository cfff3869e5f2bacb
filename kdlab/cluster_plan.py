"""Which layout each job of a sweep trains with on a named GPU, and how long it takes.

The global batch (sequences per optimizer step) is science and stays fixed; the layout
only decides how it is split: micro-batch x GPUs x accumulation = global batch, so a node
count is usable when its GPUs divide the global batch. For each model size of a sweep
(a sweep file can set trainer options per size, not per job) the plan takes:

1. the fewest nodes whose ideal time, FLOPs / (GPUs x bf16 peak x MFU), meets the
   wall-time target for the size's longest job (activation checkpointing adds one
   forward of the student, F(N) D, to its 3 F(N) D);
2. at that width the first layout whose peak memory fits every job of the size in
   ``USABLE`` of the GPU (kdlab/models/memory.py): the fewest accumulation steps (the
   largest micro-batch: bigger matmuls, and FSDP gathers weights once per micro-batch),
   DDP before FSDP (one unit per block) at the same micro-batch, as it moves less data;
   activation checkpointing only when no micro-batch fits without it, as it costs a
   third more compute where accumulation costs none;
3. nothing fits, or the target is missed: the next width, up to one sequence per GPU.

A size with no layout that fits at any width is a ConfigError naming it. A target that
no width meets gets the fastest layout that fits, marked as missing it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kdlab.accelerators import GIB, Accelerator
from kdlab.errors import ConfigError
from kdlab.models.ladder import ModelShape, flops_per_token
from kdlab.models.memory import Layout, MemoryEstimate, memory_per_gpu

USABLE = 0.9  # of a GPU's memory; the rest is CUDA's context, NCCL buffers, fragmentation


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one job computes, as the plan needs it (kdlab.sweeps.JobPlan gives it)."""

    shape: ModelShape
    flops: float  # the job's compute: 3 F(N) D, plus F(N_T) D for a student
    tokens: int
    teacher: ModelShape | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    accelerator: Accelerator
    gpus_per_node: int = 8
    wall_seconds: float | None = None  # None: the fewest nodes that fit
    mfu: float = 0.4

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise ConfigError(f"--gpus-per-node must be at least 1, not {self.gpus_per_node}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu must be a fraction in (0, 1], not {self.mfu}")
        if self.wall_seconds is not None and self.wall_seconds <= 0:
            raise ConfigError("--wall-time must be positive")


@dataclasses.dataclass(frozen=True)
class JobFit:
    """A job under one layout: its peak memory and ideal wall time."""

    layout: Layout
    memory: MemoryEstimate
    seconds: float
    usable_bytes: float

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes


def parse_duration(text: str) -> float | None:
    """Seconds from '72h', '3d', '90m', '45s' or a bare number of seconds; None from 'none'."""
    if text.strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(f"--wall-time must be a duration such as 72h, 3d or 90m, not '{text}'")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def job_seconds(job: Workload, layout: Layout, target: Target) -> float:
    """Ideal wall time at the stated MFU; checkpointing recomputes the student's forward."""
    flops = job.flops + (flops_per_token(job.shape) * job.tokens if layout.checkpointing else 0)
    return flops / (layout.gpus * target.accelerator.bf16_peak_flops * target.mfu)


def fit(job: Workload, layout: Layout, target: Target) -> JobFit:
    return JobFit(
        layout,
        memory_per_gpu(job.shape, layout, job.teacher),
        job_seconds(job, layout, target),
        USABLE * target.accelerator.memory_bytes,
    )


def widths(global_batch: int, gpus_per_node: int) -> list[int]:
    """Node counts whose GPUs divide the global batch, fewest first."""
    most = global_batch // gpus_per_node
    return [n for n in range(1, most + 1) if global_batch % (n * gpus_per_node) == 0]


def _layouts(nodes: int, target: Target, global_batch: int) -> list[Layout]:
    """Layouts at ``nodes`` nodes in order of preference (module docstring, rule 2)."""
    per_step = global_batch // (nodes * target.gpus_per_node)  # sequences per GPU per step
    steps = [k for k in range(1, per_step + 1) if per_step % k == 0]
    plain = [(k, strategy, False) for k in steps for strategy in ("ddp", "fsdp")]
    checkpointed = [(k, "fsdp", True) for k in steps]
    return [
        Layout(strategy, checkpointing, nodes, target.gpus_per_node, per_step // k, k)
        for k, strategy, checkpointing in plain + checkpointed
    ]


def choose_layout(
    jobs: Sequence[Workload], target: Target, global_batch: int
) -> tuple[Layout, bool]:
    """One layout for jobs of one model size, and whether it meets the wall-time target."""
    if not widths(global_batch, target.gpus_per_node):
        raise ConfigError(
            f"a global batch of {global_batch} sequences does not split over nodes of "
            f"{target.gpus_per_node} GPUs"
        )
    fastest: tuple[float, Layout] | None = None
    for nodes in widths(global_batch, target.gpus_per_node):
        for layout in _layouts(nodes, target, global_batch):
            fits = [fit(job, layout, target) for job in jobs]
            if not all(f.fits for f in fits):
                continue
            longest = max(f.seconds for f in fits)
            if target.wall_seconds is None or longest <= target.wall_seconds:
                return layout, True
            if fastest is None or longest < fastest[0]:
                fastest = (longest, layout)
            break  # a later layout at this width is slower or no smaller
    if fastest is not None:
        return fastest[1], False
    raise ConfigError(_fits_nowhere(jobs, target, global_batch))


def _fits_nowhere(jobs: Sequence[Workload], target: Target, global_batch: int) -> str:
    gpus = global_batch  # one sequence per GPU: the smallest share of the batch
    nodes = max(1, gpus // target.gpus_per_node)
    smallest = Layout("fsdp", True, nodes, target.gpus_per_node, 1, 1)
    need = max(fit(job, smallest, target).memory.total for job in jobs)
    accelerator = target.accelerator
    return (
        f"model {jobs[0].shape.name} fits no layout on {accelerator.name}: even FSDP with "
        f"activation checkpointing and one sequence per GPU on {nodes} nodes needs "
        f"{need / GIB:.1f} GiB per GPU, over the {USABLE * accelerator.memory_bytes / GIB:.1f} "
        "GiB usable"
    )


def configured_layout(trainer: Mapping[str, Any], batch_size: int) -> Layout:
    """The layout a composed ``trainer`` config and ``data.module.batch_size`` give."""
    strategy = trainer.get("strategy")
    if isinstance(strategy, Mapping):
        target = str(strategy.get("_target_", ""))
        kind = strategy.get("kind") or ("fsdp" if "FSDP" in target else "ddp")
        checkpointing = bool(
            strategy.get("activation_checkpointing")
            or strategy.get("activation_checkpointing_policy")
        )
    else:  # "ddp", "fsdp", "auto", ... by name
        kind, checkpointing = ("fsdp" if "fsdp" in str(strategy) else "ddp"), False
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) else 1
    nodes = trainer.get("num_nodes", 1)
    gpus = devices * nodes
    if batch_size % gpus:
        raise ConfigError(
            f"data.module.batch_size {batch_size} does not split over the {gpus} devices of "
            f"trainer.devices x trainer.num_nodes"
        )
    accumulate = trainer.get("accumulate_grad_batches", 1)
    return Layout(kind, checkpointing, nodes, devices, batch_size // gpus, accumulate)


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """A sweep on ``target``: each job under its own layout and under the plan's."""

    target: Target
    jobs: list[Workload]
    configured: list[JobFit]  # per job, the layout the sweep launches with
    planned: list[JobFit]  # per job, the plan's layout for its model size
    meets_target: list[bool]  # per job: its size's planned layout meets the wall time

    def sizes_to_change(self) -> dict[str, Layout]:
        """Model name -> the plan's layout, where the sweep sets another."""
        return {
            job.shape.name: planned.layout
            for job, configured, planned in zip(
                self.jobs, self.configured, self.planned, strict=True
            )
            if configured.layout != planned.layout
        }


def plan_cluster(jobs: Sequence[tuple[Workload, Layout]], target: Target) -> ClusterPlan:
    """Choose a layout per model size (and global batch) and fit every job under both."""
    groups: dict[tuple[ModelShape, int], list[Workload]] = {}
    for job, layout in jobs:
        groups.setdefault((job.shape, layout.global_batch), []).append(job)
    chosen = {key: choose_layout(members, target, key[1]) for key, members in groups.items()}
    configured, planned, meets = [], [], []
    for job, layout in jobs:
        layout_planned, on_time = chosen[(job.shape, layout.global_batch)]
        configured.append(fit(job, layout, target))
        planned.append(fit(job, layout_planned, target))
        meets.append(on_time)
    return ClusterPlan(target, [job for job, _ in jobs], configured, planned, meets)


def layout_entry(layout: Layout) -> str:
    """A size's entry under ``layouts:`` in a sweep file (see sweeps/paper/_scale.yaml)."""
    checkpointing = "true" if layout.checkpointing else "false"
    return (
        f"{{strategy: {layout.strategy}, checkpointing: {checkpointing}, nodes: "
        f"{layout.nodes}, batch_size: {layout.micro_batch * layout.gpus}, "
        f"accumulate: {layout.accumulate}}}"
    )
