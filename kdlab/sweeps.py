"""Sweeps: expand a grid exactly as Hydra's basic sweeper will, plan it, check it.

A sweep file (``sweeps/<scale>/<family>.yaml``) is a primary config that extends ``train``
and lists its grid under ``hydra.sweeper.params``; ``kdlab-train -m -cd sweeps/nano -cn
teachers`` launches it. Planning needs no data and no compute, so the paper's grids can be
costed on a laptop, and a student sweep whose teachers are missing is refused up front.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdlab.cluster_plan import Workload, configured_layout
from kdlab.composition import PLANNED_ENV, composition_error, swept_params
from kdlab.configs import CONF_DIR, SWEEPS_DIR
from kdlab.data import build_corpus, split_layout
from kdlab.data.cache import TokenCount, planned_token_count
from kdlab.data.corpora import to_plain
from kdlab.errors import ConfigError, error_exit
from kdlab.features import layer_pairs, training_flops_per_token
from kdlab.identity import ROLE_SPLIT, objective_identity, run_tokens, teacher_config
from kdlab.locking import writable_folder
from kdlab.models.ladder import ModelShape, flops_per_token, non_embedding_params
from kdlab.models.memory import Layout
from kdlab.rundb import (
    RunDBError,
    RunStore,
    configured_url,
    missing_sqlite_file,
    shown_url,
    sqlite_path,
)


def sweep_file(name: str) -> Path:
    """``nano/teachers``, ``sweeps/nano/teachers.yaml`` or a path: the sweep file."""
    for candidate in (Path(name), SWEEPS_DIR / name, SWEEPS_DIR / f"{name}.yaml"):
        for path in (candidate, candidate.with_suffix(".yaml")):
            if path.is_file():
                return _not_a_study(path.resolve())
    known = sorted(
        str(p.relative_to(SWEEPS_DIR).with_suffix(""))
        for p in SWEEPS_DIR.rglob("*.yaml")
        if p.name != "study.yaml" and not p.name.startswith("_")
    )
    raise ConfigError(f"no sweep named '{name}'; known sweeps: {', '.join(known)}")


def _not_a_study(path: Path) -> Path:
    """A study.yaml lists stages and composes no job: name the commands that take it."""
    if path.name != "study.yaml":
        return path
    folder = path.parent.name
    listed = OmegaConf.to_container(OmegaConf.load(path)).get("stages", [])
    stages = ", ".join(str(s) for e in listed for s in (e if isinstance(e, list) else [e]))
    raise ConfigError(
        f"{path} is a study, not a sweep: `kdlab study {folder}` runs its stages and "
        f"`kdlab sweep plan {folder}/<stage>` plans one ({stages})"
    )


def job_overrides(params: dict[str, Any], overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides: the sweep file's grid, then the command line's (which win)."""
    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(parsed, None)[0]


Job = tuple[list[str], DictConfig]  # a job's own overrides and its composed config


def _compose_jobs(config_name: str, params: dict, overrides: Sequence[str]) -> list[Job]:
    """Compose each job with Hydra (which must already be initialised)."""
    jobs = []
    for job in job_overrides(params, overrides):
        own = [o for o in job if not o.startswith("hydra.")]
        jobs.append((own, compose(config_name=config_name, overrides=job)))
    return jobs


def expand(path: Path, overrides: Sequence[str] = ()) -> list[Job]:
    """Every job of the sweep at ``path``: its overrides and composed config."""
    GlobalHydra.instance().clear()
    searchpath = f"hydra.searchpath=[file://{CONF_DIR}]"
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        head = None
        try:
            head = compose(config_name=path.stem, overrides=[searchpath], return_hydra_config=True)
            params = swept_params(head)
            return _compose_jobs(path.stem, params, [searchpath, *overrides])
        except (HydraException, OmegaConfBaseException) as err:  # a typo in an override
            reason = composition_error(err, [path.parent, CONF_DIR], head)
            where = f"{path.parent.name}/{path.stem}"
            raise ConfigError(f"the sweep {where} does not compose: {reason}") from err


