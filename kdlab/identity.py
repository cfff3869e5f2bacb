"""What a run is, before anything is built: its token budget, its teacher, its key.

The run key is a hash of exactly what changes a run's result (size, corpus, tokenizer,
split, D, batch, optimiser, loss settings, teacher, seed). Paths, loggers, launchers,
hardware and Python class paths never enter it, so the same science relaunched anywhere,
or after a refactoring moved a class, finds its finished row (and is skipped) or its
checkpoint (and resumes). Everything here is plain config arithmetic: sweep planning uses
it without importing torch or Lightning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.configs import CONF_DIR
from kdlab.data.budget import resolve_tokens
from kdlab.errors import ConfigError
from kdlab.models.ladder import ModelShape, flops_per_token, non_embedding_params

ROLE_SPLIT = {"teacher": "teacher", "supervised": "student", "student": "student"}


def run_key(science: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``science``."""
    canonical = json.dumps(science, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def objective_identity(objective: Mapping[str, Any]) -> dict[str, Any]:
    """The loss settings of an objective config without Hydra's ``_target_``/``_partial_``
    (which module implements a loss is code layout, not science)."""
    return {k: v for k, v in objective.items() if not str(k).startswith("_")}


def run_tokens(shape: ModelShape, budget: Any, scale: float = 1.0) -> int:
    """D from a budget node (tokens, tokens_per_param or flops), times a study's scale."""
    if not (isinstance(scale, (int, float)) and scale > 0 and scale < float("inf")):
        raise ConfigError(f"data.budget_scale must be a positive number, not {scale}")
    tokens = resolve_tokens(
        tokens=budget.get("tokens"),
        tokens_per_param=budget.get("tokens_per_param"),
        flops=budget.get("flops"),
        n_params=non_embedding_params(shape),
        flops_per_token=flops_per_token(shape),
    )
    return max(1, round(tokens * scale))


def teacher_config(cfg: DictConfig, spec: DictConfig | None = None) -> DictConfig:
    """The config of the teacher run a student names by science settings: the student's
    data, its own size and budget, pretraining on the teacher split. ``spec`` is one of
    several teachers' (default: the student's ``teacher``)."""
    spec = cfg.teacher if spec is None else spec
    path = CONF_DIR / "model" / f"{spec.model}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"unknown teacher.model '{spec.model}'; choose one of {choices}")
    tcfg = cfg.copy()
    with open_dict(tcfg):
        tcfg.model = OmegaConf.load(path)
        tcfg.role = "teacher"
        tcfg.objective = OmegaConf.create(
            {"_target_": "kdlab.modules.PretrainModule", "_partial_": True}
        )
        tcfg.data.tokens = spec.get("tokens")
        tcfg.data.tokens_per_param = spec.get("tokens_per_param")
        tcfg.data.flops = spec.get("flops")
        if spec.get("seed") is not None:
            tcfg.seed = spec.seed
    return tcfg


def science(cfg: DictConfig, shape: ModelShape, data: Any, tokens: int) -> dict[str, Any]:
    """What the run's result depends on; ``data`` is the run's (set-up) data module."""
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    return {
        "role": cfg.role,
        "shape": dataclasses.asdict(shape),
        "corpus": data.fingerprint,
        "tokenizer": data.tokenizer_name,
        "split": ROLE_SPLIT[cfg.role],
        "tokens": tokens,
        # sequences per optimizer step: their split over accumulation steps is hardware,
        # like the device count (sample g is the same window however it is split,
        # windows.py); "accumulate" stays 1 so keys made before keep their value
        "batch_size": data.batch_size * accumulate,
        "val_tokens": data.val_tokens,
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "clip": cfg.trainer.get("gradient_clip_val"),
        "accumulate": 1,
        "val_eval_tokens": data.val_eval_tokens,
        "objective": objective_identity(OmegaConf.to_container(cfg.objective, resolve=True)),
        "seed": cfg.seed,
    }
