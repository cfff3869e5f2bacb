"""A run's experiment loggers (CSV, W&B): built from its plan, closed with its outcome.

Every logger receives the same keys in the same rows (``kdlab.callbacks.TrainingProgress``
and the modules log them; Lightning adds ``trainer/global_step``, the step):

- ``tokens``, tokens trained on so far, and ``flops``, the run's training FLOPs so far
  (the row's ``flops`` per token: 3 F(N), plus feature matching's share);
- ``train/loss`` (and its parts), ``val/loss``, ``val/ppl`` (students also their
  agreement with the teacher);
- ``lr/<group>``: the learning rate each muP optimizer group stepped with;
- ``throughput/tokens_per_sec``, ``throughput/flops_per_sec``, ``throughput/mfu``.

W&B is told each key's x-axis (``define_metric``): ``tokens`` for train, val, lr and
throughput, so runs of different batch sizes overlay; and, as W&B draws a metric against
one axis, the losses once more as ``by_flops/train_loss`` and ``by_flops/val_loss``
against ``flops``: a sweep's IsoFLOP view. The config holds the numbers runs are compared
by (N, D, M, flops, role, key, study, family and the science settings), the group is the
sweep (study/family), the tags its study and family, the job type the role. The CSV
logger's hparams.yaml holds the same config.

Attempts: a forced re-run (attempt n > 1) is a W&B run of its own, id ``<key>-<n>``, whose
config's ``rerun_of`` names the W&B run it re-runs; a resumed run continues its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kdlab.configs import build
from kdlab.teacher import WEIGHTS
from kdlab.wandb_artifacts import artifact_name, asked_artifacts, log_artifact

if TYPE_CHECKING:
    from kdlab.run_plan import RunPlan

STEP_METRICS = ("trainer/global_step", "tokens", "flops")
TOKENS_AXIS = ("train/*", "val/*", "lr/*", "throughput/*")
FLOPS_AXIS = {"train/loss": "by_flops/train_loss", "val/loss": "by_flops/val_loss"}
# the finished row's numbers, in the W&B summary so W&B's runs table shows them
SUMMARY_FIELDS = ("val_loss", "val_ppl", "val_kl", "teacher_loss", "tokens_per_sec", "mfu")


def wandb_run_id(key: str, attempt: int) -> str:
    """The W&B run id of one attempt at a run: the key, then key-2, key-3, ..."""
    return key if attempt <= 1 else f"{key}-{attempt}"


def run_config(plan: RunPlan, study: str | None, family: str | None, attempt: int) -> dict:
    """The numbers runs are compared by, flat so W&B's table shows them as columns."""
    numbers: dict[str, Any] = {
        "key": plan.key,
        "role": plan.role,
        "study": study,
        "family": family,
        "ladder": plan.shape.ladder,
        "model": plan.shape.name,
        "N": plan.n_params,
        "D": plan.tokens,
        "M": plan.tokens_per_param,
        "flops": plan.train_flops,
        "attempt": attempt,
        "rerun_of": wandb_run_id(plan.key, attempt - 1) if attempt > 1 else None,
    }
    if plan.teacher is not None:
        teacher = plan.teacher
        numbers.update(
            teacher_key=teacher.key, N_T=teacher.n_params, D_T=teacher.tokens, L_T=teacher.loss
        )
    return {**plan.science, **numbers}


