"""The teacher-logit cache: written once by `kdlab teacher cache`, read by teacher=cache
students that follow the online top-k student step by step, counted once in compute,
refused when it is another teacher's, split's, tokenizer's or k's, or corrupted."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from kdlab.cli import main
from kdlab.errors import ConfigError
from kdlab.rundb import RunStore
from tests.conftest import FAST, compose_run, run_cli

TEACHER = ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"]
STUDENT = [
    "objective=distill",
    "model=nano_L1",
    "data.tokens=16384",
    "data.tokens_per_param=null",
    "teacher.model=nano_L2",
    "teacher.tokens=32768",
]


def _cache(folder: Path, k: int = 32, dtype: str = "float32") -> list[str]:
    return [
        "teacher=cache",
        f"teacher.cache.k={k}",
        f"teacher.cache.dtype={dtype}",
        "teacher.cache.tokens=16384",
        f"teacher.cache.dir={folder}",
    ]


def _make_cache(root: Path, *overrides: str) -> int:
    return main(["teacher", "cache", f"paths.root_dir={root}", *FAST, *overrides])


def _db(root: Path) -> RunStore:
    return RunStore(f"sqlite:///{root}/runs/kdlab.db")


def _step_losses(root: Path, *overrides: str) -> list[float]:
    """The training loss of every step, from the run's own plan, module and data."""
    from kdlab.run_plan import plan_run
    from kdlab.runner import build_module

    cfg = compose_run(root, *overrides)
    plan = plan_run(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, plan)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=plan.steps,
        limit_val_batches=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        callbacks=[Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=plan.data)
    assert len(losses) == plan.steps
    return losses


def test_cached_student_follows_the_online_top_k_student_step_by_step(train, tmp_path):
    """fp32 storage: the cached student's loss equals the online student's with top_k = k
    at every step to 1e-5 (only the teacher's batch composition differs: float rounding).
    fp16 storage rounds the log-probabilities to 11 significant bits; its losses stay
    within 2e-3 of the online ones over the run (measured: about 3e-4)."""
    train(*TEACHER)
    exact, rounded = tmp_path / "fp32", tmp_path / "fp16"
    assert _make_cache(tmp_path, *STUDENT, *_cache(exact)) == 0
    assert _make_cache(tmp_path, *STUDENT, *_cache(rounded, dtype="float16")) == 0

    online = _step_losses(tmp_path, *STUDENT, "objective.top_k=32")
    cached = _step_losses(tmp_path, *STUDENT, *_cache(exact))
    half = _step_losses(tmp_path, *STUDENT, *_cache(rounded, dtype="float16"))
    np.testing.assert_allclose(cached, online, rtol=0, atol=1e-5)
    np.testing.assert_allclose(half, online, rtol=0, atol=2e-3)
    # the untruncated teacher is another objective: the check above could tell them apart
    full = _step_losses(tmp_path, *STUDENT)
    assert max(abs(a - b) for a, b in zip(full, online, strict=True)) > 1e-2

    # 32 tokens of 256 per position: ids fit a byte, values fp32, plus rest and target
    manifest = json.loads((exact / "manifest.json").read_text())
    assert manifest["bytes_per_token"] == 32 * (4 + 1) + 4 + 4
    half_manifest = json.loads((rounded / "manifest.json").read_text())
    assert half_manifest["bytes_per_token"] == 32 * (2 + 1) + 2 + 2


def test_students_share_one_cache_counted_once(train, tmp_path, capsys):
    from kdlab.rundb.query import fit_points, study_compute

    teacher = train(*TEACHER)
    folder = tmp_path / "cache"
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    # made once: asked again, it is found, not rewritten
    before = (folder / "manifest.json").stat().st_mtime_ns
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    assert "already in" in capsys.readouterr().out
    assert (folder / "manifest.json").stat().st_mtime_ns == before

    import kdlab.teacher

    def no_loading(path):
        raise AssertionError(f"a cached student loaded its teacher's weights {path}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kdlab.teacher, "load_weights", no_loading)
        first = train(*STUDENT, *_cache(folder))
        second = train(*STUDENT, *_cache(folder), "model=nano_L2")  # same seed, same windows
    online = train(*STUDENT, "objective.top_k=32")

    [row] = _db(tmp_path).find_inference()
    assert row["kind"] == "logit_cache" and row["status"] == "done"
    assert row["teacher_key"] == teacher["key"]
    f_t = teacher["flops_per_token"]
    assert row["tokens"] == (128 + 63) * 128  # the seed's 128 windows and 63 validation ones
    assert row["flops"] == pytest.approx(f_t * row["tokens"])
    for student in (first, second):
        assert student["teacher_kind"] == "cache"
        assert student["teacher_key"] == teacher["key"]
        assert student["teacher_inference_key"] == row["key"]
        assert student["flops_teacher_logits"] == 0.0
        assert student["teacher_loss"] == pytest.approx(teacher["val_loss"])
    assert online["flops_teacher_logits"] == pytest.approx(f_t * 16384)

    compute = study_compute(f"sqlite:///{tmp_path}/runs/kdlab.db").set_index("part")["flops"]
    assert compute["teacher inference: caches and generated text"] == pytest.approx(row["flops"])
    assert compute["teacher inference: online"] == pytest.approx(f_t * 16384)
    students = first["flops"] + second["flops"] + online["flops"]
    assert compute["students"] == pytest.approx(students)
    assert compute["total"] == pytest.approx(
        teacher["flops"] + students + f_t * 16384 + row["flops"]
    )
    capsys.readouterr()
    assert main(["runs", "--db", f"sqlite:///{tmp_path}/runs/kdlab.db", "compute"]) == 0
    table = capsys.readouterr().out
    assert f"{row['flops']:.4g}" in table and "caches and generated text" in table
    labels = set(fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "distillation")["kd_objective"])
    assert labels == {
        "forward_kl lambda=1 tau=1 top_k=32",
        "forward_kl lambda=1 tau=1 cache_k=32:float32",
    }


