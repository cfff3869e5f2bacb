"""What W&B gets from a run, read back from the offline run's own files: the keys, the axis
each is drawn against, the config runs are compared by, the artifacts, and which W&B run a
resumed and a forced re-run log to. The CSV logger gets the same keys."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import yaml

from kdlab.modules.base import warmup_cosine
from kdlab.wandb_offline import wandb_records
from tests.conftest import compose_run, run_cli, wandb_offline_run

TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]  # 32 steps
TOKENS_PER_STEP = 4 * 128  # conftest's FAST batch of 4 windows of 128
RESERVED = {"_runtime", "_step", "_timestamp", "epoch", "trainer/global_step"}


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*"))


def test_wandb_and_csv_get_the_keys_axes_config_and_weights(train, tmp_path):
    row = train(
        *TINY, "logger=[csv,wandb]", "logger.wandb.artifacts=[weights]", "study=s", "family=f"
    )
    assert row["status"] == "done"
    run_dir = Path(row["run_dir"])
    [offline] = _offline_runs(run_dir)
    run, config, rows = wandb_offline_run(offline)
    records = wandb_records(offline)
    assert (run["run_id"], run["run_group"], run["tags"]) == (row["key"], "s/f", ["s", "f"])

    # each key's x-axis: tokens for curves, lr and throughput; FLOPs for the by_flops losses
    axes = {
        r.metric.name or r.metric.glob_name: (r.metric.step_metric, r.metric.options.step_sync)
        for r in records
        if r.WhichOneof("record_type") == "metric"
    }
    assert axes == {
        "trainer/global_step": ("", False),
        "tokens": ("", False),
        "flops": ("", False),
        "train/*": ("tokens", True),
        "val/*": ("tokens", True),
        "lr/*": ("tokens", True),
        "throughput/*": ("tokens", True),
        "by_flops/*": ("flops", True),
    }

    # the numbers runs are compared by, and the module's own hyperparameters
    numbers = {"N": 3408, "D": 16384, "role": "teacher", "study": "s", "family": "f"}
    numbers |= {"M": row["tokens_per_param"], "flops": row["flops"], "key": row["key"]}
    numbers |= {"attempt": 1, "rerun_of": None, "total_steps": 32, "lr": 0.01}
    assert {k: config[k] for k in numbers} == numbers
    warmup = config["warmup_steps"]
    assert warmup == 2  # 5% of 32 steps

    flops_per_token = row["flops"] / row["tokens"]
    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/loss" in r]
    assert len(train_rows) == 3 and len(val_rows) == 3  # every 10 steps; 2 points and the end
    for r in train_rows:
        step = r["trainer/global_step"]  # the step's index: tokens are after it
        assert r["tokens"] == (step + 1) * TOKENS_PER_STEP
        assert r["flops"] == pytest.approx(r["tokens"] * flops_per_token, rel=1e-12)
        assert r["by_flops/train_loss"] == r["train/loss"]
        lr = 0.01 * warmup_cosine(step, 32, warmup, 1e-3)
        assert r["lr/embedding"] == pytest.approx(lr, rel=1e-9)
        assert r["lr/hidden"] == pytest.approx(2 * lr, rel=1e-9)  # muP: lr / (16 / 32)
        assert r["throughput/tokens_per_sec"] > 0
        assert r["throughput/flops_per_sec"] == pytest.approx(
            r["throughput/tokens_per_sec"] * flops_per_token, rel=1e-5
        )
    assert [r["tokens"] for r in val_rows] == [8192, 16384, 16384]
    assert all(r["by_flops/val_loss"] == r["val/loss"] for r in val_rows)
    assert val_rows[-1]["flops"] == row["flops"] and val_rows[-1]["val/loss"] == row["val_loss"]

    # the CSV logger: the same keys (W&B's by_flops copies aside) and the same config
    [version] = (run_dir / "csv").glob("version_*")
    with open(version / "metrics.csv") as f:
        csv_keys = set(next(csv.reader(f))) - {"epoch", "step"}
    wandb_keys = {k for r in rows for k in r} - RESERVED
    assert csv_keys == {k for k in wandb_keys if not k.startswith("by_flops/")}
    assert {"lr/hidden", "lr/embedding", "lr/norms", "throughput/mfu"} <= csv_keys
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert {k: hparams[k] for k in numbers} == numbers

    # the final weights as an artifact, recorded in the row
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    files = {e.path: e.size for e in artifact.manifest.contents}
    assert files == {"model.pt": (run_dir / "model.pt").stat().st_size}
    assert (artifact.name, artifact.type) == (f"weights-{row['key']}", "model")
    assert row["wandb_artifacts"] == [
        {"name": artifact.name, "type": "model", "digest": artifact.digest, "version": None}
    ]


class _StopAt(L.Callback):
    """Fails the run after step ``step``, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def test_resumed_run_continues_its_wandb_run_and_a_forced_rerun_is_a_new_one(tmp_path, monkeypatch):
    import kdlab.runner as runner

    overrides = [*TINY, "logger=wandb", "checkpoint.every_n_steps=8"]
    run_callbacks = runner.run_callbacks
    monkeypatch.setattr(runner, "run_callbacks", lambda *a: [*run_callbacks(*a), _StopAt(20)])
    with pytest.raises(RuntimeError, match="stopped at step 20"):
        runner.execute(compose_run(tmp_path, *overrides))
    monkeypatch.undo()
    row = runner.execute(compose_run(tmp_path, *overrides))
    assert (row["status"], row["attempt"]) == ("done", 1)
    run_dir = Path(row["run_dir"])
    first, resumed = _offline_runs(run_dir)
    assert wandb_offline_run(first)[0]["run_id"] == row["key"]
    run, config, rows = wandb_offline_run(resumed)
    assert (run["run_id"], config["attempt"], config["rerun_of"]) == (row["key"], 1, None)
    # it went on from the checkpoint at step 16: no row from the steps before it
    assert min(r["tokens"] for r in rows if "tokens" in r) > 16 * TOKENS_PER_STEP

    forced = runner.execute(compose_run(tmp_path, *overrides, "force=true"))
    assert (forced["status"], forced["attempt"]) == ("done", 2)
    offline = _offline_runs(run_dir)  # the re-run's folder joins the run's; none is lost
    assert first in offline and resumed in offline and len(offline) == 3
    [rerun] = [p for p in offline if p not in (first, resumed)]
    run, config, rows = wandb_offline_run(rerun)
    assert run["run_id"] == f"{row['key']}-2"
    assert (config["attempt"], config["rerun_of"]) == (2, row["key"])
    assert min(r["tokens"] for r in rows if "tokens" in r) == 10 * TOKENS_PER_STEP  # from 0
    assert forced["wandb_url"] == f"file://{rerun / 'files'}"


