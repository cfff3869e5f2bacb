"""MFU and peak memory of kdlab training at the paper's sizes on this machine's GPU:
one command, one JSON.

    python3 benchmarks/gpu_mfu.py --out gpu_mfu.json          # every paper size that fits
    python3 benchmarks/gpu_mfu.py --sizes 103M,546M --steps 4
    python3 benchmarks/gpu_mfu.py --tiny                      # nano sizes on the CPU

Each size runs in a process of its own (a fresh CUDA context: peaks do not carry over):
kdlab's PretrainModule at the paper's shape (context 4096, V 32768) on random tokens,
bf16-mixed, in the layout `kdlab sweep plan --gpu <this GPU> --gpus-per-node 1` chooses
for one GPU (kdlab/cluster_plan.py: DDP or FSDP per block, activation checkpointing,
micro-batch), with up to --max-accumulate micro-batches per optimizer step. Per size:
the layout, seconds per optimizer step (median of the timed steps, CUDA synchronised),
tokens/s, MFU = 3 F(N) tokens/s over the GPU's dense bf16 peak (kdlab/accelerators.py;
F(N) is kdlab's exact count, as runs record it), the peak memory torch allocated and the
plan's estimate of it (kdlab/models/memory.py). A size the plan cannot fit on one GPU is
listed as skipped, with why. Fewer accumulation steps than a real run's put the AdamW
step's cost on fewer micro-batches, so the MFU is a slight underestimate.

--tiny trains the nano ladder on the CPU in fp32 (peak = process RSS, MFU against a
measured fp32 matmul peak): it checks the script end to end where there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kdlab.accelerators import ACCELERATORS, Accelerator  # noqa: E402
from kdlab.cluster_plan import Target, Workload, choose_layout  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402
from kdlab.models.ladder import LADDERS, flops_per_token, get_shape  # noqa: E402
from kdlab.models.memory import Layout, memory_per_gpu  # noqa: E402

GLOBAL_BATCH = {"paper": 256, "nano": 16}  # sequences per optimizer step, as the grids


def detect_accelerator(name: str | None, tiny: bool) -> Accelerator:
    """The table's entry for this GPU (or --gpu); the CPU itself in --tiny mode."""
    if tiny:
        from kdlab.hardware import measure_matmul_flops

        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Accelerator("cpu", memory, measure_matmul_flops("cpu"), "this machine's CPU, fp32")
    if name:
        return ACCELERATORS[name]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_mfu.py: no CUDA device; use --tiny to check the script on a CPU")
    device = torch.cuda.get_device_name().upper()
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    for accelerator in ACCELERATORS.values():
        family = accelerator.name.split("-")[0].upper()
        table_gib = accelerator.memory_bytes / 2**30
        same_bus = ("PCIE" in device) == ("pcie" in accelerator.name)
        if family in device and same_bus and abs(gib - table_gib) < 0.1 * table_gib:
            return accelerator
    raise SystemExit(f"gpu_mfu.py: {device} ({gib:.0f} GiB) is not in kdlab/accelerators.py")


