"""The student's teacher, of whichever kind, as one :class:`kdlab.teacher.Teacher`.

- one kdlab teacher, by run key or science settings, checkpoint, or the Markov oracle
  (``teacher=run``, ``teacher=oracle``): :mod:`kdlab.teacher`;
- a local Hugging Face causal LM (``teacher=hf teacher.path=DIR``): :mod:`kdlab.hf`;
- a weighted mixture of any of those (``teacher=mixture``): :mod:`kdlab.teachers.mixture`;
- any of those read back from its logit cache (``teacher=cache``, made by ``kdlab teacher
  cache``): :mod:`kdlab.teachers.cache`; the teacher itself is never loaded;
- any of those known only by text it generated (``teacher=generated``, made by ``kdlab
  generate``): :mod:`kdlab.teachers.generate`; the student learns that text with hard
  labels only.

The DistillModule consumes one signal per batch, whatever the kind: the teacher network's
logits, or the cache's sparse top k (kdlab.losses.SparseTeacher) that the data module
delivers with the batch. Every mismatch (another teacher's or tokenizer's cache, teachers
of different tokenizers, a vocabulary that is not the student's, an objective the teacher
cannot serve) is refused here, before any compute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdlab.errors import ConfigError
from kdlab.rundb import RunStore
from kdlab.teacher import Teacher, check_teacher, resolve_teacher
from kdlab.teachers.cache import (
    TeacherCache,
    cache_identity,
    cache_path,
    check_identity,
    read_manifest,
)
from kdlab.teachers.mixture import mixture

KeyOf = Callable[[DictConfig], "str | None"]  # a teacher spec's run key (kdlab.run_plan)
_NAMES_A_TEACHER = ("key", "checkpoint", "model", "oracle", "hf", "teachers")


def resolve(spec: DictConfig, store: RunStore, data: Any, key_of: KeyOf) -> Teacher:
    """The teacher ``spec`` names, checked against the student's ``data``."""
    if spec.get("cache") is not None:
        return _cached(spec, store, data, key_of)
    if spec.get("generate") is not None:
        from kdlab.teachers.generate import generated_teacher

        return generated_teacher(spec.generate, _checked(spec, store, data, key_of), data)
    return _checked(spec, store, data, key_of)


def _checked(spec: DictConfig, store: RunStore, data: Any, key_of: KeyOf) -> Teacher:
    return check_teacher(_unchecked(spec, store, data, key_of), data)


def _unchecked(spec: DictConfig, store: RunStore, data: Any, key_of: KeyOf) -> Teacher:
    if spec.get("teachers"):
        members = list(spec.teachers)
        teachers = [_unchecked(m, store, data, key_of) for m in members]
        return mixture(teachers, [m.get("weight", 1.0) for m in members])
    if spec.get("hf"):
        from kdlab.hf import hf_teacher

        return hf_teacher(Path(spec.path), data)
    return resolve_teacher(spec, store, data, key_of(spec), check=False)


def _cached(spec: DictConfig, store: RunStore, data: Any, key_of: KeyOf) -> Teacher:
    """The teacher read from its logit cache: the cache's identity is the teacher's key,
    the student's windows and the cache settings; it must exist (kdlab teacher cache)."""
    settings = spec.cache
    folder = settings.get("dir")
    named = any(spec.get(name) for name in _NAMES_A_TEACHER)
    if named:
        base = _checked(spec, store, data, key_of)
        teacher_key = base.key
    elif folder:
        manifest = read_manifest(Path(folder))
        base = Teacher(load=None, **_facts_fields(manifest["teacher"]))
        teacher_key = base.key
        check_teacher(base, data)
    else:
        raise ConfigError(
            "teacher=cache needs its teacher (teacher.key, teacher.model with its budget, "
            "...) or the cache's folder teacher.cache.dir"
        )
    identity = cache_identity(
        teacher_key, data, settings.get("k"), settings.get("dtype"), settings.get("tokens")
    )
    directory = Path(folder) if folder else cache_path(data.cache_dir, identity)
    if not (directory / "manifest.json").is_file():
        raise ConfigError(
            f"there is no finished teacher cache for teacher {teacher_key} at k = "
            f"{identity.k} ({identity.dtype}) in {directory}; make it with `kdlab teacher "
            "cache` and this run's overrides"
        )
    manifest = read_manifest(directory)
    check_identity(manifest, identity, directory, data)
    return Teacher(
        load=None,
        **{**_facts_fields(teacher_facts(base)), "loss": base.loss},
        kind="cache",
        shape=None,
        members=base.members,
        inference_key=manifest["key"],
        read=lambda: TeacherCache.open(directory),
    )


