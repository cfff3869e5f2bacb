"""Memory and wall time planned before launch: the arithmetic against autograd's own count,
the choice of layout, `kdlab sweep plan --gpu`, and the paper grids' layouts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kdlab.accelerators import ACCELERATORS, GIB, Accelerator
from kdlab.cluster_plan import (
    USABLE,
    Target,
    Workload,
    choose_layout,
    configured_layout,
    fit,
    layout_entry,
    parse_duration,
    plan_cluster,
)
from kdlab.errors import ConfigError
from kdlab.models.activation_count import count_saved_bytes
from kdlab.models.ladder import LADDERS, flops_per_token, get_shape, total_params
from kdlab.models.memory import BF16, Layout, activation_bytes, matmul_params, memory_per_gpu
from tests.conftest import run_cli

PAPER = list(LADDERS["paper"])
H100 = ACCELERATORS["h100-80gb"]
TARGET = Target(H100, gpus_per_node=8, wall_seconds=72 * 3600, mfu=0.4)  # the grids' target
PAPER_SWEEPS = [
    "teachers_fixed_m",
    "teachers_isoflop",
    "supervised_ladder",
    "supervised_isoflop",
    "students_isoflop",
    "students_isoflop_teachers",
    "students_fixed_m",
    "ablation_lambda",
    "ablation_tau",
]


def _check_estimate(shape, micro_batch, params_dtype, checkpointing, teacher=None):
    """The estimate is the exact count (to the few bytes of saved scalars)."""
    count = count_saved_bytes(
        shape,
        micro_batch,
        params_dtype=params_dtype,
        checkpointing=checkpointing,
        teacher_shape=teacher,
    )
    residual = BF16 if params_dtype == torch.bfloat16 else 4
    estimate = activation_bytes(
        shape,
        count.tokens,
        checkpointing=checkpointing,
        residual_bytes=residual,
        distill=teacher is not None,
    )
    assert count.activations > 0
    assert estimate == pytest.approx(count.activations, rel=1e-6)
    return count


# the paper's vocabulary: the loss then checkpoints its chunks of 256 tokens, as the
# estimate assumes (a micro-batch of one chunk or less keeps its fp32 work instead)
V = 32768


@pytest.mark.parametrize(
    ("shape", "teacher", "micro_batch"),
    [
        (get_shape("nano", "L3", vocab_size=V), None, 4),
        (get_shape("micro", "L5", vocab_size=V), get_shape("micro", "L6", vocab_size=V), 2),
        (get_shape("paper", "103M"), get_shape("paper", "198M"), 1),
    ],
    ids=["nano_L3", "micro_L5+teacher", "103M+teacher"],
)
def test_activation_estimate_is_autograds_count(shape, teacher, micro_batch):
    """DDP (fp32 weights: fp32 residual stream, autocast casts each matmul's weight) and
    FSDP with and without checkpointing (bf16 weights), with and without a teacher."""
    count = _check_estimate(shape, micro_batch, torch.float32, False)
    assert count.weight_casts == pytest.approx(BF16 * matmul_params(shape), rel=1e-6)
    ckpt = _check_estimate(shape, micro_batch, torch.float32, True)  # blocks recast later
    assert ckpt.weight_casts == BF16 * shape.vocab_size * shape.d_model
    # bf16 weights: nothing cast to bf16; the final norm's gain is kept in fp32 (4 d bytes)
    sharded = _check_estimate(shape, micro_batch, torch.bfloat16, True, teacher)
    assert sharded.weight_casts == 4 * shape.d_model
    _check_estimate(shape, micro_batch, torch.bfloat16, False, teacher)


@pytest.mark.slow
@pytest.mark.parametrize("size", PAPER)
def test_activation_estimate_at_every_paper_size(size):
    """At the paper's shapes (context 4096, V 32768), fake tensors: no memory is used."""
    shape = get_shape("paper", size)
    _check_estimate(shape, 1, torch.float32, False)
    _check_estimate(shape, 1, torch.bfloat16, True)
    _check_estimate(shape, 1, torch.bfloat16, False, get_shape("paper", "7.75B"))


def test_memory_per_gpu_term_by_term():
    """The issue's arithmetic: fp32 weights, gradients and AdamW moments are 16 bytes a
    parameter under DDP (77 / 124 / 202 GB at 4.82B / 7.75B / 12.6B); FSDP divides them."""
    for size, gb in (("4.82B", 79), ("7.75B", 126), ("12.6B", 204)):
        shape = get_shape("paper", size)
        ddp = memory_per_gpu(shape, Layout("ddp", False, 1, 8, 1, 1))
        assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * total_params(shape)
        assert round((ddp.weights + ddp.gradients + ddp.optimizer) / 1e9) == gb
        fsdp = memory_per_gpu(shape, Layout("fsdp", False, 4, 8, 1, 1))
        assert fsdp.weights + fsdp.gradients + fsdp.optimizer == 16 * total_params(shape) / 32
        assert ddp.in_use == BF16 * matmul_params(shape)  # autocast's casts; FSDP gathers bf16
    shape, teacher = get_shape("paper", "198M"), get_shape("paper", "7.75B")
    student = memory_per_gpu(shape, Layout("ddp", False, 1, 8, 8, 4), teacher)
    assert student.teacher == BF16 * total_params(teacher)  # whole, bf16, on every GPU
    tokens = 8 * shape.n_ctx
    assert student.activations == activation_bytes(
        shape, tokens, checkpointing=False, residual_bytes=4, distill=True
    )
    assert student.total == pytest.approx(
        student.persistent + student.in_use + student.activations + student.transient
    )


def _workload(size: str, tokens_per_param: float = 20, teacher: str | None = None) -> Workload:
    shape = get_shape("paper", size)
    from kdlab.models.ladder import non_embedding_params

    tokens = round(tokens_per_param * non_embedding_params(shape))
    flops = 3 * flops_per_token(shape) * tokens
    teacher_shape = get_shape("paper", teacher) if teacher else None
    if teacher_shape:
        flops += flops_per_token(teacher_shape) * tokens
    return Workload(shape, flops, tokens, teacher_shape)


def test_the_plan_takes_the_fewest_nodes_for_the_target_then_the_cheapest_memory():
    seven = _workload("7.75B")
    layout, on_time = choose_layout([seven], TARGET, 256)
    # 693 h on one node at 40% MFU: 16 nodes (43 h) meet 72 h, 8 nodes (87 h) do not
    assert (layout.nodes, layout.strategy, on_time) == (16, "fsdp", True)
    # no target: the fewest nodes that fit; one node holds 7.75B sharded, a sequence a GPU
    unhurried = dataclasses.replace(TARGET, wall_seconds=None)
    layout, _ = choose_layout([seven], unhurried, 256)
    assert layout == Layout("fsdp", False, 1, 8, 1, 32)
    # checkpointing only where no micro-batch fits without it: 12.6B on 40 GB GPUs
    small = dataclasses.replace(unhurried, accelerator=ACCELERATORS["a100-40gb"])
    assert choose_layout([_workload("12.6B")], small, 256)[0] == Layout("fsdp", True, 1, 8, 2, 16)
    # accumulation before checkpointing, DDP before FSDP: a small model on one node
    layout, _ = choose_layout([_workload("546M")], TARGET, 256)
    assert (layout.strategy, layout.checkpointing, layout.micro_batch, layout.accumulate) == (
        "ddp",
        False,
        8,
        4,
    )
    assert layout.global_batch == 256
    for size in PAPER:  # every size fits an 80 GB GPU at M = 20, the batch kept whole
        layout, _ = choose_layout([_workload(size)], TARGET, 256)
        assert layout.global_batch == 256
        assert memory_per_gpu(get_shape("paper", size), layout).total <= USABLE * H100.memory_bytes
    # a target no width meets: the fastest layout that fits, flagged
    hurried = dataclasses.replace(TARGET, wall_seconds=3600)
    layout, on_time = choose_layout([seven], hurried, 256)
    assert (layout.nodes, on_time) == (32, False)


def test_a_job_that_fits_no_layout_is_one_sentence():
    tiny = Accelerator("tiny-2gb", 2 * GIB, 100e12, "a 2 GB card")
    with pytest.raises(ConfigError) as err:
        choose_layout([_workload("12.6B")], Target(tiny), 256)
    assert str(err.value).startswith(
        "model 12.6B fits no layout on tiny-2gb: even FSDP with activation checkpointing "
        "and one sequence per GPU on 32 nodes needs "
    )
    assert str(err.value).endswith("GiB per GPU, over the 1.8 GiB usable")
    with pytest.raises(ConfigError, match="256 sequences does not split over nodes of 512"):
        choose_layout([_workload("103M")], Target(H100, gpus_per_node=512), 256)


def test_configured_layout_reads_the_trainer_config():
    fsdp = {
        "strategy": {"_target_": "kdlab.parallel.training_strategy", "kind": "fsdp"},
        "devices": 8,
        "num_nodes": 4,
        "accumulate_grad_batches": 2,
    }
    assert configured_layout(fsdp, 128) == Layout("fsdp", False, 4, 8, 4, 2)
    assert configured_layout({"strategy": "ddp", "devices": 2}, 16) == Layout(
        "ddp", False, 1, 2, 8, 1
    )
    with pytest.raises(ConfigError, match="batch_size 12 does not split over the 8 devices"):
        configured_layout({"strategy": "ddp", "devices": 8}, 12)
    entry = layout_entry(Layout("fsdp", True, 4, 8, 2, 2))
    assert entry == "{strategy: fsdp, checkpointing: true, nodes: 4, batch_size: 64, accumulate: 2}"


def test_parse_duration():
    assert [parse_duration(t) for t in ("72h", "3d", "90m", "45", "1.5h", "none")] == [
        259200,
        259200,
        5400,
        45,
        5400,
        None,
    ]
    with pytest.raises(ConfigError, match="--wall-time must be a duration such as 72h"):
        parse_duration("three days")


def _grid_plan(name: str, target: Target = TARGET):
    from kdlab.sweeps import plan_sweep, sweep_file

    jobs = plan_sweep(sweep_file(f"paper/{name}")).jobs
    return jobs, plan_cluster([(job.workload(), job.layout) for job in jobs], target)


def _check_grid(name: str) -> None:
    jobs, cluster = _grid_plan(name)
    assert cluster.sizes_to_change() == {}, name  # the sweep file holds the plan's layouts
    for job, configured in zip(jobs, cluster.configured, strict=True):
        assert configured.fits and configured.seconds <= TARGET.wall_seconds, job.overrides
        assert configured.layout.global_batch == 256, job.overrides  # the science's batch
    assert all(cluster.meets_target)


def test_teachers_grid_layouts_are_the_plans():
    _check_grid("teachers_fixed_m")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_every_paper_grid_layout_is_the_plans(name):
    _check_grid(name)


def _plan_output(capsys, *args: str) -> str:
    from kdlab.cli import main

    assert main(["sweep", "plan", "paper/teachers_fixed_m", *args]) == 0
    return capsys.readouterr().out


def test_sweep_plan_with_a_gpu_shows_memory_layout_and_time(capsys):
    out = _plan_output(capsys, "--gpu", "h100-80gb")
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if "x8 mb" in line}
    assert sorted(rows) == ["1.82B", "2.72B", "4.82B", "546M", "7.75B", "975M"]
    cells = [c.strip() for c in rows["7.75B"].split("│")[1:-1]]
    # layout, GiB of weights, grads, AdamW, activations, teacher, other, total; fits; time
    assert cells[3:] == [
        "fsdp 16x8 mb2 x1",
        "0.2",
        "0.2",
        "0.5",
        "63.4",
        "0.0",
        "3.2",
        "67.5",
        "yes",
        "43.3h",
    ]
    assert "every job fits on h100-80gb and meets the 72.0h target" in out
    assert "GiB per GPU" not in _plan_output(capsys)  # without --gpu, the plan as it was


