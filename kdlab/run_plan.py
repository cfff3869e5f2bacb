"""A run's plan: everything that can fail on bad input, done before any compute.

``plan_run`` resolves shape, data, budget, database, teacher and key, so that a mistake
costs no compute and writes nothing; ``kdlab.runner`` then trains what it planned.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdlab.configs import build
from kdlab.data.cli import require_prepared
from kdlab.errors import ConfigError
from kdlab.features import check_settings as check_feature_settings
from kdlab.features import layer_pairs, training_flops_per_token
from kdlab.identity import ROLE_SPLIT, run_key, run_tokens, science, teacher_config
from kdlab.locking import writable_folder
from kdlab.losses import TAIDSchedule, check_distill_options
from kdlab.models.ladder import ModelShape, flops_per_token, non_embedding_params
from kdlab.rundb import RunStore, configured_url
from kdlab.teacher import Teacher
from kdlab.teachers import check_objective, resolve
from kdlab.wandb_artifacts import asked_artifacts


@dataclasses.dataclass
class RunPlan:
    """What a run will do, fixed before any compute."""

    key: str
    role: str
    shape: ModelShape
    data: object  # kdlab.data.TokenDataModule, set up
    tokens: int
    n_params: int
    flops_per_token: float
    science: dict
    run_dir: Path
    store: RunStore
    db_source: str  # where the database URL came from (kdlab.rundb.url's rule)
    teacher: Teacher | None = None
    accumulate: int = 1
    feature_flops_per_token: float = 0.0  # what feature matching adds to a training step

    @property
    def steps(self) -> int:
        """Optimizer steps: the batches of the run in windows of ``accumulate``; the last
        window may be short (Lightning steps at the end of the epoch)."""
        return math.ceil(self.data.num_steps / self.accumulate)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params

    @property
    def train_flops(self) -> float:
        """The run's own training compute, 3 F(N) D plus feature matching's projections
        (a student's teacher not included)."""
        return (3.0 * self.flops_per_token + self.feature_flops_per_token) * self.tokens


def plan_run(cfg: DictConfig) -> RunPlan:
    """Resolve shape, data, budget and key; raise ConfigError on any bad input."""
    try:
        return _plan_run(cfg)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from cause
        raise
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from err


def _check_launch(cfg: DictConfig) -> None:
    """Lightning's DDP launcher re-runs the command line per rank; inside a local multirun
    that would relaunch the whole sweep once per device. A scheduler that starts one
    task per device (SLURM, submitit's local executor) must start as many as the run
    has devices."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    local_tasks = os.environ.get("SUBMITIT_LOCAL_NTASKS")
    if local_tasks and isinstance(devices, int) and int(local_tasks) != devices * nodes:
        raise ConfigError(
            f"submitit started {local_tasks} task(s) for a run on {devices * nodes} device(s): "
            "set hydra.launcher.tasks_per_node to trainer.devices (one task per device)"
        )
    try:
        mode = HydraConfig.get().mode
    except ValueError:  # composed outside a Hydra app (tests, kdlab sweep plan)
        return
    launched = os.environ.get("SLURM_NTASKS") or local_tasks or os.environ.get("RANK")
    if mode == RunMode.MULTIRUN and isinstance(devices, int) and devices > 1 and not launched:
        raise ConfigError(
            "trainer.devices > 1 inside a local multirun would relaunch the sweep per device: "
            "use hydra/launcher=slurm or submitit_cpu (one task per device) or launch "
            "multi-device runs one by one"
        )


def check_settings(cfg: DictConfig) -> None:
    """The settings a run would otherwise meet only once it has a row: unset values, the
    seed, the optimiser's numbers and the distillation loss's options."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (e.g. {missing[0]}=...)")
    seed = cfg.seed
    if not (_is_number(seed) and 0 <= seed < 2**32 and seed == int(seed)):
        raise ConfigError(f"seed must be a whole number from 0 to 2**32 - 1, not {seed}")
    optim = cfg.optim
    if not (_is_number(optim.lr) and 0 < optim.lr < math.inf):
        raise ConfigError(f"optim.lr must be a positive number, not {optim.lr}")
    for name, upper in (("weight_decay", math.inf), ("z_loss", math.inf), ("min_lr_ratio", 1.0)):
        value = optim[name]
        if not (_is_number(value) and 0 <= value <= upper and math.isfinite(value)):
            raise ConfigError(f"optim.{name} must be a number from 0 to {upper:g}, not {value}")
    warmup = optim.warmup_steps
    if warmup is not None and not (
        _is_number(warmup) and 0 <= warmup < math.inf and warmup == int(warmup)
    ):
        raise ConfigError(f"optim.warmup_steps must be a whole number or null, not {warmup}")
    if warmup is None and not (
        _is_number(optim.warmup_fraction) and 0 <= optim.warmup_fraction <= 1
    ):
        raise ConfigError(
            f"optim.warmup_fraction must be a number from 0 to 1, not {optim.warmup_fraction}"
        )
    if "divergence" in cfg.objective:
        _check_objective(cfg.objective)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_objective(objective: DictConfig) -> None:
    """A student's loss settings, by the same rules the loss applies at every step."""
    lam = objective.kd_lambda
    if not (_is_number(lam) and 0 <= lam <= 1):
        raise ConfigError(f"objective.kd_lambda must be a number from 0 to 1, not {lam}")
    numbers = {k: objective.get(k) for k in ("tau", "beta", "alpha", "top_k", "top_p")}
    for name, value in numbers.items():
        if value is not None and not _is_number(value):
            raise ConfigError(f"objective.{name} must be a number, not {value}")
    try:
        check_distill_options(objective.divergence, hard=bool(objective.hard), **numbers)
        if objective.divergence == "taid":
            TAIDSchedule(**objective.taid)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"objective settings: {err}") from err