def teacher_facts(teacher: Teacher) -> dict[str, Any]:
    """The teacher facts a cache or generated corpus records about its teacher (JSON)."""
    return {
        "key": teacher.key,
        "kind": teacher.kind,
        "name": teacher.name,
        "n_params": teacher.n_params,
        "tokens": teacher.tokens,
        "loss": teacher.loss,
        "flops_per_token": teacher.flops_per_token,
        "fingerprint": teacher.fingerprint,
        "tokenizer": teacher.tokenizer,
        "vocab_size": teacher.vocab_size,
        "n_ctx": teacher.n_ctx,
        "members": list(teacher.members),
    }


def _facts_fields(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Teacher constructor fields from recorded facts (a cache read without its teacher)."""
    fields = (
        "key",
        "name",
        "n_params",
        "tokens",
        "loss",
        "flops_per_token",
        "fingerprint",
        "tokenizer",
        "vocab_size",
        "n_ctx",
    )
    return {f: facts[f] for f in fields}


def connect(teacher: Teacher, data: Any) -> dict[str, Any]:
    """Wire a planned teacher to its run: a cache or generated corpus is opened (every
    shard verified) and handed to the data module; returns the DistillModule's teacher
    arguments (none for a student of generated text, which is pretrained on it)."""
    if teacher.kind == "generated":
        data.train_source = teacher.read()
        return {}
    if teacher.kind == "cache":
        data.teacher_cache = teacher.read()
        return dict(teacher=None, teacher_flops_per_token=0.0, teacher_shape=None)
    return dict(
        teacher=teacher.model,
        teacher_flops_per_token=teacher.flops_per_token,
        teacher_shape=teacher.shape,
    )


def check_objective(spec: DictConfig, objective: Mapping[str, Any]) -> None:
    """Refuse an objective the teacher ``spec`` names cannot serve, before any lookup."""
    distill = "kd_lambda" in objective
    if spec.get("generate") is not None:
        if distill:
            raise ConfigError(
                "teacher=generated gives text only, so its students learn it with hard labels: "
                "use objective=seqkd, not a distillation objective"
            )
        return
    if not distill:
        raise ConfigError(
            "a student without a distillation objective learns from generated text: use "
            "teacher=generated with objective=seqkd, or objective=distill"
        )
    features = objective.get("features") or {}
    if features.get("weight") or features.get("attention_weight"):
        kind = _kind(spec)
        if kind not in ("run", "checkpoint"):
            raise ConfigError(
                "feature matching needs a kdlab teacher network (teacher=run or a checkpoint), "
                f"not a {kind} teacher"
            )
    if spec.get("cache") is None:
        return
    k, top_k = spec.cache.k, objective.get("top_k")
    if top_k is not None and top_k > k:
        raise ConfigError(f"objective.top_k {top_k} is more than the teacher cache's k = {k}")
    divergence = objective.get("divergence")
    if not objective.get("hard") and (
        divergence == "reverse_kl"
        or (divergence == "skew_reverse_kl" and not objective.get("alpha"))
    ):
        raise ConfigError(f"{divergence} against a teacher cache's top k is infinite")


def _kind(spec: DictConfig) -> str:
    for kind, node in (("cache", "cache"), ("generated", "generate")):
        if spec.get(node) is not None:
            return kind
    for kind, node in (("mixture", "teachers"), ("hf", "hf"), ("oracle", "oracle")):
        if spec.get(node):
            return kind
    return "checkpoint" if spec.get("checkpoint") else "run"


__all__ = ["check_objective", "connect", "resolve", "teacher_facts"]
