"""Paper-scale training settings on CPU: FSDP2 per block, meta-device init, sharded
checkpoints that resume, the teacher in the compute dtype, the resume lookup.

FSDP runs here on CPU processes with gloo. One process in most of these tests; two in the
test of the sharded draw, gradients and clipping, and in the slow test, launched as a
user would and killed mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from kdlab.models.gpt import GPT
from kdlab.models.ladder import get_shape
from kdlab.rundb import RunStore
from tests.conftest import FAST, REPO, compose_run, fresh_world, write_sharded_checkpoint

FSDP_CKPT = (
    "+trainer.strategy={_target_:kdlab.parallel.training_strategy,"
    "kind:fsdp,activation_checkpointing:true}"
)
RUN = ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"]


@pytest.fixture
def process_group(monkeypatch):
    """A world of one, as Lightning's FSDP starts it in this process; ended afterwards so
    later tests start without one. One thread: Lightning's launcher resets torch's
    threads unless OMP_NUM_THREADS is set, and two threads on a busy machine are ~5x
    slower here. Lightning writes the world's address into os.environ (MASTER_PORT...):
    they go again afterwards, or a later test's DDP child would inherit that port."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # recorded: undone after the test
        if not os.environ[name]:
            monkeypatch.delenv(name)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class _StopAt(L.Callback):
    """Fails the run after step ``step``, as a crash or a pre-emption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def _record_trainer(monkeypatch, seen: dict) -> None:
    """Keep the Trainer the runner builds next as ``seen["trainer"]``."""
    import kdlab.runner as runner

    build_trainer = runner.build_trainer

    def recording(*args, **kwargs):
        seen["trainer"] = trainer = build_trainer(*args, **kwargs)
        return trainer

    monkeypatch.setattr(runner, "build_trainer", recording)


def test_fsdp_run_shards_blocks_and_resumes_from_its_sharded_checkpoint(
    tmp_path, process_group, monkeypatch
):
    import kdlab.runner as runner
    from kdlab.parallel import BlockFSDPStrategy

    overrides = [*RUN, FSDP_CKPT, "checkpoint.every_n_steps=4"]
    clean = runner.execute(compose_run(tmp_path / "clean", *overrides))

    seen: dict[str, object] = {}
    run_callbacks = runner.run_callbacks

    def stopping(*args):
        callbacks = [*run_callbacks(*args), _StopAt(6)]
        seen["callbacks"] = callbacks
        return callbacks

    monkeypatch.setattr(runner, "run_callbacks", stopping)
    _record_trainer(monkeypatch, seen)
    with pytest.raises(RuntimeError, match="stopped at step 6"):
        runner.execute(compose_run(tmp_path / "stopped", *overrides))
    trainer = seen["trainer"]
    assert isinstance(trainer.strategy, BlockFSDPStrategy)
    model = trainer.lightning_module.model
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    # one FSDP unit per block, each checkpointed; the embedding is in the GPT's root unit
    assert all(isinstance(b, FSDPModule) and isinstance(b, CheckpointWrapper) for b in model.blocks)
    assert isinstance(model, FSDPModule) and not isinstance(model.wte, FSDPModule)
    assert all(isinstance(p, DTensor) for p in model.parameters())

    last = tmp_path / "stopped" / "runs" / clean["key"] / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()  # sharded: a directory
    assert [p.name for p in last.glob("*.distcp")] == ["__0_0.distcp"]
    meta = torch.load(last / "meta.pt", weights_only=False)
    assert meta["global_step"] == 4 and "state_dict" not in meta  # weights are in the shards

    monkeypatch.undo()
    # the next save (step 8) is cut short after its shards are written: the checkpoint
    # of step 4 stays whole, shards and all, and the run resumes from it as if no save
    # had been tried (Lightning wrote the shards over the old ones in place)
    import lightning.pytorch.strategies.model_parallel as lightning_fsdp

    step4 = {p.name: p.read_bytes() for p in last.iterdir() if p.is_file()}
    write_shards = lightning_fsdp._distributed_checkpoint_save

    def cut_short(state, path):
        write_shards(state, path)
        raise OSError("No space left on device")

    monkeypatch.setattr(lightning_fsdp, "_distributed_checkpoint_save", cut_short)
    with pytest.raises(OSError, match="No space left"):
        runner.execute(compose_run(tmp_path / "stopped", *overrides))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in last.iterdir() if p.is_file()} == step4
    staged = last.parent / ".kdlab-aside" / "last.ckpt.partial"
    assert staged.is_dir() and not (staged / "meta.pt").exists()  # never resumed from

    resumed = runner.execute(compose_run(tmp_path / "stopped", *overrides))
    assert sorted(p.name for p in staged.parent.iterdir()) == []  # cleared, swapped, discarded
    assert resumed["key"] == clean["key"] and resumed["status"] == clean["status"] == "done"
    assert resumed["val_loss"] == pytest.approx(clean["val_loss"], abs=1e-5)
    assert resumed["steps"] == clean["steps"] == 32768 // (clean["batch_size"] * 128)

    # the final weights are gathered whole, with the GPT's own names, and load as a teacher
    from kdlab.teacher import load_weights

    teacher = load_weights(Path(resumed["run_dir"]) / "model.pt")
    blob = torch.load(Path(clean["run_dir"]) / "model.pt", weights_only=True)
    assert sorted(blob["state_dict"]) == sorted(GPT(get_shape("nano", "L2")).state_dict())
    for name, tensor in teacher.state_dict().items():
        torch.testing.assert_close(tensor, blob["state_dict"][name], atol=1e-5, rtol=0)


def test_bf16_mixed_fsdp_gathers_bf16_and_keeps_fp32_master_weights(
    train, tmp_path, process_group, monkeypatch
):
    """The paper's precision under FSDP: units gather and reduce in bf16 while the
    sharded master weights stay fp32, and the run ends near its fp32 twin (the same
    initial weights: both are drawn by the sharded path)."""
    seen = {}
    _record_trainer(monkeypatch, seen)
    short = ["model=nano_L2", "data.tokens=16384", "data.tokens_per_param=null", FSDP_CKPT]
    fp32 = train(*short, root=tmp_path / "fp32")
    bf16 = train(*short, "trainer.precision=bf16-mixed", root=tmp_path / "bf16")  # same key
    model = seen["trainer"].lightning_module.model
    policy = model.blocks[0]._get_fsdp_state()._mp_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert bf16["status"] == fp32["status"] == "done"
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], abs=0.01)  # 2e-5 here


def test_a_feature_matching_student_trains_under_fsdp(train, tmp_path, process_group, monkeypatch):
    """A student matching hidden states and an attention map under FSDP: its GPT's
    features() and its projections run sharded (each projection a unit of its own, whose
    gradient is averaged over ranks as the test of three ranks below checks), and a
    trained parameter left outside every unit is named."""
    from torch.distributed.fsdp import FSDPModule

    from kdlab.parallel import outside_units
    from tests.test_distill import STUDENT, TEACHER

    train(*TEACHER)
    seen = {}
    _record_trainer(monkeypatch, seen)
    features = ["objective=features", "objective.features.attention_weight=0.5"]
    student = train(*STUDENT, *features, FSDP_CKPT)
    assert student["status"] == "done" and student["teacher_key"]
    assert 0 < student["val_loss"] < 4.5, student["val_loss"]  # uniform: ln 256 = 5.55
    module = seen["trainer"].lightning_module
    assert [type(p).__name__ for p in module.matching.projections] == ["FSDPLinear"]
    assert all(isinstance(p, FSDPModule) for p in module.matching.projections)
    assert outside_units(module) == []
    holder = nn.Module()
    holder.student, holder.extra = module, nn.Linear(2, 2, bias=False)
    assert outside_units(holder) == ["extra.weight"]


RANKS = 3  # micro L4's width of 128 does not split evenly over 3: the shards are uneven


def _loss(gpt: nn.Module, projection: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """A loss through every path a student takes: logits, a hidden state through a feature
    projection, an attention map; a mean over the batch."""
    features = gpt.features(idx, attention_layers=(2,))
    hidden = projection(features.hidden[1])
    return sum(t.float().square().mean() for t in (features.logits, hidden, features.attention[2]))


def _batch(vocab_size: int) -> torch.Tensor:
    """One sequence per rank, each its own."""
    return torch.randint(0, vocab_size, (RANKS, 64), generator=torch.Generator().manual_seed(3))


def _sharded_worker(rank: int, address: str, rng_state: torch.Tensor, out: Path) -> None:
    """One of RANKS ranks: kdlab's sharded GPT (checkpointed blocks) and a projection
    unit, trained 3 AdamW steps on this rank's own sequence with gradients clipped by
    torch's clip_grad_norm_ on the shards. Rank 0 writes down what the test compares."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    from kdlab.parallel import sharded_gpt

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=RANKS)
    mesh = init_device_mesh("cpu", (RANKS,))
    shape = get_shape("micro", "L4")
    gpt = sharded_gpt(shape, rng_state, mesh, torch.device("cpu"), MixedPrecisionPolicy(), True)
    whole = StateDictOptions(full_state_dict=True)
    drawn = get_model_state_dict(gpt, options=whole)
    torch.manual_seed(1)
    projection = nn.Linear(shape.d_model, 2 * shape.d_model, bias=False)
    fully_shard(projection, mesh=mesh)
    params = [*gpt.parameters(), *projection.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    idx = _batch(shape.vocab_size)[rank : rank + 1]
    norms = []
    for _ in range(3):
        _loss(gpt, projection, idx).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=0.01)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        optimizer.step()
        optimizer.zero_grad()
    trained = get_model_state_dict(gpt, options=whole)
    trained_projection = get_model_state_dict(projection, options=whole)
    if rank == 0:
        uneven = sorted({p.shape[0] % RANKS for p in gpt.parameters()})
        torch.save(
            {
                "drawn": drawn,
                "norms": torch.stack(norms),
                "trained": trained,
                "projection": trained_projection,
                "uneven": uneven,
            },
            out,
        )
    torch.distributed.destroy_process_group()


