"""The study report: figures, tables and plans of a run database and its fits.

``build_report(out_dir, db=..., supervised_fit=..., distillation_fit=...)`` writes
``index.html`` and its PNGs; ``kdlab report`` is its command line (kdlab/report/cli.py).
Names are imported lazily so ``kdlab --help`` does not load matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PlanOptions", "Report", "build_report", "log_to_wandb"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdlab.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'kdlab.report' has no attribute {name!r}")
