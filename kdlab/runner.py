"""One run, end to end: plan before compute, skip or resume, fit, record.

``kdlab.run_plan.plan_run`` does everything that can fail on bad input (shape, data,
budget, database, teacher) so a mistake costs no compute and writes nothing; ``execute``
then trains and records.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kdlab.callbacks import CurveRecorder, TrainClock
from kdlab.hardware import matmul_peak_flops
from kdlab.identity import ROLE_SPLIT
from kdlab.models.ladder import total_params
from kdlab.modules import DivergedError
from kdlab.run_plan import RunPlan, plan_run
from kdlab.rundb import announce
from kdlab.rundb.query import divergence_label
from kdlab.teacher import save_weights, submodule_state
from kdlab.teachers import connect

LOCK_FILE = ".lock"


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def jobs_threads() -> int | None:
    """Torch threads per job when a launcher runs several jobs at once on this machine."""
    try:
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
    except (ValueError, AttributeError):
        return None
    if not n_jobs or n_jobs < 2:
        return None
    return max(1, (os.cpu_count() or 1) // n_jobs)


def _loggers(cfg: DictConfig, plan: RunPlan) -> list[Any]:
    loggers = []
    for name, node in (cfg.logger or {}).items():
        if name == "wandb":
            sweep = [v for v in (cfg.study, cfg.family) if v]
            loggers.append(
                instantiate(
                    node,
                    group=node.group or "/".join(sweep) or None,
                    tags=[*node.tags, *sweep],
                    name=f"{plan.role}-{plan.shape.ladder}-{plan.shape.name}-{plan.key}",
                    id=plan.key,
                    save_dir=str(plan.run_dir),
                    job_type=plan.role,
                )
            )
            loggers[-1].log_hyperparams(_wandb_config(plan))
        else:
            loggers.append(instantiate(node, save_dir=str(plan.run_dir)))
    return loggers


def _wandb_config(plan: RunPlan) -> dict[str, Any]:
    """The numbers runs are compared by, flat so W&B's table shows them as columns."""
    return {
        "key": plan.key,
        "role": plan.role,
        "model": plan.shape.name,
        "N": plan.n_params,
        "D": plan.tokens,
        "M": plan.tokens_per_param,
        "flops": plan.train_flops,
        **plan.science,
    }