def test_a_sharded_gpt_is_drawn_trained_and_clipped_as_one_process_would(tmp_path):
    """RANKS ranks, each holding its part of every weight (unevenly split): the drawn
    weights are exactly those ``GPT.reset_parameters(generator)`` draws from the same RNG
    state (rule 1 of the muP init, in a fixed order, whatever the world size); features(),
    a projection unit, gradients averaged over ranks, clipping by the global norm and 3
    AdamW steps end where one process training on all the ranks' sequences ends."""
    import torch.multiprocessing as mp

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    torch.manual_seed(7)
    rng_state = torch.get_rng_state()
    out = tmp_path / "rank0.pt"
    mp.spawn(_sharded_worker, args=(address, rng_state, out), nprocs=RANKS)
    sharded = torch.load(out, weights_only=True)
    assert sharded["uneven"] == [0, 1, 2]  # evenly and both ways unevenly split weights

    eager = GPT(get_shape("micro", "L4"))
    generator = torch.Generator()
    generator.set_state(rng_state)
    eager.reset_parameters(generator)
    assert sorted(sharded["drawn"]) == sorted(eager.state_dict())
    for name, tensor in eager.state_dict().items():
        assert torch.equal(sharded["drawn"][name], tensor), name
    for name, tensor in eager.state_dict().items():  # rule 1, on a model this wide
        if "norm" in name:
            assert torch.equal(tensor, torch.ones_like(tensor)), name
        elif name == "wte.weight":
            assert tensor.std().item() == pytest.approx(32**-0.5, rel=0.05)
        else:
            assert tensor.std().item() == pytest.approx(tensor.shape[1] ** -0.5, rel=0.05), name

    torch.manual_seed(1)
    projection = nn.Linear(eager.shape.d_model, 2 * eager.shape.d_model, bias=False)
    params = [*eager.parameters(), *projection.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    idx = _batch(eager.shape.vocab_size)  # every rank's sequence: the mean of their losses
    norms = []
    for _ in range(3):
        _loss(eager, projection, idx).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm=0.01))
        optimizer.step()
        optimizer.zero_grad()
    assert min(norms) > 0.01  # so the clip acted at every step
    torch.testing.assert_close(sharded["norms"], torch.stack(norms), atol=0, rtol=1e-5)
    # Adam moves each weight by about lr whatever its gradient's size, so a gradient
    # within summation noise of zero may move by up to lr either way: measured 1.5e-5
    # (0.15% of lr) at 2 of 49152 weights; a gradient not averaged over ranks moves all
    tolerance = dict(atol=1e-4, rtol=0)
    for name, tensor in eager.state_dict().items():
        torch.testing.assert_close(sharded["trained"][name], tensor, **tolerance)
        assert not torch.equal(sharded["trained"][name], sharded["drawn"][name]), name
    torch.testing.assert_close(sharded["projection"]["weight"], projection.weight, **tolerance)


