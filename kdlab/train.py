"""kdlab-train: the Hydra app. Compose a config, run it, record it."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kdlab.errors import ConfigError
from kdlab.rundb import RunDBError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from kdlab.runner import execute

    try:
        row = execute(cfg)
    except (ConfigError, RunDBError) as err:
        print(f"kdlab-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    return row.get("val_loss") if row else None


if __name__ == "__main__":
    main()
