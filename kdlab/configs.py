"""Where kdlab's Hydra configs (``conf/``) and sweep files (``sweeps/``) are.

A source checkout keeps them at the top of the repository; a built wheel (``pip install
.``, ``pip install git+...``) ships them inside the package as ``kdlab/conf`` and
``kdlab/sweep_files`` (see ``[tool.hatch.build]`` in pyproject.toml), so kdlab-train and
kdlab sweep work from any folder. A user's own config folder joins them on Hydra's
search path (``kdlab-train -cd my_conf``), and a sweep file anywhere composes with them.
"""

from __future__ import annotations

from pathlib import Path

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