def test_training_strategy_kinds():
    from lightning.pytorch.strategies import DDPStrategy

    from kdlab.parallel import BlockFSDPStrategy, training_strategy

    ddp = training_strategy("ddp")
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs == {"gradient_as_bucket_view": True}
    fsdp = training_strategy("fsdp", activation_checkpointing=True)
    assert isinstance(fsdp, BlockFSDPStrategy) and fsdp._save_distributed_checkpoint
    assert fsdp.activation_checkpointing and not training_strategy("fsdp").activation_checkpointing
    with pytest.raises(ValueError, match="'ddp' or 'fsdp', not 'zero3'"):
        training_strategy("zero3")
    with pytest.raises(ValueError, match="fsdp strategy only"):
        training_strategy("ddp", activation_checkpointing=True)


def test_resume_takes_the_newest_complete_checkpoint_file_or_sharded_directory(tmp_path, capsys):
    from kdlab.checkpoints import REPLACED, SHARDED_METADATA, aside
    from kdlab.runner import Attempt, _resume_checkpoint

    attempt = Attempt(1, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert _resume_checkpoint(attempt) is None
    older = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, older)
    os.utime(older, (1000, 1000))
    write_sharded_checkpoint(last, 2, metadata=False)  # shards being written
    assert _resume_checkpoint(attempt) == older
    torch.save({"global_step": 2}, last / SHARDED_METADATA)
    assert _resume_checkpoint(attempt) == last
    os.utime(last / SHARDED_METADATA, (500, 500))
    assert _resume_checkpoint(attempt) == older
    # a swap cut between its renames: the previous checkpoint, whole, under its aside name
    previous = aside(last, REPLACED)
    previous.parent.mkdir()
    last.rename(previous)
    os.utime(previous / SHARDED_METADATA, (2000, 2000))
    assert _resume_checkpoint(attempt) == previous
    hpc_previous = write_sharded_checkpoint(aside(tmp_path / "hpc_ckpt_2.ckpt", REPLACED), 5)
    assert _resume_checkpoint(attempt) == hpc_previous
    # a sharded checkpoint whose metadata does not load is set aside, as a file would be
    (hpc_previous / SHARDED_METADATA).write_bytes(b"x")
    assert _resume_checkpoint(attempt) == previous
    assert not hpc_previous.exists() and "does not load" in capsys.readouterr().err
    [damaged] = (tmp_path / ".kdlab-aside").glob("hpc_ckpt_2.ckpt.old.corrupt-*")
    assert (damaged / SHARDED_METADATA).read_bytes() == b"x"
    # as is one an older kdlab's FSDP1 strategy wrote, whose items this one cannot load
    fsdp1 = write_sharded_checkpoint(tmp_path / "hpc_ckpt_3.ckpt", 6, {"model.w": torch.ones(2)})
    assert _resume_checkpoint(attempt) == previous and not fsdp1.exists()
    assert "its shards hold model.w, as kdlab's FSDP1 strategy wrote them" in (
        capsys.readouterr().err
    )


