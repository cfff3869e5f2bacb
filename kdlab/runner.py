"""One run, end to end: plan before compute, skip or resume, fit, record.

``kdlab.run_plan.plan_run`` does everything that can fail on bad input (shape, data,
budget, database, teacher) so a mistake costs no compute and writes nothing; ``execute``
then trains and records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from kdlab.callbacks import (
    CurveRecorder,
    Heartbeat,
    ProgressFile,
    TrainClock,
    TrainingProgress,
    device_peak,
)
from kdlab.checkpoints import (
    ASIDE,
    REPLACED,
    AtomicCheckpointIO,
    aside,
    resume_point,
)
from kdlab.cluster_env import adopt_task_rank
from kdlab.identity import ROLE_SPLIT
from kdlab.locking import claimed
from kdlab.loggers import build_loggers, finish_loggers, log_run_artifacts, wandb_url
from kdlab.models.ladder import total_params
from kdlab.modules import DivergedError
from kdlab.parallel import full_state_dict
from kdlab.preemption import PreemptionCheckpoint
from kdlab.processes import RunInterrupted, stop_signals, threads_per_job
from kdlab.progress import JobProgress
from kdlab.quiet import quiet_training_logs
from kdlab.run_plan import RunPlan, plan_run
from kdlab.rundb import announce, shown_url
from kdlab.rundb.query import divergence_label
from kdlab.teacher import WEIGHTS, save_weights, submodule_state
from kdlab.teachers import connect

LOCK_FILE = ".lock"
ATTEMPT_DIR = "attempt-"  # run_dir/attempt-<n>: a forced re-run, until it replaces the run
WANDB_DIR = "wandb"  # wandb.init(dir=...) writes its runs there


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
    return threads_per_job(n_jobs)


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
        config=_recorded_config(cfg),
        **_teacher_fields(cfg, plan),
    )


def _recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as the row keeps it: the database URL without its password."""
    config = OmegaConf.to_container(cfg, resolve=True)
    db = config.get("db") or {}
    if db.get("url"):
        db["url"] = shown_url(db["url"])
    return config


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


def run_callbacks(
    cfg: DictConfig,
    plan: RunPlan,
    attempt: Attempt | None = None,
    progress: JobProgress | None = None,
) -> list[L.Callback]:
    """The callbacks every run trains with; the first is its TrainClock."""
    attempt = attempt or Attempt(1, plan.run_dir)
    tokens_per_step = plan.data.batch_size * plan.shape.n_ctx * plan.accumulate
    clock = TrainClock()
    reporting = [ProgressFile(progress, tokens_per_step, clock)] if progress else []
    return [
        clock,
        *reporting,
        CurveRecorder(plan.store, plan.key, tokens_per_step, attempt.number),
        ModelCheckpoint(
            dirpath=attempt.dir / "checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            enable_version_counter=False,  # always last.ckpt, the file resume looks for
        ),
        TrainingProgress(tokens_per_step, plan.train_flops / plan.tokens, clock),
        PreemptionCheckpoint(attempt.dir),
    ]


def curve_points(cfg: DictConfig, plan: RunPlan) -> int:
    """Validations during training (curve points; the final validation comes on top):
    ``val.points``, fewer where they would cost more than ``val.max_share`` of the run's
    training compute. A pass is a forward over the validation tokens, a third of the cost
    of training on as many, so a run of D tokens affords 3 share D / V_eval of them: a tiny
    run of the demo would otherwise spend several times its training on its curve. Every
    point, and the final loss, is still measured on the study's same validation tokens."""
    points = max(0, cfg.val.points)
    share = cfg.val.get("max_share")
    if share is None:
        return points
    return min(points, int(3 * share * plan.tokens / plan.data.val_eval_token_count))


