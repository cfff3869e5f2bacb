"""Hydra composition errors as one sentence, with the closest valid names.

A misspelt config group or value (``model=nano_L7``, ``data=stdlb``) or an unknown
setting (``optim.lrr=1``) makes Hydra print a multi-line dump and exit 1. kdlab-train,
kdlab sweep and kdlab study compose first and report such a mistake the way every other
bad input is reported: one sentence naming it, the nearest valid names, exit 2.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdlab.configs import CONF_DIR
from kdlab.errors import ConfigError

_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def swept_params(config: DictConfig) -> dict[str, Any]:
    """The grid under ``hydra.sweeper.params`` as plain values. A file that sweeps nothing
    has None or an empty config there, and an empty config is falsy: ``or {}`` would hand
    OmegaConf a plain dict, which it refuses."""
    swept = config.hydra.sweeper.params
    return OmegaConf.to_container(swept, resolve=False) if swept else {}


def _closest(word: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def _group_choices(group: str, config_dirs: Sequence[Path]) -> list[str]:
    found = {p.stem for d in config_dirs for p in (Path(d) / group).glob("*.yaml")}
    return sorted(found)


def _sibling_settings(defaults: DictConfig | None, dotted: str) -> list[str]:
    """The names of the settings beside ``dotted`` in the composed defaults."""
    if defaults is None:
        return []
    parent = dotted.rpartition(".")[0]
    node = OmegaConf.select(defaults, parent) if parent else defaults
    if not isinstance(node, DictConfig):
        return []
    return [str(k) for k in node.keys() if not str(k).startswith("_")]


def composition_error(
    err: BaseException, config_dirs: Sequence[Path], defaults: DictConfig | None = None
) -> str:
    """One sentence for a failed composition; ``defaults`` (the config composed without
    the user's overrides) lets an unknown setting be matched to its nearest names."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, value = str(err.missing_cfg_file).rpartition("/")
        if group:
            options = list(err.options or _group_choices(group, config_dirs))
            return (
                f"unknown {group} '{value}'{_closest(value, options)} "
                f"(choices: {', '.join(options)})"
            )
        return f"no config named '{value}' in {', '.join(map(str, config_dirs))}"
    message = str(err).strip()
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        key = unknown.group(1)
        parent, _, leaf = key.rpartition(".")
        near = difflib.get_close_matches(leaf, _sibling_settings(defaults, key), n=3, cutoff=0.6)
        names = [f"{parent}.{n}" if parent else n for n in near]
        hint = f"; did you mean {' or '.join(names)}?" if names else ""
        return f"unknown setting '{key}'{hint} (prefix it with + to add a new one)"
    return message.splitlines()[0].rstrip(".") if message else type(err).__name__


def compose_or_explain(
    config_name: str,
    overrides: Sequence[str],
    config_dir: Path = CONF_DIR,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose like kdlab-train; a mistake in the command line is a ConfigError."""
    dirs = [Path(config_dir), CONF_DIR]
    search = [] if Path(config_dir) == CONF_DIR else [f"hydra.searchpath=[file://{CONF_DIR}]"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            return compose(
                config_name=config_name,
                overrides=[*search, *overrides],
                return_hydra_config=return_hydra_config,
            )
        except (HydraException, OmegaConfBaseException) as err:
            try:
                defaults = compose(config_name=config_name, overrides=search)
            except (HydraException, OmegaConfBaseException):
                defaults = None
            raise ConfigError(composition_error(err, dirs, defaults)) from err


# Set by kdlab study and kdlab sweep run for the sweeps and jobs they launch: they have
# composed every job and checked its teachers (kdlab.sweeps.plan_sweep), so the child does
# not again (each Hydra composition costs about 0.4 s of CPU, a demo job's whole training
# at 0.1).
PLANNED_ENV = "KDLAB_SWEEP_PLANNED"


def check_command_line(argv: Sequence[str]) -> None:
    """Compose what ``kdlab-train ARGV`` asks for, every value of every swept override
    included, before Hydra runs it; raises ConfigError on the first mistake."""
    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if args.experimental_rerun:
        return
    if os.environ.get(PLANNED_ENV):  # kdlab study or sweep run composed it already
        return
    config_dir = Path(args.config_dir).resolve() if args.config_dir else CONF_DIR
    name = args.config_name or "train"
    if not args.multirun:
        compose_or_explain(name, args.overrides, config_dir)
        return
    from kdlab.sweeps import job_overrides  # the sweeper's own expansion of a grid

    head = compose_or_explain(name, [], config_dir, return_hydra_config=True)
    params = swept_params(head)
    seen: set[str] = set()
    for job in job_overrides(params, args.overrides):  # each value of each override once
        if not set(job) <= seen:
            compose_or_explain(name, job, config_dir)
            seen.update(job)