@dataclasses.dataclass
class JobPlan:
    """A job's science in numbers, known before any data is read."""

    overrides: list[str]
    role: str
    model: str
    n_params: int
    tokens: int
    flops: float  # this job's compute: 3 F(N) D, plus F(N_T) D for a student's teacher
    signature: dict = dataclasses.field(default_factory=dict)  # see science_signature
    teacher: str | None = None  # "model@tokens" for students
    teacher_tokens: int | None = None
    teacher_signature: dict | None = None
    teacher_overrides: list[str] = dataclasses.field(default_factory=list)  # see plan_job
    teacher_params: int | None = None  # N_T
    steps: int = 0  # optimizer steps
    passes: float | None = None  # D over the tokens of one pass over its split
    passes_how: str = ""  # how the corpus's size is known (kdlab.data.TokenCount.how)
    status: str = "todo"
    seconds: float | None = None
    shape: ModelShape | None = None
    teacher_shape: ModelShape | None = None
    layout: Layout | None = None  # how the job's trainer spreads it (kdlab sweep plan --gpu)

    def workload(self) -> Workload:
        """What the memory and wall-time plan needs of this job."""
        return Workload(self.shape, self.flops, self.tokens, self.teacher_shape)


def science_signature(config: dict) -> dict:
    """Besides role, size and D, what makes two runs different science.

    Compared between a job's composed config and a finished run's recorded one, so a
    job counts as done only when the same science is (an ablation is not the baseline,
    a Markov run not a stdlib one).
    """
    module = config["data"]["module"]
    return {
        "seed": config["seed"],
        "optim": config["optim"],
        "objective": objective_identity(config["objective"]),
        "corpus": module["corpus"],
        "tokenizer": module["tokenizer"],
        "batch_size": module["batch_size"] * config["trainer"].get("accumulate_grad_batches", 1),
        "val_tokens": module["val_tokens"],
        "n_ctx": config["model"].get("n_ctx"),
        "teacher": config["teacher"] if config["role"] == "student" else None,
    }


def _signature(cfg: DictConfig) -> dict:
    return science_signature(OmegaConf.to_container(cfg, resolve=True))


def _shape(model_cfg: DictConfig, cfg: DictConfig) -> ModelShape:
    tokenizer = cfg.data.module.get("tokenizer")
    vocab = tokenizer.get("vocab_size") if isinstance(tokenizer, DictConfig) else None
    corpus = build_corpus(cfg.data.module.corpus)  # reads nothing
    if corpus.kind == "tokens":  # Markov and the synthetic tasks name their own vocabulary
        vocab = corpus.vocab_size
    return instantiate(model_cfg, vocab_size=vocab)


def plan_job(cfg: DictConfig, overrides: list[str]) -> JobPlan:
    shape = _shape(cfg.model, cfg)
    scale = cfg.data.get("budget_scale", 1.0)
    tokens = run_tokens(shape, cfg.data, scale)
    fpt = flops_per_token(shape)
    plan = JobPlan(
        overrides=overrides,
        role=cfg.role,
        model=f"{shape.ladder}_{shape.name}" if shape.ladder != "paper" else shape.name,
        n_params=non_embedding_params(shape),
        tokens=tokens,
        flops=3 * fpt * tokens,
        signature=_signature(cfg),
        shape=shape,
        layout=configured_layout(
            OmegaConf.to_container(cfg.trainer, resolve=True), cfg.data.module.batch_size
        ),
    )
    plan.passes, plan.passes_how = _passes(cfg, shape.n_ctx, tokens)
    batches = math.ceil(tokens / (cfg.data.module.batch_size * shape.n_ctx))
    plan.steps = math.ceil(batches / cfg.trainer.get("accumulate_grad_batches", 1))
    if cfg.role == "student" and cfg.teacher.get("model"):
        tcfg = teacher_config(cfg)
        tshape = _shape(tcfg.model, cfg)
        plan.teacher_tokens = run_tokens(tshape, cfg.teacher, scale)
        plan.teacher = f"{cfg.teacher.model}@{plan.teacher_tokens}"
        plan.teacher_signature = _signature(tcfg)
        plan.teacher_overrides = _teacher_overrides(cfg, overrides)
        plan.teacher_shape = tshape
        plan.teacher_params = non_embedding_params(tshape)
        plan.flops += _student_extra_flops(cfg, shape, tshape, tokens)
    for member in cfg.teacher.get("teachers") or () if cfg.role == "student" else ():
        if member.get("model"):  # every teacher of a mixture runs per student token
            plan.flops += flops_per_token(_shape(teacher_config(cfg, member).model, cfg)) * tokens
    return plan