def test_sweep_plan_on_a_smaller_gpu_says_what_does_not_fit_and_what_would(capsys):
    out = _plan_output(capsys, "--gpu", "a100-40gb", "--mfu", "0.5")
    assert "do not fit on a100-40gb" in out
    assert "put these lines under 'layouts:' in teachers_fixed_m.yaml" in out
    suggested = [line.strip() for line in out.splitlines() if ": {strategy:" in line]
    a100 = dataclasses.replace(TARGET, accelerator=ACCELERATORS["a100-40gb"], mfu=0.5)
    _, cluster = _grid_plan("teachers_fixed_m", a100)
    expected = [f"{m}: {layout_entry(layout)}" for m, layout in cluster.sizes_to_change().items()]
    assert suggested == expected and len(expected) >= 3


def test_an_unknown_gpu_is_one_sentence_and_exit_2_before_composing():
    out = run_cli("kdlab.cli", "sweep", "plan", "paper/teachers_fixed_m", "--gpu", "tpu-v5")
    assert out.returncode == 2 and not out.stdout
    assert out.stderr == (
        "kdlab: error: unknown GPU 'tpu-v5'; known GPUs: " + ", ".join(ACCELERATORS) + "\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mfu", "1.5"], "--mfu must be a fraction in (0, 1], not 1.5"),
        (["--wall-time", "soon"], "--wall-time must be a duration such as 72h, 3d or 90m"),
        (["--gpus-per-node", "0"], "--gpus-per-node must be at least 1, not 0"),
    ],
)
def test_bad_plan_options_are_one_sentence_and_exit_2(args, message, capsys):
    from kdlab.cli import main

    assert main(["sweep", "plan", "paper/teachers_fixed_m", "--gpu", "h100-80gb", *args]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(f"kdlab: error: {message}") and not out.out
    assert len(out.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpu_benchmark_runs_in_its_tiny_mode(tmp_path):
    """benchmarks/gpu_mfu.py on the CPU: the nano ladder, FSDP with checkpointing forced,
    one JSON with a timed step, an MFU and a peak per size (on a GPU: paper sizes)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "gpu_mfu.json"
    command = [sys.executable, "benchmarks/gpu_mfu.py", "--tiny", "--sizes", "L1,L2"]
    command += ["--steps", "2", "--warmup", "1", "--checkpointing", "--out", str(out)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # one command, one JSON
    assert result["accelerator"] == "cpu" and result["forced_checkpointing"] is True
    assert [r["model"] for r in result["sizes"]] == ["L1", "L2"]
    for record in result["sizes"]:
        assert record["layout"] == "fsdp+ckpt 1x1 mb16 x1", record
        assert len(record["step_seconds"]) == 2 and record["step_seconds_median"] > 0
        assert record["tokens_per_step"] == 16 * 128
        assert 0 < record["mfu"] < 1 and record["peak_memory_bytes"] > 0


def _readme_row(size: str) -> str:
    workload = _workload(size)
    layout, _ = choose_layout([workload], TARGET, 256)
    job = fit(workload, layout, TARGET)
    memory = job.memory
    states = memory.weights + memory.gradients + memory.optimizer
    other = memory.total - memory.persistent - memory.activations
    strategy = layout.strategy.upper() + (" + checkpointing" if layout.checkpointing else "")
    cells = [
        size,
        strategy,
        f"{layout.nodes} x {layout.gpus_per_node}",
        f"{layout.micro_batch} x {layout.accumulate}",
        *(f"{b / GIB:.1f}" for b in (states, memory.activations, other, memory.total)),
        f"{job.seconds / 3600:.1f} h",
    ]
    return "| " + " | ".join(cells) + " |"


def test_readme_layout_table_is_the_plan():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text().splitlines()
    rows = [line for line in readme if line[:2] == "| " and line.split("|")[1].strip() in PAPER]
    assert rows == [_readme_row(size) for size in PAPER]
