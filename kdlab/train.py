"""kdlab-train: the Hydra app. Compose a config, run it, record it."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from kdlab.configs import CONF_DIR
from kdlab.errors import ConfigError, error_exit


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def run(cfg: DictConfig) -> float | None:
    from kdlab.runner import execute

    try:
        row = execute(cfg)
    except ConfigError as err:
        sys.exit(error_exit("kdlab-train", err))
    return row.get("val_loss") if row else None


def main() -> None:
    """kdlab-train: a mistake in the command line (an unknown group, value or setting) is
    one sentence and exit 2 before Hydra starts; then Hydra runs the job(s)."""
    from kdlab.composition import check_command_line

    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        sys.exit(error_exit("kdlab-train", err))
    run()


if __name__ == "__main__":
    from kdlab.processes import die_with_parent

    die_with_parent()  # started by kdlab study / sweep run: stop when that command dies
    main()
