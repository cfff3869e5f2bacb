"""``kdlab data prepare``: fill the token cache before the runs that read it.

Corpora read from outside kdlab (``files``, ``hf``, ``c4``) are tokenized here, once, in
parallel, before a sweep: their runs refuse to start without the cache and print the
command that builds it (``require_prepared``), rather than each waiting, GPUs held, for
the first of them to tokenize. Preparing where the hub can be reached also serves compute
nodes that cannot reach it: runs given the same data settings and cache folder read
everything there (the corpus's fingerprint, its tokenizer, its token array).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", description="Prepare a corpus for the runs.")
    sub = data.add_subparsers(dest="data_command", required=True)
    prepare = sub.add_parser(
        "prepare",
        help="tokenize a corpus into the token cache",
        description="Build the token cache of the corpus that kdlab-train would read with "
        "the same overrides (e.g. data=c4 paths.cache_dir=/shared/kdlab-cache), reading the "
        "corpus once and tokenizing it in parallel; a killed prepare resumes.",
    )
    prepare.add_argument(
        "--num-proc",
        type=int,
        help=f"tokenizing processes (default: for a BPE, the CPUs this job may use, "
        f"{usable_cpus()} here; for bytes, 1: encoding them costs less than sending them to "
        "another process, BENCHMARKS.md data_prepare)",
    )
    prepare.add_argument("overrides", nargs="*", help="kdlab-train overrides that choose the data")
    prepare.set_defaults(func=_prepare)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a SLURM job's or taskset's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _prepare(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from kdlab.data.corpora import build_corpus
    from kdlab.data.tokenizers import TokenizerConfig

    if args.num_proc is not None and args.num_proc < 1:
        raise ConfigError(f"--num-proc must be a positive whole number, not {args.num_proc}")
    try:
        cfg = _compose_train(args.overrides)
        module = OmegaConf.to_container(cfg.data.module, resolve=True)
        missing = sorted(OmegaConf.missing_keys(cfg.data))
        if missing:
            raise ConfigError(f"data.{missing[0]} must be given (e.g. data.{missing[0]}=...)")
        cache_dir = Path(module["cache_dir"])
        corpus = build_corpus(module["corpus"])
        config = TokenizerConfig.from_any(module.get("tokenizer"))
        path = _tokenized(corpus, config, cache_dir, args.num_proc)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ConfigError(str(cause).splitlines()[0]) from err
    meta = json.loads(path.with_suffix(".json").read_text())
    print(
        f"kdlab: corpus {corpus.name} ({meta['fingerprint']}), tokenizer "
        f"{meta['tokenizer']}: {meta['n_tokens']:,} tokens in {path}"
    )
    return 0


def _tokenized(corpus: Any, config: Any, cache_dir: Path, num_proc: int | None) -> Path:
    """Build the token cache, reading the corpus once (a BPE trained here reads a prefix
    first, and is cached, keyed by the fingerprint, once the pass has found it)."""
    from kdlab.data.cache import build_token_cache, corpus_info, info_memo_path
    from kdlab.data.tokenizers import (
        bpe_cache_path,
        build_tokenizer,
        resolve_kind,
        save_bpe,
        train_bpe,
    )

    kind = resolve_kind(config, corpus)
    if num_proc is None:
        num_proc = usable_cpus() if kind == "bpe" else 1
    trained = kind == "bpe" and config.path is None
    if not trained or info_memo_path(corpus, cache_dir).is_file():
        info = corpus_info(corpus, cache_dir) if trained else None
        tokenizer = build_tokenizer(config, corpus, info=info, cache_dir=cache_dir)
        return build_token_cache(corpus, tokenizer, cache_dir, num_proc, info)
    bpe = train_bpe(config, corpus)
    path = build_token_cache(corpus, bpe[0], cache_dir, num_proc)
    info = corpus_info(corpus, cache_dir)  # memoised by the pass
    saved = bpe_cache_path(config, info, cache_dir)
    if not saved.is_file():
        save_bpe(bpe, config, info, saved)
    return path


def require_prepared(cfg: Any, corpus: Any, tokenizer: Any, cache_dir: str | Path) -> None:
    """Refuse a run whose corpus must be prepared (``tokenized_by_runs`` False) and has
    no token cache here, with the ``kdlab data prepare`` command that builds it."""
    from kdlab.data.cache import prepared_token_cache, prepared_tokenizers

    if corpus.tokenized_by_runs or prepared_token_cache(corpus, tokenizer, cache_dir):
        return
    others = prepared_tokenizers(corpus, cache_dir)
    built = f" (it has one for tokenizer {', '.join(others)} only)" if others else ""
    folder = os.path.abspath(cache_dir)
    raise ConfigError(
        f"the {corpus.name} corpus has no token cache for tokenizer {_label(tokenizer)} in "
        f"{folder}{built}: build it before the runs with `{prepare_command(cfg)}`"
    )


def _label(tokenizer: Any) -> str:
    """A tokenizer as its config names it (its content name may not exist yet)."""
    from kdlab.data.tokenizers import TokenizerConfig

    config = TokenizerConfig.from_any(tokenizer)
    if config.path:
        return config.path
    return f"bpe-{config.vocab_size}" if config.kind == "bpe" else config.kind


def prepare_command(cfg: Any) -> str:
    """The ``kdlab data prepare`` command line that builds the token cache a composed run
    config reads: its data choice, then every corpus and tokenizer setting that differs
    from that choice's (however the run got it: command line, sweep file or interpolation),
    and the cache folder."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from kdlab.configs import CONF_DIR

    ours = OmegaConf.to_container(cfg.data.module, resolve=True)
    if HydraConfig.initialized():  # a job of kdlab-train: Hydra recorded its choice
        choices = [HydraConfig.get().runtime.choices.get("data")]
    else:  # composed elsewhere: the data config it differs from least
        choices = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
    overrides = min((_data_overrides(choice, ours) for choice in choices), key=len)
    folder = os.path.abspath(ours["cache_dir"])  # the same folder from any working directory
    overrides.append(f"paths.cache_dir={hydra_value(folder)}")
    return shlex.join(["kdlab", "data", "prepare", *overrides])


