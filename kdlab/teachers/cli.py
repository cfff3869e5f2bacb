"""kdlab teacher cache and kdlab generate: run a teacher once, for many students.

Both take a student's kdlab-train overrides (``teacher=cache ...`` or ``objective=seqkd
teacher=generated ...``), or ``--sweep`` a sweep file whose every job's artefact is made
once. They plan the student as kdlab-train would, with the teacher online, so the cache or
corpus made is exactly the one that student then looks up; each is recorded in the run
database's teacher_inference table with its teacher-inference FLOPs, counted once.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from kdlab.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser("teacher", description="Run a teacher once for many students.")
    sub = teacher.add_subparsers(dest="teacher_command", required=True)
    cache = sub.add_parser(
        "cache",
        help="write a teacher's top-k log-probabilities over the student's windows",
        description="Write the logit cache a teacher=cache student reads (give that student's "
        "kdlab-train overrides, or --sweep).",
    )
    _common(cache)
    cache.set_defaults(func=lambda a: _each(a, "cache", build_cache))
    generate = subparsers.add_parser(
        "generate",
        description="Sample the corpus a teacher=generated student learns (give that "
        "student's kdlab-train overrides, or --sweep).",
    )
    _common(generate)
    generate.set_defaults(func=lambda a: _each(a, "generate", build_generated))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="the student's kdlab-train overrides")
    parser.add_argument("--sweep", help="make what every job of this sweep needs, e.g. nano/x")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if any)")
    parser.add_argument("--batch", type=int, default=16, help="windows (samples) per forward")


def _each(args: argparse.Namespace, node: str, build: Callable[..., dict]) -> int:
    """Build for the one config of the overrides, or each distinct one of a sweep."""
    if args.batch < 1:
        raise ConfigError(f"--batch must be a positive number of windows, not {args.batch}")
    if args.sweep:
        from kdlab.sweeps import expand, sweep_file

        configs = [cfg for _, cfg in expand(sweep_file(args.sweep), args.overrides)]
    else:
        from kdlab.composition import compose_or_explain

        configs = [compose_or_explain("train", args.overrides)]
    for cfg in configs:
        if cfg.role != "student" or cfg.teacher.get(node) is None:
            wanted = "teacher=cache" if node == "cache" else "objective=seqkd teacher=generated"
            raise ConfigError(f"kdlab {_name(node)} needs a student's overrides with {wanted}")
    device = args.device or _default_device()
    done: set[str] = set()
    for cfg in configs:
        if cfg.get("threads"):  # as for a run: on a busy CPU, more threads than cores crawl
            import torch

            torch.set_num_threads(int(cfg.threads))
        row = build(cfg, device=device, batch=args.batch, skip=done)
        done.add(row["key"])
    return 0


def _name(node: str) -> str:
    return "teacher cache" if node == "cache" else "generate"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _online_plan(cfg: DictConfig, node: str) -> Any:
    """The student planned with its teacher online: data, teacher, database."""
    from kdlab.run_plan import plan_run

    online = cfg.copy()
    with open_dict(online):
        del online.teacher[node]
        if node == "generate":  # plan it as a distilled student of the same teacher
            online.objective = {"_target_": "kdlab.modules.DistillModule", "kd_lambda": 1.0}
    return plan_run(online)


def build_cache(cfg: DictConfig, device: str, batch: int, skip: set[str]) -> dict[str, Any]:
    """Write (or resume, or find) the logit cache this student config reads."""
    from kdlab.teachers import teacher_facts
    from kdlab.teachers.cache import cache_identity, cache_path, read_manifest, write_cache

    plan = _online_plan(cfg, "cache")
    settings = cfg.teacher.cache
    identity = cache_identity(
        plan.teacher.key,
        plan.data,
        settings.get("k"),
        settings.get("dtype"),
        settings.get("tokens"),
    )
    folder = (
        Path(settings.dir) if settings.get("dir") else cache_path(plan.data.cache_dir, identity)
    )
    facts = teacher_facts(plan.teacher)
    row = _inference_row("logit_cache", identity.key, plan, dataclasses.asdict(identity), folder)
    if identity.key in skip:
        return row
    from kdlab.locking import file_lock

    with file_lock(folder.parent / f"{folder.name}.lock"):
        if (folder / "manifest.json").is_file():
            manifest = read_manifest(folder)
            print(f"kdlab: teacher cache {identity.key} is already in {folder}")
        else:
            plan.store.record_inference(identity.key, status="running", **row["fields"])
            start = time.perf_counter()
            model = plan.teacher.model.to(device)
            manifest = write_cache(
                model, plan.data, identity, folder, facts, batch, device, _progress("cache")
            )
            row["fields"]["wall_time_s"] = time.perf_counter() - start
            print(
                f"kdlab: teacher cache {identity.key}: {manifest['tokens']} tokens, "
                f"{manifest['bytes'] / 1e6:.1f} MB ({manifest['bytes_per_token']:.0f} bytes "
                f"per token) in {folder}"
            )
    plan.store.record_inference(
        identity.key,
        status="done",
        tokens=manifest["tokens"],
        flops=manifest["flops"],
        bytes=manifest["bytes"],
        **row["fields"],
    )
    return row


def build_generated(cfg: DictConfig, device: str, batch: int, skip: set[str]) -> dict[str, Any]:
    """Sample (or find) the generated corpus this student config reads."""
    from kdlab.teachers import teacher_facts
    from kdlab.teachers.generate import corpus_path, generation_identity, write_generated

    plan = _online_plan(cfg, "generate")
    identity = generation_identity(plan.teacher.key, cfg.teacher.generate, plan.data)
    path = corpus_path(plan.data.cache_dir, identity)
    row = _inference_row("generated", identity.key, plan, dataclasses.asdict(identity), path)
    if identity.key in skip:
        return row
    import json

    from kdlab.locking import file_lock

    with file_lock(path.with_name(path.name + ".lock")):
        meta_path = path.with_suffix(".json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            print(f"kdlab: generated corpus {identity.key} is already in {path}")
        else:
            plan.store.record_inference(identity.key, status="running", **row["fields"])
            start = time.perf_counter()
            model = plan.teacher.model.to(device)
            facts = teacher_facts(plan.teacher)
            meta = write_generated(
                model, plan.data, identity, path, facts, batch, device, _progress("generate")
            )
            row["fields"]["wall_time_s"] = time.perf_counter() - start
            print(f"kdlab: generated {meta['n_tokens']} tokens into {path}")
    plan.store.record_inference(
        identity.key,
        status="done",
        tokens=meta["n_tokens"],
        flops=meta["flops"],
        bytes=path.stat().st_size,
        **row["fields"],
    )
    return row


def _inference_row(
    kind: str, key: str, plan: Any, settings: dict[str, Any], path: Path
) -> dict[str, Any]:
    teacher, data = plan.teacher, plan.data
    return {
        "key": key,
        "fields": dict(
            kind=kind,
            teacher_key=teacher.key,
            teacher_kind=teacher.kind,
            teacher_model=teacher.name,
            teacher_n_params=teacher.n_params,
            teacher_tokens=teacher.tokens,
            teacher_loss=teacher.loss,
            corpus_fingerprint=data.fingerprint,
            tokenizer=data.tokenizer_name,
            vocab_size=data.vocab_size,
            n_ctx=data.seq_len,
            settings=settings,
            path=str(path),
        ),
    }


def _progress(what: str) -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 10:
            last[0] = now
            print(f"kdlab: {what}: {done}/{total}", flush=True)

    return report