def test_cache_resumes_from_its_last_finished_shard(train, tmp_path, monkeypatch):
    import kdlab.teachers.cache as cache

    train(*TEACHER)
    monkeypatch.setattr(cache, "SHARD_BYTES", 40 * 168 * 128)  # 40 windows of 168 B a token
    folder = tmp_path / "cache"
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    shards = sorted(folder.glob("student-*.npy"))
    assert len(shards) == 4  # 128 windows
    manifest = json.loads((folder / "manifest.json").read_text())
    # as if killed while writing the third shard: no manifest, no third sidecar
    (folder / "manifest.json").unlink()
    shards[2].with_name(shards[2].name + ".sha256").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    rewritten = [p.name for p in shards if p.stat().st_mtime_ns != stamps[p.name]]
    assert rewritten == [shards[2].name]
    assert json.loads((folder / "manifest.json").read_text()) == manifest


def test_corrupted_or_truncated_shard_is_never_read(train, tmp_path):
    train(*TEACHER)
    folder = tmp_path / "cache"
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    shard = folder / "student-00000.npy"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[-100] ^= 0xFF  # one byte inside the data, the header intact
    shard.write_bytes(bytes(flipped))
    with pytest.raises(ConfigError, match="fails its sha256 check") as err:
        train(*STUDENT, *_cache(folder))
    assert "\n" not in str(err.value) and str(shard) in str(err.value)
    shard.write_bytes(original[:-1000])
    with pytest.raises(ConfigError, match="is truncated"):
        train(*STUDENT, *_cache(folder))
    assert not _db(tmp_path).find(role="student")  # refused before any database row
    shard.write_bytes(original)
    assert train(*STUDENT, *_cache(folder))["status"] == "done"


def test_another_teachers_tokenizers_contexts_or_ks_cache_is_refused(train, tmp_path):
    teacher = train(*TEACHER)
    other = train("model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null")
    folder = tmp_path / "cache"
    assert _make_cache(tmp_path, *STUDENT, *_cache(folder)) == 0
    # named by its folder alone, the cache's own teacher facts are checked
    by_folder = [*STUDENT[:4], *_cache(folder)[:3], f"teacher.cache.dir={folder}"]
    cases = [
        (
            [*STUDENT[:4], f"teacher.key={other['key']}", *_cache(folder)],
            f"does not match the student: teacher {teacher['key']} vs the student's {other['key']}",
        ),
        (["data=markov", *by_folder], "tokenizer byte vs the student's identity-64"),
        ([*by_folder, "data.module.val_tokens=16384"], "val_tokens 8192 vs the student's 16384"),
        ([*by_folder, "model.n_ctx=64"], "context 128 vs the student's 64"),
        ([*STUDENT, *_cache(folder, k=16)], "k 32 vs the student's 16"),
        ([*by_folder, "seed=3"], "seed 0's first 128 samples and the student (seed 3)"),
        ([*STUDENT, *_cache(folder), "objective.top_k=64"], "top_k 64 is more than"),
        ([*STUDENT, *_cache(folder), "objective.divergence=reverse_kl"], "is infinite"),
        ([*STUDENT, *_cache(tmp_path / "none")], "no finished teacher cache"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            train(*overrides)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not _db(tmp_path).find(role="student")
    # from the command line: the sentence and exit 2
    out = run_cli(
        "kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *STUDENT, *_cache(folder, k=16)
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("kdlab-train: error: the teacher cache")


def test_teacher_cache_runs_with_the_threads_the_config_asks_for(tmp_path):
    """threads=1 holds for the cache's teacher forward as for a run: with torch's default
    on a busy 2-core machine, the README's cache line took 280 s instead of 22."""
    import argparse

    import torch

    from kdlab.teachers.cli import _each

    seen = []

    def build(cfg, device, batch, skip):
        seen.append(torch.get_num_threads())
        return {"key": "k"}

    before = torch.get_num_threads()
    overrides = [
        "objective=distill",
        "teacher=cache",
        "model=nano_L1",
        f"paths.root_dir={tmp_path}",
    ]
    args = argparse.Namespace(
        overrides=[*overrides, "threads=1"], sweep=None, device="cpu", batch=16
    )
    try:
        torch.set_num_threads(2)
        assert _each(args, "cache", build) == 0
        assert seen == [1]
        args.overrides = overrides  # threads unset: torch's own choice is left alone
        torch.set_num_threads(2)
        assert _each(args, "cache", build) == 0
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(before)