def plan_one_gpu(ladder: str, size: str, accelerator: Accelerator) -> Layout:
    """The layout `kdlab sweep plan` chooses for a job of this size on one GPU."""
    shape = get_shape(ladder, size)
    workload = Workload(shape, 1.0, 1)  # no wall-time target: only memory decides
    target = Target(accelerator, gpus_per_node=1, wall_seconds=None)
    return choose_layout([workload], target, GLOBAL_BATCH[ladder])[0]


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train one size for warm-up + timed optimizer steps; its JSON record."""
    import lightning as L
    import torch

    from kdlab.modules import PretrainModule
    from kdlab.parallel import training_strategy

    ladder = "nano" if args.tiny else "paper"
    accelerator = detect_accelerator(args.gpu, args.tiny)
    shape = get_shape(ladder, args.one)
    planned = plan_one_gpu(ladder, args.one, accelerator)
    accumulate = min(planned.accumulate, args.max_accumulate)
    forced = ("fsdp", True) if args.checkpointing else (planned.strategy, planned.checkpointing)
    layout = Layout(*forced, 1, 1, planned.micro_batch, accumulate)
    steps = args.warmup + args.steps
    batches = steps * accumulate

    class Clock(L.Callback):
        """Seconds per optimizer step: window start to its optimizer step, synchronised."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.seconds: list[float] = []

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx % accumulate == 0:
                self.starts.append(self._now())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if (batch_idx + 1) % accumulate == 0:
                self.seconds.append(self._now() - self.starts[-1])

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        0, shape.vocab_size, (batches * layout.micro_batch, shape.n_ctx + 1), generator=generator
    )
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:]),
        batch_size=layout.micro_batch,
    )
    torch.manual_seed(0)
    module = PretrainModule(shape, total_steps=steps, flops_per_token=flops_per_token(shape))
    clock = Clock()
    fsdp = layout.strategy == "fsdp"
    trainer = L.Trainer(
        accelerator="cpu" if args.tiny else "gpu",
        devices=1,
        precision="32-true" if args.tiny else "bf16-mixed",
        strategy=training_strategy("fsdp", layout.checkpointing) if fsdp else "auto",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    if not args.tiny:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=data)
    timed = clock.seconds[args.warmup :]
    step_seconds = statistics.median(timed)
    tokens_per_step = layout.micro_batch * shape.n_ctx * accumulate
    tokens_per_second = tokens_per_step / step_seconds
    planned_bytes = memory_per_gpu(shape, layout).total  # for a GPU (the paper's vocabulary)
    if args.tiny:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    else:
        peak = torch.cuda.max_memory_allocated()
    return {
        "model": args.one,
        "layout": layout.describe(),
        "planned_accumulate": planned.accumulate,
        "tokens_per_step": tokens_per_step,
        "step_seconds_median": step_seconds,
        "step_seconds": timed,
        "tokens_per_second": tokens_per_second,
        "mfu": 3 * flops_per_token(shape) * tokens_per_second / accelerator.bf16_peak_flops,
        "peak_memory_bytes": peak,
        "peak_memory_is": "process RSS" if args.tiny else "torch.cuda.max_memory_allocated",
        "reserved_memory_bytes": None if args.tiny else torch.cuda.max_memory_reserved(),
        "planned_memory_bytes": None if args.tiny else planned_bytes,
        "planned_over_measured": None if args.tiny else planned_bytes / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated (default: every size of the ladder)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--max-accumulate", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--gpu", choices=list(ACCELERATORS), help="default: detected")
    parser.add_argument("--tiny", action="store_true", help="nano sizes on the CPU, fp32")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="train as FSDP with activation checkpointing, whatever the plan (its cost)",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per size")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one size, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    ladder = "nano" if args.tiny else "paper"
    accelerator = detect_accelerator(args.gpu, args.tiny)
    sizes = args.sizes.split(",") if args.sizes else list(LADDERS[ladder])
    records = []
    for size in sizes:
        try:
            layout = plan_one_gpu(ladder, size, accelerator)
        except ConfigError as err:
            records.append({"model": size, "skipped": str(err)})
            continue
        device = ["--tiny"] if args.tiny else ["--gpu", accelerator.name]
        command = [sys.executable, __file__, "--one", size, *device]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--max-accumulate", str(args.max_accumulate)]
        command += ["--checkpointing"] if args.checkpointing else []
        start = time.perf_counter()
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            records.append({"model": size, "layout": layout.describe(), "error": "timed out"})
            continue
        if child.returncode:
            error = (child.stderr.strip().splitlines() or ["no output"])[-1]
            records.append({"model": size, "layout": layout.describe(), "error": error})
            continue
        record = json.loads(child.stdout.strip().splitlines()[-1])
        record["wall_seconds"] = time.perf_counter() - start
        records.append(record)
        print(f"{size}: {record['layout']}, MFU {record['mfu']:.3f}", file=sys.stderr)

    import lightning
    import torch

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "device": accelerator.description,
        "accelerator": accelerator.name,
        "peak_flops": accelerator.bf16_peak_flops,
        "memory_bytes": accelerator.memory_bytes,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "forced_checkpointing": args.checkpointing,
        "sizes": records,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