def build_trainer(
    cfg: DictConfig, plan: RunPlan, callbacks: list[L.Callback], **overrides: Any
) -> L.Trainer:
    """The run's Trainer: exactly plan.steps steps, validation spread over the run."""
    # Lightning counts the interval in batches: whole accumulation windows, so every
    # validation falls on an optimizer step and its curve point on the right tokens
    k = plan.accumulate
    batches = plan.data.num_steps
    points = curve_points(cfg, plan)
    interval = min(batches, max(k, batches // max(1, points) // k * k))
    settings: dict[str, Any] = dict(
        max_steps=plan.steps,
        max_epochs=1,
        val_check_interval=interval,
        # no point during training: epoch 0 of 1 is not a multiple of 2 (the final
        # validation after fit still runs)
        check_val_every_n_epoch=None if points else 2,
        callbacks=callbacks,
        logger=False,
        default_root_dir=str(plan.run_dir),
    )
    settings.update(overrides)
    # called, not merged into the config: OmegaConf would read a '${' in a path as a variable
    trainer = instantiate(cfg.trainer, _partial_=True)(**settings)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the config chose
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def _rank_zero() -> bool:
    """Every DDP rank runs this code; only global rank 0 writes the database and files."""
    return rank_zero_only.rank == 0


@dataclasses.dataclass(frozen=True)
class Attempt:
    """Which attempt at a run a launch trains, and where its checkpoints and logs go."""

    number: int
    dir: Path
    staged: bool = False  # a forced re-run of a finished run, beside it until it finishes


def _attempt(cfg: DictConfig, plan: RunPlan, row: dict[str, Any] | None) -> Attempt:
    """force=true on a finished run trains attempt n + 1 in run_dir/attempt-<n+1>; the
    finished attempt n stays the run (row, weights, curve, a student's teacher) until the
    new one finishes, and a killed re-run resumes there at the next forced launch. Any
    other launch trains, or resumes, the row's own attempt in the run directory."""
    if row is None:
        return Attempt(1, plan.run_dir)
    number = row["attempt"] or 1
    if cfg.force and row["status"] == "done":
        return Attempt(number + 1, plan.run_dir / f"{ATTEMPT_DIR}{number + 1}", staged=True)
    return Attempt(number, plan.run_dir)


def _resume_checkpoint(attempt: Attempt) -> Path | None:
    """The newest checkpoint of the attempt that loads: kdlab's last.ckpt or a SLURM
    pre-emption checkpoint, a file or a sharded (FSDP) directory; any that does not load
    is set aside (kdlab.checkpoints.resume_point). A checkpoint's REPLACED copy is the
    previous one, whole, when a swap (kdlab.checkpoints.swap_in_directory) was cut between
    its two renames."""
    last = attempt.dir / "checkpoints" / "last.ckpt"
    saved = [*attempt.dir.glob("hpc_ckpt_*.ckpt"), last]
    replaced = [*(attempt.dir / ASIDE).glob(f"hpc_ckpt_*.ckpt{REPLACED}"), aside(last, REPLACED)]
    return resume_point(saved + replaced)


def _promote(plan: RunPlan, attempt: Attempt) -> None:
    """Move a finished re-run's files over the run's and remove its directory.

    The row already names the new attempt; the weights arrive by one atomic rename, and a
    crash part-way is finished by the next launch (``_finish_promotion``). W&B's folder is
    merged, not replaced: an offline W&B run's files are its only copy until synced, and
    each attempt is a W&B run of its own."""
    for entry in sorted(attempt.dir.iterdir(), key=lambda p: p.name != WEIGHTS):
        if entry.name == LOCK_FILE:
            continue
        target = plan.run_dir / entry.name
        if entry.name == WANDB_DIR and target.is_dir():
            for item in entry.iterdir():
                os.replace(item, target / item.name)  # offline-run-<time>-<id>: new names
            entry.rmdir()
        elif entry.is_dir() and target.is_dir():
            old = plan.run_dir / f".superseded-{entry.name}"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            entry.rename(target)
            shutil.rmtree(old)
        else:
            os.replace(entry, target)
    shutil.rmtree(attempt.dir)


def _finish_promotion(plan: RunPlan, row: dict[str, Any] | None) -> None:
    """A re-run recorded as the run but whose files were not all moved in yet."""
    if row and row["status"] == "done" and (row["attempt"] or 1) > 1:
        pending = plan.run_dir / f"{ATTEMPT_DIR}{row['attempt']}"
        if pending.is_dir():
            _promote(plan, Attempt(row["attempt"], pending, staged=True))


@contextlib.contextmanager
def _claimed(cfg: DictConfig, plan: RunPlan) -> Iterator[bool]:
    """Hold an exclusive lock on the run's directory; yields False when another process
    holds it.

    Two launches of one sweep (two SLURM arrays, a relaunch while the first still runs)
    would otherwise train the same run twice into one directory. Multi-device runs are
    not locked: every rank runs this code, and one rank skipping would hang the others.
    A file system without flock gets a warning and no lock (kdlab.locking).
    """
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if devices not in (1, "1") or nodes != 1:
        yield True
        return
    with claimed(plan.run_dir / LOCK_FILE) as ours:
        yield ours


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Train (or skip, or resume) the run ``cfg`` describes; return its database row."""
    quiet_training_logs()
    adopt_task_rank()  # before anything asks whether this process is rank 0
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
        if _rank_zero():
            _finish_promotion(plan, row)
        if row and row["status"] == "done" and not cfg.force:
            return _skipped(plan, row)
        return _train(cfg, plan, row)


def _skipped(plan: RunPlan, row: dict[str, Any]) -> dict[str, Any]:
    print(f"kdlab: run {plan.key} is already done (val_loss {row['val_loss']:.4f}); skipped")
    return row


def _train(cfg: DictConfig, plan: RunPlan, row: dict[str, Any] | None) -> dict[str, Any]:
    record = _rank_zero()
    attempt = _attempt(cfg, plan, row)
    attempt.dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_checkpoint(attempt)
    threads = cfg.threads or jobs_threads()
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, plan)
    progress = _job_progress(plan)
    callbacks = run_callbacks(cfg, plan, attempt, progress)
    clock = callbacks[0]
    loggers: list[Any] = []
    start = time.perf_counter()
    with stop_signals() as stop:  # from the row's start on, every way out records a status
        try:
            if record and attempt.staged:
                print(
                    f"kdlab: re-running finished run {plan.key} as attempt {attempt.number} "
                    f"in {attempt.dir}; the finished run stays until it is done"
                )
            elif record:
                plan.store.start(plan.key, attempt=attempt.number, **_row_fields(cfg, plan))
            loggers = build_loggers(cfg, plan, attempt.number, attempt.dir)
            trainer = build_trainer(
                cfg, plan, callbacks, logger=loggers or False, default_root_dir=str(attempt.dir)
            )
            # a re-run leaves the finished run's row as it is until it replaces it
            alive = record and not attempt.staged
            with Heartbeat(plan.store, plan.key) if alive else contextlib.nullcontext():
                ckpt = str(resume) if resume else None
                trainer.fit(module, datamodule=plan.data, ckpt_path=ckpt, weights_only=True)
                final = trainer.validate(module, datamodule=plan.data, verbose=False)[0]
                # every rank takes part: under FSDP this gathers the sharded weights
                state = full_state_dict(trainer)
            if not trainer.is_global_zero:
                return {}
            wall = clock.earlier_wall_s + time.perf_counter() - start
            row = _record(cfg, plan, attempt, trainer, module, final, state, clock, wall, loggers)
            progress.end(row["status"], row["val_loss"], clock.tokens_per_sec)
            return row
        except DivergedError as err:
            wall = clock.earlier_wall_s + time.perf_counter() - start
            _stopped(plan, attempt, "failed", f"diverged: {err}", loggers, wall_time_s=wall)
            progress.end("failed", None, clock.tokens_per_sec)
            return plan.store.get(plan.key)
        except BaseException as err:
            interrupted = _interruption(err, stop.signum)
            if interrupted is None:
                reason = f"{type(err).__name__}: {err}".strip()
                _stopped(plan, attempt, "failed", reason, loggers)
                progress.end("failed", None, clock.tokens_per_sec)
                raise
            reason, code = interrupted
            _stopped(plan, attempt, "interrupted", reason, loggers)
            progress.end("interrupted", None, clock.tokens_per_sec)
            if code is None:
                raise
            raise SystemExit(code) from err


def _job_progress(plan: RunPlan) -> JobProgress:
    """The job's progress file for kdlab study; its compute counted as the sweep plan
    counts it (a student's teacher logits included), so the stage's time left adds up."""
    teacher = plan.teacher
    logits = teacher.flops_per_token * plan.tokens if teacher and not teacher.inference_key else 0
    return JobProgress(
        plan.key,
        role=plan.role,
        model=plan.shape.name,
        n_params=plan.n_params,
        tokens=plan.tokens,
        flops=plan.train_flops + logits,
    )


def _record(
    cfg: DictConfig,
    plan: RunPlan,
    attempt: Attempt,
    trainer: L.Trainer,
    module: L.LightningModule,
    final: dict[str, float],
    state: dict[str, Any],
    clock: TrainClock,
    wall: float,
    loggers: list[Any],
) -> dict[str, Any]:
    """A run that trained to its end: failed if it learned nothing, else its weights and
    results recorded (a re-run's replacing the run it re-ran)."""
    val_loss = float(final["val/loss"])
    plan.store.add_curve_point(plan.key, trainer.global_step, plan.tokens, val_loss, attempt.number)
    # the loss of guessing uniformly, ln V: a run not below it learned nothing at all (a
    # garbage learning rate, a one-token budget). The unigram loss of its split, a stricter
    # floor, also fails short runs that learned something (the demo's smallest baselines)
    floor = math.log(plan.data.vocab_size)
    if not val_loss < floor:  # NaN included
        reason = f"did not learn: loss {val_loss:.4f} >= uniform loss ln V {floor:.4f}"
        measured = {
            "val_loss": val_loss,
            "wall_time_s": wall,
            **_measured_teacher_loss(plan, final),
        }
        _stopped(plan, attempt, "failed", reason, loggers, **measured)
        return plan.store.get(plan.key)
    weights_sha256 = save_weights(module.model, attempt.dir, submodule_state(state, "model."))
    artifacts = log_run_artifacts(cfg, plan, loggers, attempt.dir)
    flops_per_sec = clock.tokens_per_sec * module.train_flops_per_token()
    plan.store.finish(
        plan.key,
        weights_sha256=weights_sha256,
        attempt=attempt.number,
        **(_row_fields(cfg, plan) if attempt.staged else {}),
        val_loss=val_loss,
        val_ppl=float(final["val/ppl"]),
        val_kl=final.get("val/kl_teacher"),
        val_top1_agreement=final.get("val/top1_agreement"),
        val_ece=final.get("val/ece"),
        **_measured_teacher_loss(plan, final),
        tokens_per_sec=clock.tokens_per_sec,
        mfu=flops_per_sec / (trainer.world_size * device_peak(trainer, module)),
        wall_time_s=wall,
        wandb_url=_promoted(wandb_url(loggers), plan, attempt),
        wandb_artifacts=artifacts,
    )
    finish_loggers(loggers, row=plan.store.get(plan.key))  # closed before its files move
    if attempt.staged:
        _promote(plan, attempt)
    print(f"kdlab: run {plan.key} done: val_loss {val_loss:.4f}")
    return plan.store.get(plan.key)


def _promoted(path: str | None, plan: RunPlan, attempt: Attempt) -> str | None:
    """Where a path in a re-run's directory will be once the re-run replaces the run."""
    if path is None or not attempt.staged:
        return path
    return path.replace(str(attempt.dir), str(plan.run_dir), 1)


def _interruption(err: BaseException, signum: int | None) -> tuple[str, int | str | None] | None:
    """Why a run was stopped from outside and the exit code to leave with (None: keep the
    exception's own), or None when it failed by itself.

    The pre-emption signal, after which the scheduler's handler requeued the job and chose
    the exit status; a stop signal our handler took (whatever the exception it raised
    turned into on its way up); Lightning's SIGTERMException where another handler owns
    SIGTERM (submitit's, under SLURM); Lightning's exit(1) after a KeyboardInterrupt; any
    other exit keeps its code."""
    if isinstance(err, RunInterrupted) and err.requeued_exit is not None:
        name = signal.Signals(err.signum).name
        return f"pre-empted by {name}; the scheduler requeued the job", err.requeued_exit
    if signum is None and isinstance(err, RunInterrupted):  # the pre-emption signal
        signum = err.signum
    if signum is not None:
        return f"interrupted by {signal.Signals(signum).name}", 128 + signum
    if isinstance(err, SIGTERMException):
        return "interrupted by SIGTERM", 128 + signal.SIGTERM
    if isinstance(err, KeyboardInterrupt) or isinstance(err.__context__, KeyboardInterrupt):
        return "interrupted by SIGINT", 128 + signal.SIGINT
    if isinstance(err, SystemExit):
        return f"interrupted: exit({err.code})", None
    return None


def _stopped(
    plan: RunPlan,
    attempt: Attempt,
    status: str,
    reason: str,
    loggers: list[Any],
    **fields: Any,
) -> None:
    """Record a run that ended without a result; a re-run leaves the finished run as it is."""
    if _rank_zero():
        if attempt.staged:
            print(
                f"kdlab: re-run (attempt {attempt.number}) of run {plan.key} {status}: "
                f"{reason}; the finished run (attempt {attempt.number - 1}) is kept"
            )
        else:
            print(f"kdlab: run {plan.key} {status}: {reason}")
            mark = plan.store.interrupt if status == "interrupted" else plan.store.fail
            with contextlib.suppress(KeyError):  # stopped before its row was written
                mark(plan.key, reason, **fields)
    finish_loggers(loggers, "failed")