def test_a_sharded_checkpoint_swap_cut_anywhere_leaves_a_whole_one_to_resume(tmp_path, monkeypatch):
    """swap_in_directory cut after each of its steps (and a deletion cut short): a resume
    finds a complete checkpoint every time, the newest whole one once the new one is in,
    and the next save finishes what the cut one left."""
    import kdlab.checkpoints as checkpoints
    from kdlab.checkpoints import SHARDED_METADATA, clear_staged, swap_in_directory
    from kdlab.runner import Attempt, _resume_checkpoint

    attempt = Attempt(1, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"

    def save(step: int) -> Path:
        return write_sharded_checkpoint(clear_staged(last), step)

    def resumed_step() -> int:
        return torch.load(_resume_checkpoint(attempt) / SHARDED_METADATA)["global_step"]

    swap_in_directory(save(4), last)
    assert resumed_step() == 4

    # each of the two renames cut in turn (it raises, as a kill would end the swap there)
    real_rename = Path.rename
    for cut_at, expected in ((1, 4), (2, 4)):
        calls = []

        def rename(self, target, cut_at=cut_at, calls=calls):
            calls.append(target)
            if len(calls) == cut_at:
                raise KeyboardInterrupt
            return real_rename(self, target)

        staged = save(8)  # torch's writer renames too: only the swap's renames are cut
        monkeypatch.setattr(Path, "rename", rename)
        with pytest.raises(KeyboardInterrupt):
            swap_in_directory(staged, last)
        monkeypatch.setattr(Path, "rename", real_rename)
        assert resumed_step() == expected
        swap_in_directory(save(8), last)  # the next save recovers
        assert resumed_step() == 8 and sorted(p.name for p in last.parent.iterdir()) == [
            ".kdlab-aside",
            "last.ckpt",
        ]
        assert not any((last.parent / ".kdlab-aside").iterdir())
        swap_in_directory(save(4), last)

    # the previous checkpoint's deletion cut short: without its metadata it is not resumed
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda *a, **k: None)
    swap_in_directory(save(12), last)
    leftover = last.parent / ".kdlab-aside" / "last.ckpt.old"
    assert leftover.is_dir() and not (leftover / SHARDED_METADATA).exists()
    assert resumed_step() == 12


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_teacher_is_placed_in_the_compute_dtype(tmp_path, precision):
    """A GPT teacher is cast to bf16 under bf16 training (fp32 otherwise), not sharded
    and not trained; a Markov oracle keeps its exact fp32 log-probabilities."""
    from kdlab.runner import build_module, plan_run

    cfg = compose_run(
        tmp_path,
        "data=markov",
        "model=nano_L1",
        "data.tokens=8192",
        "data.tokens_per_param=null",
        "objective=distill",
        "teacher=oracle",
    )
    plan = plan_run(cfg)
    oracle = build_module(cfg, plan)
    quiet = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,  # as conf/trainer/cpu.yaml (Lightning's cannot count bf16)
    )
    L.Trainer(max_steps=1, limit_val_batches=0, precision=precision, **quiet).fit(
        oracle, datamodule=plan.data
    )
    assert oracle.teacher.log_probs.dtype == torch.float32

    teacher = GPT(get_shape("nano", "L1", vocab_size=plan.data.vocab_size)).requires_grad_(False)
    module = build_module(cfg, plan)
    module._teacher = [teacher]
    before = [p.detach().float().clone() for p in teacher.parameters()]
    L.Trainer(max_steps=2, limit_val_batches=0, precision=precision, **quiet).fit(
        module, datamodule=plan.data
    )
    expected = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    assert {p.dtype for p in teacher.parameters()} == {expected}
    for old, new in zip(before, teacher.parameters(), strict=True):
        torch.testing.assert_close(new.float(), old, atol=0.01 * old.abs().max().item(), rtol=0)
    assert not any(p is q for p in teacher.parameters() for q in module.parameters())