def open_store(cfg: DictConfig) -> tuple[RunStore, str]:
    """The run database of a composed config, by kdlab's one rule, and where it came from.

    A new SQLite file's folder is created only under the run root (paths.runs_dir)."""
    url, source = configured_url(cfg.db)
    return RunStore(url, create_under=Path(cfg.paths.runs_dir)), source


def _plan_run(cfg: DictConfig) -> RunPlan:
    _check_launch(cfg)
    asked_artifacts(cfg)
    role = cfg.role
    if role not in ROLE_SPLIT:
        raise ConfigError(f"role must be one of {sorted(ROLE_SPLIT)}, not '{role}'")
    check_settings(cfg)
    runs_dir = writable_folder(cfg.paths.runs_dir)
    store, db_source = open_store(cfg)

    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches must be a whole number of batches, not {accumulate}"
        )
    shape = instantiate(cfg.model)
    data = build(cfg.data.module, split=ROLE_SPLIT[role], seq_len=shape.n_ctx, train_tokens=1)
    require_prepared(cfg, data.corpus, data.tokenizer_config, data.cache_dir)
    shape = instantiate(cfg.model, vocab_size=data.vocab_size)
    tokens = run_tokens(shape, cfg.data, cfg.data.get("budget_scale", 1.0))
    data.train_tokens = tokens
    data.prepare_data()
    data.setup("fit")

    facts = science(cfg, shape, data, tokens)
    teacher, feature_flops = None, 0.0
    if role == "student":
        check_objective(cfg.teacher, cfg.objective)
        teacher = resolve(cfg.teacher, store, data, lambda spec: _teacher_key(cfg, spec))
        facts["teacher"] = teacher.science
        feature_flops = _feature_flops(cfg.objective, shape, teacher)
    key = run_key(facts)
    return RunPlan(
        key=key,
        role=role,
        shape=shape,
        data=data,
        tokens=tokens,
        n_params=non_embedding_params(shape),
        flops_per_token=flops_per_token(shape),
        science=facts,
        run_dir=(runs_dir / key).resolve(),
        store=store,
        db_source=db_source,
        teacher=teacher,
        accumulate=accumulate,
        feature_flops_per_token=feature_flops,
    )


def _teacher_key(cfg: DictConfig, spec: DictConfig) -> str | None:
    """The key of the teacher run ``spec`` (the student's teacher, or one of several)
    names, by key or by science settings."""
    if spec.get("key"):
        return spec.key
    if spec.get("model"):
        # a teacher's key is computed like any run's
        return plan_run(teacher_config(cfg, spec)).key
    return None


def _feature_flops(objective: DictConfig, shape: ModelShape, teacher: Teacher) -> float:
    """Training FLOPs per token of feature matching; its settings are checked here."""
    settings = objective.get("features")
    if not settings or not (settings.get("weight") or settings.get("attention_weight")):
        return 0.0
    check_feature_settings(settings)
    layers = settings.get("layers")
    layers = None if layers is None else [list(pair) for pair in layers]
    pairs = layer_pairs(shape.n_layer, teacher.shape.n_layer, layers)
    return training_flops_per_token(
        shape, teacher.shape, pairs, attention=bool(settings.get("attention_weight"))
    )