def test_unknown_artifact_is_refused_before_any_row(tmp_path):
    out = run_cli(
        "kdlab.train",
        f"paths.root_dir={tmp_path}",
        *TINY,
        "logger=wandb",
        "logger.wandb.artifacts=[weights,checkpoints]",
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "kdlab-train: error: logger.wandb.artifacts names checkpoints; a run can log "
        "weights and teacher_cache"
    )
    assert not (tmp_path / "runs" / "kdlab.db").exists()


def test_fit_logs_its_json_as_an_artifact_and_records_it(tmp_path):
    from kdlab.laws.synthetic import paper_like_supervised_runs

    paper_like_supervised_runs(noise=0.005, seed=0).to_csv(tmp_path / "sup.csv", index=False)
    grid = tmp_path / "grid.json"  # one start: the fit itself is tested elsewhere
    grid.write_text(
        json.dumps(
            {"e": [0.5], "a": [8.0], "b": [10.0], "alpha": [0.4]} | {"beta": [0.4], "gamma": [0.5]}
        )
    )
    out = tmp_path / "fits" / "sup.json"
    runs = str(tmp_path / "sup.csv")
    fit = ["kdlab.cli", "fit", "supervised", "--csv", runs, "--grid", str(grid)]
    refused = run_cli(*fit, "--wandb")  # nowhere to log from: refused before fitting
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "kdlab: error: --wandb logs the fit JSON as a W&B artifact; name it with --out."
    )
    done = run_cli(*fit, "--out", str(out), "--wandb", "--wandb-project", "kd-fits")
    assert done.returncode == 0, done.stderr
    [offline] = sorted((tmp_path / "fits").glob("wandb/offline-run-*"))
    run, config, _ = wandb_offline_run(offline)
    assert (run["project"], run["job_type"], config["law"]) == ("kd-fits", "fit", "supervised")
    records = wandb_records(offline)
    [artifact] = [r.artifact for r in records if r.artifact.name]
    assert (artifact.name, artifact.type) == ("fit-supervised-sup", "fit")
    [entry] = artifact.manifest.contents
    doc = json.loads(out.read_text())
    record = doc.pop("wandb_artifact")
    assert record == {"name": artifact.name, "type": "fit", "digest": artifact.digest} | {
        "version": None  # numbered by W&B when the offline run is synced
    }
    # what was logged is the fit as written before its record was added
    assert entry.path == "sup.json" and entry.size == len(json.dumps(doc, indent=2) + "\n")
    # the coefficients are the run's summary: W&B's runs table compares fits
    summary = {i.key: json.loads(i.value_json) for r in records for i in r.summary.update}
    assert {k: summary[k] for k in doc["coefficients"]} == doc["coefficients"]


def test_cached_student_logs_the_logit_cache_it_read(train, tmp_path):
    from kdlab.cli import main
    from tests.conftest import FAST

    teacher = ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"]
    student = ["objective=distill", *TINY, "teacher.model=nano_L2", "teacher.tokens=32768"]
    folder = tmp_path / "cache"
    cache = ["teacher=cache", "teacher.cache.k=32", "teacher.cache.dtype=float32"]
    cache.append("teacher.cache.tokens=16384")
    cache.append(f"teacher.cache.dir={folder}")
    assert train(*teacher)["status"] == "done"
    assert main(["teacher", "cache", f"paths.root_dir={tmp_path}", *FAST, *student, *cache]) == 0
    row = train(*student, *cache, "logger=wandb", "logger.wandb.artifacts=[teacher_cache]")
    assert row["status"] == "done"
    [offline] = _offline_runs(Path(row["run_dir"]))
    [artifact] = [r.artifact for r in wandb_records(offline) if r.artifact.name]
    assert (artifact.name, artifact.type) == (
        f"teacher-logits-{row['teacher_inference_key']}",
        "teacher-logits",
    )
    files = {e.path: e.size for e in artifact.manifest.contents}
    on_disk = {
        f"cache/{p.relative_to(folder)}": p.stat().st_size for p in folder.rglob("*") if p.is_file()
    }
    assert files == on_disk and "cache/manifest.json" in files
    assert [a["name"] for a in row["wandb_artifacts"]] == [artifact.name]