def _row_fields(cfg: DictConfig, plan: RunPlan) -> dict[str, Any]:
    shape, data = plan.shape, plan.data
    return dict(
        role=plan.role,
        study=cfg.study,
        family=cfg.family,
        corpus=data.corpus.name,
        corpus_fingerprint=data.fingerprint,
        tokenizer=data.tokenizer_name,
        vocab_size=shape.vocab_size,
        n_ctx=shape.n_ctx,
        split=ROLE_SPLIT[plan.role],
        ladder=shape.ladder,
        model=shape.name,
        n_layer=shape.n_layer,
        d_model=shape.d_model,
        n_head=shape.n_head,
        d_ff=shape.d_ff,
        n_params=plan.n_params,
        total_params=total_params(shape),
        tokens=plan.tokens,
        tokens_per_param=plan.tokens_per_param,
        flops_per_token=plan.flops_per_token,
        flops=plan.train_flops,
        passes=data.passes,
        steps=plan.steps,
        batch_size=data.batch_size,
        lr=cfg.optim.lr,
        seed=cfg.seed,
        git_rev=git_revision(),
        run_dir=str(plan.run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        **_teacher_fields(cfg, plan),
    )


def _teacher_fields(cfg: DictConfig, plan: RunPlan) -> dict[str, Any]:
    """What the distillation law and compute accounting need about the teacher."""
    teacher, objective = plan.teacher, cfg.objective
    if teacher is None:
        return {}
    # a cache's or a generated corpus' teacher inference is counted once, in its own
    # teacher_inference row, not by each student that reads it
    logits = 0.0 if teacher.inference_key else teacher.flops_per_token * plan.tokens
    return dict(
        teacher_key=teacher.key,
        teacher_kind=teacher.kind,
        teachers=list(teacher.members) or None,
        teacher_inference_key=teacher.inference_key,
        teacher_model=teacher.name,
        teacher_n_params=teacher.n_params,
        teacher_tokens=teacher.tokens,
        teacher_loss=teacher.loss,
        kd_lambda=objective.get("kd_lambda"),
        kd_tau=objective.get("tau"),
        divergence=divergence_label(objective),
        flops_student=plan.train_flops,
        flops_teacher_logits=logits,
        flops_teacher_pretraining=teacher.pretraining_flops,
    )


def _measured_teacher_loss(plan: RunPlan, final: dict[str, float]) -> dict[str, float]:
    """L_T measured on the validation tokens, for a teacher that came without one."""
    if plan.teacher is None or plan.teacher.loss is not None or "val/teacher_loss" not in final:
        return {}
    return {"teacher_loss": float(final["val/teacher_loss"])}


def build_module(cfg: DictConfig, plan: RunPlan) -> L.LightningModule:
    optim = cfg.optim
    warmup = optim.warmup_steps
    if warmup is None:
        warmup = max(1, round(optim.warmup_fraction * plan.steps))
    # a fixed warm-up (the paper's 2000 steps) never takes more than a quarter of a short run
    warmup = min(warmup, max(1, plan.steps // 4))
    factory = instantiate(cfg.objective)
    extras = connect(plan.teacher, plan.data) if plan.teacher is not None else {}
    if plan.feature_flops_per_token:
        extras["feature_flops_per_token"] = plan.feature_flops_per_token
    return factory(
        **extras,
        shape=plan.shape,
        total_steps=plan.steps,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        warmup_steps=int(warmup),
        min_lr_ratio=optim.min_lr_ratio,
        z_loss=optim.z_loss,
        flops_per_token=plan.flops_per_token,
    )


def run_callbacks(cfg: DictConfig, plan: RunPlan) -> list[L.Callback]:
    """The callbacks every run trains with; the first is its TrainClock."""
    tokens_per_step = plan.data.batch_size * plan.shape.n_ctx * plan.accumulate
    return [
        TrainClock(),
        CurveRecorder(plan.store, plan.key, tokens_per_step),
        ModelCheckpoint(
            dirpath=plan.run_dir / "checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            enable_version_counter=False,  # always last.ckpt, the file resume looks for
        ),
        ThroughputMonitor(batch_size_fn=lambda b: b[0].size(0), length_fn=lambda b: b[0].numel()),
    ]


def build_trainer(
    cfg: DictConfig, plan: RunPlan, callbacks: list[L.Callback], **overrides: Any
) -> L.Trainer:
    """The run's Trainer: exactly plan.steps steps, validation spread over the run."""
    # Lightning counts the interval in batches: whole accumulation windows, so every
    # validation falls on an optimizer step and its curve point on the right tokens
    k = plan.accumulate
    batches = plan.data.num_steps
    interval = min(batches, max(k, batches // max(1, cfg.val.points) // k * k))
    settings: dict[str, Any] = dict(
        max_steps=plan.steps,
        max_epochs=1,
        val_check_interval=interval,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        logger=False,
        default_root_dir=str(plan.run_dir),
    )
    settings.update(overrides)
    return instantiate(cfg.trainer, **settings)


def _device_peak(trainer: L.Trainer, module: L.LightningModule) -> float:
    """One device's matmul peak in the precision the run computes in."""
    dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
    return matmul_peak_flops(str(module.device), dtype)


def _rank_zero() -> bool:
    """Every DDP rank runs this code; only global rank 0 writes the database and files."""
    return rank_zero_only.rank == 0


def _resume_checkpoint(plan: RunPlan) -> Path | None:
    """The newest of kdlab's last.ckpt and a SLURM pre-emption checkpoint, if any."""
    found = [*plan.run_dir.glob("hpc_ckpt_*.ckpt"), plan.checkpoint]
    found = [p for p in found if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


@contextlib.contextmanager
def _claimed(cfg: DictConfig, plan: RunPlan) -> Iterator[bool]:
    """Hold an exclusive lock on the run's directory; yields False when another process
    holds it.

    Two launches of one sweep (two SLURM arrays, a relaunch while the first still runs)
    would otherwise train the same run twice into one directory. Multi-device runs are
    not locked: every rank runs this code, and one rank skipping would hang the others.
    A file system without flock (some Lustre and NFS mounts) gets a warning and no lock.
    """
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if devices not in (1, "1") or nodes != 1:
        yield True
        return
    with (plan.run_dir / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as err:
            print(f"kdlab: cannot lock {plan.run_dir} ({err}); training without a lock")
        yield True  # the lock goes with the handle


def _clear_run_dir(run_dir: Path) -> None:
    """Everything of a finished run but its lock file, for a forced re-run."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Train (or skip, or resume) the run ``cfg`` describes; return its database row."""
    plan = plan_run(cfg)
    if _rank_zero():
        announce(plan.store.url, plan.db_source)
    row = plan.store.get(plan.key)
    if row and row["status"] == "done" and not cfg.force:
        return _skipped(plan, row)
    with _claimed(cfg, plan) as ours:
        if not ours:
            print(f"kdlab: run {plan.key} is being trained by another process; skipped")
            return row or {}
        row = plan.store.get(plan.key)  # it may have finished while we waited
        if row and row["status"] == "done" and not cfg.force:
            return _skipped(plan, row)
        return _train(cfg, plan, row)


def _skipped(plan: RunPlan, row: dict[str, Any]) -> dict[str, Any]:
    print(f"kdlab: run {plan.key} is already done (val_loss {row['val_loss']:.4f}); skipped")
    return row


def _train(cfg: DictConfig, plan: RunPlan, row: dict[str, Any] | None) -> dict[str, Any]:
    record = _rank_zero()
    # force re-runs a finished run; an unfinished one (perhaps training elsewhere) resumes
    if record and cfg.force and row and row["status"] == "done":
        _clear_run_dir(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_checkpoint(plan)
    threads = cfg.threads or jobs_threads()
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, plan)
    if record:
        plan.store.start(plan.key, **_row_fields(cfg, plan))

    callbacks = run_callbacks(cfg, plan)
    clock = callbacks[0]
    loggers = _loggers(cfg, plan)
    trainer = build_trainer(cfg, plan, callbacks, logger=loggers or False)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=plan.data, ckpt_path=str(resume) if resume else None)
        final = trainer.validate(module, datamodule=plan.data, verbose=False)[0]
    except DivergedError as err:
        if record:
            wall = clock.earlier_wall_s + time.perf_counter() - start
            plan.store.fail(plan.key, f"diverged: {err}", wall_time_s=wall)
        _finish_loggers(loggers, "failed")
        print(f"kdlab: run {plan.key} diverged ({err}); recorded as failed")
        return plan.store.get(plan.key)
    except BaseException as err:
        if record:
            plan.store.fail(plan.key, f"{type(err).__name__}: {err}".strip())
        _finish_loggers(loggers, "failed")
        raise
    # every rank takes part: under FSDP this gathers the sharded weights into one state
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return {}
    val_loss = float(final["val/loss"])
    flops_per_sec = clock.tokens_per_sec * module.train_flops_per_token()
    plan.store.add_curve_point(plan.key, trainer.global_step, plan.tokens, val_loss)
    save_weights(module.model, plan.run_dir, state_dict=submodule_state(state, "model."))
    plan.store.finish(
        plan.key,
        val_loss=val_loss,
        val_ppl=float(final["val/ppl"]),
        val_kl=final.get("val/kl_teacher"),
        val_top1_agreement=final.get("val/top1_agreement"),
        val_ece=final.get("val/ece"),
        **_measured_teacher_loss(plan, final),
        tokens_per_sec=clock.tokens_per_sec,
        mfu=flops_per_sec / (trainer.world_size * _device_peak(trainer, module)),
        wall_time_s=clock.earlier_wall_s + time.perf_counter() - start,
        wandb_url=_wandb_url(loggers),
    )
    _finish_loggers(loggers)
    print(f"kdlab: run {plan.key} done: val_loss {val_loss:.4f}")
    return plan.store.get(plan.key)


def _wandb_url(loggers: list[Any]) -> str | None:
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        url = getattr(experiment, "url", None)
        if url or hasattr(experiment, "dir"):
            return url or f"file://{experiment.dir}"
    return None


def _finish_loggers(loggers: list[Any], status: str = "success") -> None:
    """Close each logger so the next job in the same process starts a new W&B run."""
    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
