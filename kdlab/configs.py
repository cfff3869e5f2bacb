"""Where kdlab's Hydra configs (``conf/``) and sweep files (``sweeps/``) are, and the
resolvers they use.

A source checkout keeps them at the top of the repository; a built wheel (``pip install
.``, ``pip install git+...``) ships them inside the package as ``kdlab/conf`` and
``kdlab/sweep_files`` (see ``[tool.hatch.build]`` in pyproject.toml), so kdlab-train and
kdlab sweep work from any folder. A user's own config folder joins them on Hydra's
search path (``kdlab-train -cd my_conf``), and a sweep file anywhere composes with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

_PACKAGE = Path(__file__).resolve().parent


def _located(in_package: str, in_checkout: str) -> Path:
    for candidate in (_PACKAGE / in_package, _PACKAGE.parent / in_checkout):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"kdlab's {in_checkout}/ folder is missing: neither {_PACKAGE / in_package} (an "
        f"installed wheel) nor {_PACKAGE.parent / in_checkout} (a source checkout) exists"
    )


CONF_DIR: Path = _located("conf", "conf")
SWEEPS_DIR: Path = _located("sweep_files", "sweeps")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` for a node that holds (or interpolates) a user's paths.

    ``instantiate`` resolves its node in place, and OmegaConf then reads a '${' inside a
    resolved folder name as a variable; here the node becomes plain values first, and its
    ``_target_`` is called with them, ``kwargs`` taking precedence.
    """
    spec = OmegaConf.to_container(node, resolve=True)
    target = get_object(spec.pop("_target_"))
    return target(**{**spec, **kwargs})


# Hydra assigns the job's output folder to ``hydra.runtime.output_dir`` as a string, and
# OmegaConf reads a '${' in an assigned string as an interpolation: a run root such as
# '/data/${USER}-runs' (KDLAB_ROOT, paths.root_dir=..., the working directory) would
# stop every job. These resolvers give Hydra's log file the folder as it was assigned, and
# skip Hydra's copy of the configs in such a folder (kdlab records each run's config in
# its database row).


def _assigned_output_dir(*, _root_: DictConfig) -> str:
    """``hydra.runtime.output_dir`` exactly as Hydra assigned it, never interpolated."""
    return OmegaConf.to_container(_root_.hydra.runtime, resolve=False)["output_dir"]


def _output_subdir(name: str, *, _root_: DictConfig) -> Any:
    """Hydra's ``output_subdir``, or None (no copy) under a folder whose name holds '${'."""
    return None if "${" in _assigned_output_dir(_root_=_root_) else name


OmegaConf.register_new_resolver("kdlab.hydra_output_dir", _assigned_output_dir, replace=True)
OmegaConf.register_new_resolver("kdlab.hydra_output_subdir", _output_subdir, replace=True)