@pytest.mark.slow
def test_two_process_fsdp_run_killed_mid_run_resumes_to_the_same_loss(tmp_path):
    """Two CPU processes under FSDP, killed after their first sharded checkpoint and
    launched again, end where an uninterrupted two-process run ends."""
    args = [
        *FAST,
        "trainer=ddp",
        "trainer.devices=2",
        *RUN[:1],
        "data.tokens=102400",  # 200 steps of 4 x 128 tokens: the kill lands mid-run
        "data.tokens_per_param=null",
        "checkpoint.every_n_steps=10",
        FSDP_CKPT.lstrip("+"),
    ]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    world = {**fresh_world(), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in {**os.environ, **world}.items() if v is not None}
    command = [sys.executable, "-m", "kdlab.train", *args]
    proc = subprocess.Popen(
        [*command, f"paths.root_dir={killed}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the kill takes both ranks
    )
    deadline = time.time() + 900  # the second rank starts slowly on a busy machine
    metadata = "runs/*/checkpoints/last.ckpt/meta.pt"
    while time.time() < deadline and not list(killed.glob(metadata)):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [meta] = list(killed.glob(metadata))
    assert 0 < torch.load(meta, weights_only=False)["global_step"] < 200  # killed part-way
    assert len(list(meta.parent.glob("*.distcp"))) == 2  # one shard per rank

    for root in (killed, clean):
        out = subprocess.run(
            [*command, f"paths.root_dir={root}"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
    key = meta.parent.parent.parent.name
    a, b = (RunStore(f"sqlite:///{r}/runs/kdlab.db").get(key) for r in (killed, clean))
    assert a["status"] == b["status"] == "done" and a["steps"] == b["steps"] == 200
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


def test_the_split_of_a_batch_is_not_science(train, tmp_path):
    """Sequences per optimizer step are science; how they are split over accumulation
    steps is hardware (sample g of a run is the same window however it is split): a run
    of 2 sequences x 2 steps is the finished 4 x 1 run, and a student split another way
    than its teacher finds it."""
    from tests.test_distill import STUDENT, TEACHER

    whole = train(*TEACHER, "data.module.batch_size=4")  # 64 steps: enough to learn
    split = train(*TEACHER, "data.module.batch_size=2", "trainer.accumulate_grad_batches=2")
    assert split["key"] == whole["key"] and split["updated_at"] == whole["updated_at"]  # skipped
    student = train(*STUDENT, "data.module.batch_size=2", "trainer.accumulate_grad_batches=2")
    assert student["status"] == "done" and student["teacher_key"] == whole["key"]
    assert (student["batch_size"], student["config"]["trainer"]["accumulate_grad_batches"]) == (
        2,
        2,
    )
    # an optimizer step of another size is other science
    other = train(*TEACHER, "data.module.batch_size=2")
    assert other["key"] != whole["key"]