def _data_overrides(choice: str | None, ours: dict[str, Any]) -> list[str]:
    """``data=<choice>`` and the settings that make its corpus and tokenizer ``ours``."""
    from omegaconf import OmegaConf

    overrides = [f"data={choice}"] if choice else []
    base = _compose_train(overrides)
    theirs = OmegaConf.to_container(base.data.module, resolve=True)
    for name, value in ours["corpus"].items():
        if theirs["corpus"].get(name, _ABSENT) != value:
            add = "" if name in theirs["corpus"] else "++"  # a setting the choice lacks
            overrides.append(f"{add}data.module.corpus.{name}={hydra_value(value)}")
    if theirs.get("tokenizer") != ours.get("tokenizer"):
        # the whole node: a name and a mapping of settings cannot be merged
        overrides.append(f"++data.module.tokenizer={hydra_value(ours.get('tokenizer'))}")
    return overrides


def _compose_train(overrides: list[str]) -> Any:
    """The shipped ``train`` config with ``overrides``, also from inside a running Hydra
    app (a job being refused), whose global state is set aside and then put back."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdlab.configs import CONF_DIR

    app = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        if app is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(app)


_ABSENT = object()
_PLAIN = re.compile(r"[A-Za-z_/.][A-Za-z0-9_./-]*")  # a string Hydra reads as written


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: strings quoted where Hydra would read them
    otherwise (``${`` escaped, so a folder name is taken as written), lists and mappings
    spelled out."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    # Hydra reads a backslash as an escape only before a quote (or at the end)
    text = text.replace('"', '\\"').replace("${", "\\${")
    return f'"{text}\\"' if text.endswith("\\") else f'"{text}"'