def _student_extra_flops(
    cfg: DictConfig, shape: ModelShape, teacher: ModelShape, tokens: int
) -> float:
    """A student's compute beyond 3 F(N_S) D: its teacher's forward (none when read from a
    cache or generated text, counted once elsewhere) and feature matching's projections."""
    extra = 0.0
    if cfg.teacher.get("cache") is None and cfg.teacher.get("generate") is None:
        extra += flops_per_token(teacher) * tokens
    features = cfg.objective.get("features") or {}
    if features.get("weight") or features.get("attention_weight"):
        layers = features.get("layers")
        pairs = layer_pairs(
            shape.n_layer, teacher.n_layer, None if layers is None else [list(p) for p in layers]
        )
        attention = bool(features.get("attention_weight"))
        extra += training_flops_per_token(shape, teacher, pairs, attention) * tokens
    return extra


def _passes(cfg: DictConfig, seq_len: int, tokens: int) -> tuple[float | None, str]:
    """How many times the job goes over its split, from the corpus's planned size."""
    module = cfg.data.module
    count = _token_count(
        json.dumps(to_plain(module.corpus), sort_keys=True),
        json.dumps(to_plain(module.tokenizer), sort_keys=True),
        str(cfg.paths.cache_dir),
    )
    if count.n_tokens is None:
        return None, count.how
    try:
        split = split_layout(count.n_tokens, module.val_tokens)[ROLE_SPLIT[cfg.role]]
    except ValueError:  # a corpus too small for its validation tokens: no pass at all
        return float("inf"), count.how
    per_pass = (len(split) - 1) // seq_len * seq_len
    return (tokens / per_pass if per_pass > 0 else float("inf")), count.how


@functools.lru_cache(maxsize=64)
def _token_count(corpus: str, tokenizer: str, cache_dir: str) -> TokenCount:
    """A corpus's planned size, once per plan (every job of a sweep shares its corpus)."""
    return planned_token_count(build_corpus(json.loads(corpus)), json.loads(tokenizer), cache_dir)


# what teacher_config replaces in a student's config; everything else the teacher shares
_TEACHER_KEYS = (
    "model",
    "role",
    "objective",
    "family",
    "seed",
    "teacher",
    "data.tokens",
    "data.tokens_per_param",
    "data.flops",
)


