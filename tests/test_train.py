"""One run end to end: real Hydra config, real Lightning Trainer, real SQLite file."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdlab.data import build_corpus
from kdlab.rundb import RunStore
from tests.conftest import FAST, REPO, run_cli

TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
FULL_BATCH = ["data.module.batch_size=16"]  # the corpus' own batch, for the learning tests


def _db(root: Path) -> RunStore:
    return RunStore(f"sqlite:///{root}/runs/kdlab.db")


def test_row_holds_what_a_fit_needs_and_rerun_skips(train, tmp_path, capsys):
    from kdlab.run_plan import plan_run
    from tests.conftest import compose_run

    plan = plan_run(compose_run(tmp_path, *TINY))  # what the run will be, before it trains
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    row = train(*TINY)
    elapsed = time.perf_counter() - started
    after = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert row["status"] == "done"
    expected = {
        "key": plan.key,
        "role": "teacher",
        "split": "teacher",
        "corpus": "stdlib",
        "corpus_fingerprint": build_corpus({"name": "stdlib"}).info().fingerprint,
        "tokenizer": "byte",
        "vocab_size": 256,
        "n_ctx": 128,
        "ladder": "nano",
        "model": "L1",
        "n_layer": 1,
        "d_model": 16,
        "n_head": 1,
        "d_ff": 48,
        "n_params": 3408,  # matmuls 3 d^2 + d^2 + 3 d d_ff = 3328, and 80 norm weights
        "total_params": 3408 + 256 * 16,  # plus the one embedding, tied to the head
        "tokens": 16384,
        "batch_size": 4,
        "steps": 16384 // (4 * 128),  # 32 batches of 4 windows of 128
        "lr": 0.01,
        "seed": 0,
        "git_rev": _git_revision(),
        "run_dir": str(tmp_path / "runs" / plan.key),
        "failure": None,
        "teacher_key": None,
    }
    assert {k: row[k] for k in expected} == expected
    # forward FLOPs per token: matmuls 2 * 3328, causal attention 2 * 2 * 16 * 129 / 2,
    # the tied head 2 * 16 * 256
    assert row["flops_per_token"] == 6656 + 4128 + 8192
    assert row["flops"] == 3 * 18976 * 16384
    assert row["tokens_per_param"] == 16384 / 3408
    assert row["passes"] == 16384 / plan.data.split_tokens and 0 < row["passes"] < 1
    assert math.isfinite(row["val_loss"]) and row["val_loss"] < math.log(256)
    assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-6)
    assert 0 < row["wall_time_s"] < elapsed
    assert row["tokens_per_sec"] >= 16384 / row["wall_time_s"]  # timed over training only
    assert before <= row["created_at"] <= row["updated_at"] <= after
    config = row["config"]
    assert (config["model"]["name"], config["data"]["tokens"], config["seed"]) == ("L1", 16384, 0)
    assert config["paths"]["root_dir"] == str(tmp_path)
    curve = _db(tmp_path).curve(row["key"])
    assert [p["tokens"] for p in curve] == [8192, 16384]  # val.points=2, and the last step
    assert curve[-1]["val_loss"] == row["val_loss"]
    assert (Path(row["run_dir"]) / "model.pt").exists()

    again = train(*TINY)
    assert again["key"] == row["key"] and again["updated_at"] == row["updated_at"]
    assert "already done" in capsys.readouterr().out
    forced = train(*TINY, "force=true")
    assert forced["updated_at"] > row["updated_at"]
    assert forced["val_loss"] == row["val_loss"]  # the same seed and data: the same run


def _git_revision() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or None


def test_budget_three_ways_and_key_ignores_paths(train, tmp_path):
    by_m = train("model=nano_L1", "data.tokens_per_param=5")
    assert by_m["tokens"] == 5 * 3408
    flops = 3 * by_m["flops_per_token"] * 20000
    by_c = train("model=nano_L1", "data.tokens_per_param=null", f"data.flops={flops}")
    assert by_c["tokens"] == 20000
    # same science under another root: same key (paths never enter it)
    other = train("model=nano_L1", "data.tokens_per_param=5", root=tmp_path / "elsewhere")
    assert other["key"] == by_m["key"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=nano_L1", "model.name=L9"], "Unknown size 'L9' in ladder 'nano'"),
        (["model=nano_L1", "data.tokens=-5", "data.tokens_per_param=null"], "tokens"),
        (["model=nano_L1", "data.tokens=1000"], "exactly one"),
        (["model=nano_L1", "data.tokens_per_param=null"], "exactly one"),
        (["model=nano_L1", "data.module.corpus.name=nocorpus"], "nocorpus"),
        (["model=nano_L1", "db.url=nodb://x"], "cannot open the run database 'nodb://x'"),
        (["model=nano_L1", "data.module.val_tokens=100000000"], "validation"),
        (["model=nano_L1", "role=wizard"], "role must be one of"),
    ],
)
def test_bad_input_one_sentence_before_compute(train, tmp_path, overrides, message):
    from kdlab.errors import ConfigError
    from kdlab.rundb import RunDBError

    with pytest.raises((ConfigError, RunDBError)) as err:
        train(*overrides)
    text = str(err.value)
    assert message.lower() in text.lower()
    assert "\n" not in text
    db = tmp_path / "runs" / "kdlab.db"
    assert not db.exists() or not _db(tmp_path).find()


def test_bad_input_from_the_command_line_exits_2_and_keeps_recorded_runs(train, tmp_path):
    done = train(*TINY)
    out = run_cli(
        "kdlab.train",
        f"paths.root_dir={tmp_path}",
        "model=nano_L1",
        "data.tokens=-1",
        "data.tokens_per_param=null",
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("kdlab-train: error")]
    assert len(errors) == 1 and "tokens" in errors[0]
    assert _db(tmp_path).get(done["key"])["status"] == "done"


def test_diverged_run_is_recorded_as_failed(train, tmp_path):
    row = train(*TINY, "optim.lr=1e12", "optim.warmup_fraction=0.0001")
    assert row["status"] == "failed"
    assert row["failure"].startswith("diverged")
    from kdlab.rundb.query import fit_points

    fitted = fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "supervised")
    assert row["key"] not in set(fitted["run_key"])


def test_teacher_beats_unigram_entropy_of_builtin_corpus(train):
    row = train("model=nano_L2", "data.tokens=300000", "data.tokens_per_param=null", *FULL_BATCH)
    corpus = build_corpus({"name": "stdlib"})
    counts = Counter()
    for doc in corpus.documents():
        counts.update(doc.encode("utf-8"))
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())
    assert row["val_loss"] < unigram - 0.5, (row["val_loss"], unigram)


def test_markov_model_approaches_entropy_rate(train):
    row = train(
        "data=markov",
        "model=nano_L2",
        "data.tokens=600000",
        "data.tokens_per_param=null",
        *FULL_BATCH,
    )
    corpus = build_corpus(row["config"]["data"]["module"]["corpus"])
    h, uniform = corpus.entropy_rate, math.log(corpus.vocab_size)
    assert h < uniform - 1.0  # the test can tell learning from guessing
    # no model beats the entropy rate (beyond the sampling noise of 8k validation tokens),
    # and this one closes at least 90% of the gap between guessing and it
    assert h - 0.03 < row["val_loss"] < h + 0.1 * (uniform - h), (row["val_loss"], h)


def test_wandb_offline_run_holds_the_runs_numbers_and_curve(train, tmp_path):
    """The offline run's own files, read back: its name and group, the numbers runs are
    compared by (N, D, M, FLOPs and the science key's settings), and the validation losses
    the database's curve holds."""
    from tests.conftest import wandb_offline_run

    row = train(*TINY, "logger=wandb", "study=testsweep")
    [run_dir] = Path(row["run_dir"]).glob("wandb/offline-run-*")
    assert row["wandb_url"] == f"file://{run_dir / 'files'}"
    run, config, rows = wandb_offline_run(run_dir)
    assert run == {
        "run_id": row["key"],
        "project": "kdlab",
        "entity": "",  # offline: no W&B account
        "display_name": f"teacher-nano-L1-{row['key']}",
        "run_group": "testsweep",
        "job_type": "teacher",
        "tags": ["testsweep"],
    }
    numbers = {"key": row["key"], "role": "teacher", "model": "L1", "N": 3408, "D": 16384}
    assert {k: config[k] for k in numbers} == numbers
    assert (config["M"], config["flops"]) == (row["tokens_per_param"], row["flops"])
    assert config["corpus"] == row["corpus_fingerprint"] and config["seed"] == 0
    assert config["optim"] == row["config"]["optim"] and config["shape"]["d_model"] == 16
    logged = [r for r in rows if "val/loss" in r]
    curve = _db(tmp_path).curve(row["key"])
    assert sorted({r["val/loss"] for r in logged}) == sorted(p["val_loss"] for p in curve)
    assert logged[-1]["val/loss"] == row["val_loss"]
    assert logged[-1]["val/ppl"] == pytest.approx(row["val_ppl"], rel=1e-6)
    assert logged[-1]["trainer/global_step"] == row["steps"]


def test_killed_run_resumes_to_the_same_final_loss(tmp_path):
    args = [
        "model=nano_L1",
        "data.tokens=409600",  # 800 steps, several seconds: the kill lands mid-run
        "data.tokens_per_param=null",
        "checkpoint.every_n_steps=10",
        *FAST,
    ]
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab.train", f"paths.root_dir={killed_root}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(killed_root.glob("runs/*/checkpoints/last.ckpt")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = list(killed_root.glob("runs/*/checkpoints/last.ckpt"))
    assert ckpts, "the run never wrote a checkpoint"
    key = ckpts[0].parent.parent.name
    assert _db(killed_root).get(key)["status"] == "running"
    # the wall time of the segment before the kill travels in the checkpoint: make it
    # unmistakable, and the resumed run's recorded wall time must include it
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert 0 < state["global_step"] < 800  # killed part-way
    assert state["callbacks"]["TrainClock"]["wall_s"] > 0
    state["callbacks"]["TrainClock"]["wall_s"] = 10_000.0
    torch.save(state, ckpts[0])

    resumed = run_cli("kdlab.train", f"paths.root_dir={killed_root}", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = run_cli("kdlab.train", f"paths.root_dir={clean_root}", *args)
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = _db(killed_root).get(key), _db(clean_root).get(key)
    assert a["status"] == b["status"] == "done"
    assert a["val_loss"] == b["val_loss"]  # bit for bit: resuming changes nothing
    killed_curve, clean_curve = (
        [(p["step"], p["tokens"], p["val_loss"]) for p in _db(root).curve(key)]
        for root in (killed_root, clean_root)
    )
    assert len(clean_curve) >= 2 and killed_curve == clean_curve
    assert 10_000 < a["wall_time_s"] < 10_000 + 600 and b["wall_time_s"] < 600


def test_gradient_accumulation_counts_optimizer_steps(train):
    """With k batches per step the run still sees exactly D tokens, and its warm-up and
    cosine are laid over the optimizer steps it takes, so the schedule ends at its floor."""
    row = train(*TINY, "trainer.accumulate_grad_batches=3")
    batches = math.ceil(16384 / (row["batch_size"] * 128))
    assert row["tokens"] == 16384 and batches >= 6
    assert row["steps"] == math.ceil(batches / 3)
    ckpt = torch.load(
        Path(row["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == row["steps"]
    schedule = ckpt["lr_schedulers"][0]
    last, base = schedule["_last_lr"], schedule["base_lrs"]
    ratios = [a / b for a, b in zip(last, base, strict=True)]
    assert ratios == pytest.approx([row["config"]["optim"]["min_lr_ratio"]] * len(ratios))


def test_a_run_another_process_holds_is_skipped(train, tmp_path, capsys):
    import fcntl

    from kdlab.run_plan import plan_run
    from tests.conftest import compose_run

    plan = plan_run(compose_run(tmp_path, *TINY))
    plan.run_dir.mkdir(parents=True)
    with (plan.run_dir / ".lock").open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a second launch's job would
        assert train(*TINY) == {}
        assert "being trained by another process" in capsys.readouterr().out
        assert _db(tmp_path).get(plan.key) is None
    assert train(*TINY)["status"] == "done"


def test_a_file_system_without_flock_trains_without_the_lock(train, tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    row = train(*TINY)
    assert row["status"] == "done"
    lock = Path(row["run_dir"]) / ".lock"
    assert (
        f"kdlab: cannot lock {lock} (flock is not supported here: errno {errno.ENOLCK}); "
        "going on without the lock" in capsys.readouterr().err
    )


def test_a_run_prints_each_line_once_and_no_library_chatter(tmp_path):
    """A run from the command line: Lightning's lines once each (not once through its own
    handler and again through Hydra's), no cloud-logger tip, no alembic INFO lines and no
    warning about Lightning's internals; its own result line at the end."""
    result = run_cli("kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert sum("GPU available" in line for line in lines) == 1
    chatter = ("Tip:", "litlogger", "alembic", "LeafSpec", "IterableDataset", "val_check_interval")
    assert [line for line in lines if any(word in line for word in chatter)] == []
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"kdlab: run [0-9a-f]{16} done: val_loss \d\.\d{4}", last), last
