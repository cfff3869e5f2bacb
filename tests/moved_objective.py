"""kdlab's objectives under other class paths, as after a refactoring moved them (for
tests/test_run_key.py): identical behaviour, another ``_target_``."""

from __future__ import annotations

from kdlab.modules import DistillModule, PretrainModule


class MovedPretrainModule(PretrainModule):
    """PretrainModule, defined in another module."""


class MovedDistillModule(DistillModule):
    """DistillModule, defined in another module."""