def _teacher_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """A student job's overrides turned into its teacher's, as teacher_config builds it:
    the job's own settings (data, batch, database, ...) kept, size, role, objective and
    budget replaced, so the printed command trains exactly the teacher that is looked for."""
    spec = cfg.teacher

    def replaced(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return any(key == k or key.startswith(f"{k}.") for k in _TEACHER_KEYS)

    def value(v: Any) -> str:
        return "null" if v is None else str(v)

    kept = [o for o in overrides if not replaced(o)]
    seed = spec.get("seed") if spec.get("seed") is not None else cfg.seed
    return [
        *kept,
        "role=teacher",
        "objective=pretrain",
        f"model={spec.model}",
        f"data.tokens={value(spec.tokens)}",
        f"data.tokens_per_param={value(spec.tokens_per_param)}",
        f"data.flops={value(spec.flops)}",
        f"seed={seed}",
    ]


def _done_runs(url: str | None) -> list[dict]:
    """Finished runs; none when the database is not set, not made yet, or a server not
    reachable from here (a cluster's, seen from a laptop). A SQLite file here that cannot
    be read is an error: planning as if nothing were done would retrain everything."""
    if not url or missing_sqlite_file(url):
        return []
    try:
        return RunStore(url, create=False).find(status="done")
    except RunDBError:
        if sqlite_path(url) is not None:
            raise
        return []


def _matches(row: dict, role: str, model: str, tokens: int, signature: dict | None) -> bool:
    name = row["model"] if row["ladder"] == "paper" else f"{row['ladder']}_{row['model']}"
    if (row["role"], name, row["tokens"]) != (role, model, tokens):
        return False
    try:
        return science_signature(row["config"]) == signature
    except (KeyError, TypeError):  # a row without a full config: not comparable
        return False


@dataclasses.dataclass
class SweepPlan:
    jobs: list[JobPlan]
    url: str  # the database its runs are recorded in
    log_dir: Path  # where its logs go (paths.log_dir)
    path: Path  # the sweep file


def plan_sweep(path: Path, overrides: Sequence[str] = ()) -> SweepPlan:
    """Every job with its status in the sweep's database and a time estimate."""
    expanded = expand(path, overrides)
    jobs = [plan_job(cfg, own) for own, cfg in expanded]
    first = expanded[0][1] if expanded else None
    url = _sweep_url(first) if first else ""
    refresh_status(jobs, url)
    return SweepPlan(jobs, url, Path(first.paths.log_dir if first else "runs/logs"), path)


def _sweep_url(cfg: DictConfig) -> str:
    """The database a sweep records in; '' when its config names none here (a cluster's
    KDLAB_DB_URL unset on a laptop: the grid can still be planned)."""
    try:
        return configured_url(cfg.db)[0]
    except ConfigError:
        return ""


def refresh_status(jobs: list[JobPlan], url: str) -> int:
    """Mark the jobs that have a finished run in the database; returns how many."""
    done = _done_runs(url)
    rate = _flops_rate(done)
    for job in jobs:
        if any(_matches(row, job.role, job.model, job.tokens, job.signature) for row in done):
            job.status = "done"
        job.seconds = job.flops / rate if rate else None
    return sum(job.status == "done" for job in jobs)


def _flops_rate(done: list[dict]) -> float | None:
    """Median training FLOP/s of finished runs: the estimate for jobs not yet run."""
    rates = sorted(
        r["flops"] / r["wall_time_s"] for r in done if r.get("flops") and r.get("wall_time_s")
    )
    return rates[len(rates) // 2] if rates else None


def missing_teachers(jobs: list[JobPlan], url: str, sweep: Path) -> list[str]:
    """Teacher runs a student sweep needs that are not done, as commands to launch them
    (from the sweep's own config, so they share its data, batch and database)."""
    done = _done_runs(url)
    prefix = ["kdlab-train", "-cd", str(sweep.parent), "-cn", sweep.stem]
    missing = []
    for job in jobs:
        if job.teacher is None:
            continue
        model, tokens = job.teacher.split("@")
        if not any(_matches(r, "teacher", model, int(tokens), job.teacher_signature) for r in done):
            command = shlex.join([*prefix, *job.teacher_overrides])
            if command not in missing:
                missing.append(command)
    return missing


class PreflightCallback(Callback):
    """Before a run or a multirun starts, while Hydra has written nothing yet (not even its
    output folder under the run root): refuse a database password in the config (Hydra
    would save it in its log folder), a run root that cannot be written, and a student
    sweep whose teachers are missing. Each refusal is one sentence and exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_bad_database(config)
        _writable_root(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_bad_database(config)
        _writable_root(config)
        if os.environ.get(PLANNED_ENV):  # kdlab study / sweep run planned it already
            return
        params = swept_params(config)
        overrides = list(config.hydra.overrides.task)
        name = config.hydra.job.config_name
        expanded = _compose_jobs(name, params, overrides)
        jobs = [plan_job(cfg, own) for own, cfg in expanded]
        url = _sweep_url(expanded[0][1]) if expanded else ""
        missing = missing_teachers(jobs, url, _primary_config(config, name))
        if missing:
            print(
                f"kdlab-train: error: {len(missing)} teacher run(s) this sweep needs are not "
                f"done in {shown_url(url)}; launch them first:\n  " + "\n  ".join(missing),
                file=sys.stderr,
            )
            sys.exit(2)


def _refuse_bad_database(config: DictConfig) -> None:
    try:
        configured_url(config.db)
    except ConfigError as err:
        sys.exit(error_exit("kdlab-train", err))


def _writable_root(config: DictConfig) -> None:
    try:
        for folder in (config.paths.runs_dir, config.paths.log_dir):
            writable_folder(folder)
    except ConfigError as err:
        sys.exit(error_exit("kdlab-train", err))


def _primary_config(config: DictConfig, name: str) -> Path:
    """The file a multirun was launched from: its config directory's ``name``.yaml."""
    for source in config.hydra.runtime.config_sources:
        if source.schema == "file" and (Path(source.path) / f"{name}.yaml").is_file():
            return Path(source.path) / f"{name}.yaml"
    return Path(CONF_DIR) / f"{name}.yaml"
