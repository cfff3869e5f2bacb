"""Library chatter a kdlab user need not read, turned off in one place.

Each entry says why it is noise here; anything else a library says still shows.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's advertisement for its cloud logger, and its note that validation runs every
# interval kdlab itself chose (build_trainer).
_LIGHTNING_NOISE = ("💡 Tip:", "was configured so validation will run")


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _LIGHTNING_NOISE)


def quiet_training_logs() -> None:
    """Called once a run's logging is set up (after Hydra configured it)."""
    lightning = logging.getLogger("lightning.pytorch")
    lightning.addFilter(_DropLightningNoise())
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningNoise())
    # Lightning prints through its own console handler and also passes each line to the
    # root logger, which Hydra prints (and files): every line came out twice. Where no one
    # configured the root logger (a test, a notebook) Lightning's handler is all there is.
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
    ignore_library_warnings()


def ignore_library_warnings() -> None:
    """Two warnings about code that is not kdlab's, or does not apply to it; every run
    filters them, and so does every test (tests/conftest.py) that builds a Trainer itself."""
    # Lightning's own pytree helper calls an API newer torch deprecated: not ours to fix
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # kdlab's loaders use no worker processes (kdlab/data/datamodule.py: num_workers=0),
    # so an iterable dataset's length cannot be duplicated across workers
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