class WandbRunLogger(WandbLogger):
    """Lightning's W&B logger, with the losses once more under by_flops/ (FLOPs axis)."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mirrored = {FLOPS_AXIS[k]: v for k, v in metrics.items() if k in FLOPS_AXIS}
        super().log_metrics({**metrics, **mirrored}, step)


def define_axes(run: Any) -> None:
    """Each key's x-axis in W&B's charts (``step_sync`` fills in the axis's last value
    in a row that lacks it)."""
    for name in STEP_METRICS:
        run.define_metric(name)
    for pattern in TOKENS_AXIS:
        run.define_metric(pattern, step_metric="tokens", step_sync=True)
    run.define_metric("by_flops/*", step_metric="flops", step_sync=True)


def build_loggers(cfg: DictConfig, plan: RunPlan, attempt: int, save_dir: Path) -> list[Logger]:
    """The loggers ``cfg.logger`` names, writing into ``save_dir``, each given the run's
    config."""
    config = run_config(plan, cfg.study, cfg.family, attempt)
    loggers: list[Logger] = []
    for name, node in (cfg.logger or {}).items():
        if name == "wandb":
            loggers.append(_wandb_logger(node, cfg, plan, attempt, config, save_dir))
        else:
            loggers.append(build(node, save_dir=str(save_dir)))
            loggers[-1].log_hyperparams(config)
    return loggers


def _wandb_logger(
    node: DictConfig,
    cfg: DictConfig,
    plan: RunPlan,
    attempt: int,
    config: dict[str, Any],
    save_dir: Path,
) -> WandbRunLogger:
    """The W&B run is started here, on global rank 0 only, so its axes are kdlab's
    (Lightning's own would draw everything against its step)."""
    spec = OmegaConf.to_container(node, resolve=True)
    spec.pop("artifacts", None)
    spec.pop("_target_", None)
    group, tags = spec.pop("group", None), spec.pop("tags", None) or []
    sweep = [v for v in (cfg.study, cfg.family) if v]
    run = None
    if rank_zero_only.rank == 0:
        import wandb

        run = wandb.init(
            **spec,
            group=group or "/".join(sweep) or None,
            tags=[*tags, *sweep],
            name=f"{plan.role}-{plan.shape.ladder}-{plan.shape.name}-{plan.key}",
            id=wandb_run_id(plan.key, attempt),
            resume="allow",
            dir=str(save_dir),
            job_type=plan.role,
            config=config,
        )
        define_axes(run)
    return WandbRunLogger(experiment=run, project=spec.get("project"), save_dir=str(save_dir))


def _wandb_runs(loggers: list[Logger]) -> list[Any]:
    """The W&B runs of ``loggers``: global rank 0 holds them, the other ranks none."""
    if rank_zero_only.rank != 0:
        return []
    return [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]


def wandb_url(loggers: list[Logger]) -> str | None:
    """The W&B run's page, or its offline folder as a file:// URL."""
    for run in _wandb_runs(loggers):
        return run.url or f"file://{run.dir}"
    return None


def log_run_artifacts(
    cfg: DictConfig, plan: RunPlan, loggers: list[Logger], weights_dir: Path
) -> list[dict[str, Any]] | None:
    """Log the artifacts ``logger.wandb.artifacts`` asks for; their records, or None."""
    runs = _wandb_runs(loggers)
    asked = asked_artifacts(cfg)
    if not runs or not asked:
        return None
    meta = {"key": plan.key, "role": plan.role, "model": plan.shape.name}
    meta.update(N=plan.n_params, D=plan.tokens, flops=plan.train_flops)
    records = []
    if "weights" in asked:
        name = artifact_name("weights", plan.key)
        records.append(log_artifact(runs[0], name, "model", [weights_dir / WEIGHTS], meta))
    cache = _teacher_cache(plan)
    if "teacher_cache" in asked and cache is not None:
        name = artifact_name("teacher-logits", plan.teacher.inference_key)
        meta = {**meta, "teacher_key": plan.teacher.key}
        records.append(log_artifact(runs[0], name, "teacher-logits", [cache], meta))
    elif "teacher_cache" in asked:
        print(f"kdlab: run {plan.key} read no teacher-logit cache; none logged to W&B")
    return records


def _teacher_cache(plan: RunPlan) -> Path | None:
    """The teacher-logit cache this run read, if it read one."""
    teacher = plan.teacher
    if teacher is None or teacher.kind != "cache" or not teacher.inference_key:
        return None
    row = plan.store.get_inference(teacher.inference_key)
    path = Path(row["path"]) if row and row.get("path") else None
    return path if path is not None and path.exists() else None


def finish_loggers(
    loggers: list[Logger], status: str = "success", row: Mapping[str, Any] | None = None
) -> None:
    """Close each logger (a finished row's numbers go to the W&B summary), so the next
    job in the same process starts a W&B run of its own."""
    runs = _wandb_runs(loggers)
    for run in runs:
        if row is not None:
            run.summary.update({k: row[k] for k in SUMMARY_FIELDS if row.get(k) is not None})
    for logger in loggers:
        logger.finalize(status)
    for run in runs:
        run.finish(exit_code=0 if status == "success" else 1)
