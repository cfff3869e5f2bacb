"""``kdlab data prepare``: fill the token cache before the runs that read it.

A cluster's compute nodes often cannot reach the Hugging Face hub. Preparing a corpus where
the hub can be reached builds everything a run reads from ``paths.cache_dir`` (the
corpus's fingerprint, its tokenizer, its token array); runs given the same data settings
and cache folder then read it there and download nothing.
"""

from __future__ import annotations

import argparse

from kdlab.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", description="Prepare a corpus for the runs.")
    sub = data.add_subparsers(dest="data_command", required=True)
    prepare = sub.add_parser(
        "prepare",
        help="tokenize a corpus into the token cache",
        description="Build the token cache of the corpus that kdlab-train would read with "
        "the same overrides (e.g. data=c4 paths.cache_dir=/shared/kdlab-cache).",
    )
    prepare.add_argument("overrides", nargs="*", help="kdlab-train overrides that choose the data")
    prepare.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    from kdlab.configs import CONF_DIR, build

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=args.overrides)
        shape = instantiate(cfg.model)
        data = build(cfg.data.module, split="teacher", seq_len=shape.n_ctx, train_tokens=1)
        data.prepare_data()
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ConfigError(str(cause).splitlines()[0]) from err
    cache = data.cache
    print(
        f"kdlab: corpus {data.corpus.name} ({data.fingerprint}), tokenizer "
        f"{data.tokenizer_name}: {cache.n_tokens:,} tokens in {cache.path}"
    )
    return 0
