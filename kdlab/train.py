"""kdlab-train: the Hydra app. Compose a config, run it, record it."""

from __future__ import annotations

import sys
from pathlib import Path

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


def extending_config_dir(argv: list[str]) -> list[str]:
    """``-cd DIR`` for a folder of the user's own configs that has no ``train.yaml``: DIR
    joins the shipped configs on Hydra's search path (``model=my_model`` finds
    DIR/model/my_model.yaml) instead of replacing them, which would leave no primary
    config. A DIR with its own train.yaml, or a sweep file chosen with ``-cn``, stays the
    primary config folder, as Hydra has it."""
    flags = ("-cd", "--config-dir", "--config_dir")
    named = any(
        a in ("-cn", "--config-name", "--config_name") or a.startswith("--config-name=")
        for a in argv
    )
    for i, arg in enumerate(argv):
        if arg in flags and i + 1 < len(argv):
            folder, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith(tuple(f"{f}=" for f in flags[1:])):
            folder, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        else:
            continue
        if named or (Path(folder) / "train.yaml").is_file():
            return argv
        search = f"hydra.searchpath=[file://{Path(folder).resolve()}]"
        # beside the other overrides: argparse takes the positional ones as one block
        first = next((j for j, a in enumerate(rest) if "=" in a and not a.startswith("-")), None)
        return [*rest, search] if first is None else [*rest[:first], search, *rest[first:]]
    return argv


def main() -> None:
    """kdlab-train: a mistake in the command line (an unknown group, value or setting) is
    one sentence and exit 2 before Hydra starts; then Hydra runs the job(s)."""
    from kdlab.composition import check_command_line

    sys.argv[1:] = extending_config_dir(sys.argv[1:])
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        sys.exit(error_exit("kdlab-train", err))
    run()


if __name__ == "__main__":
    from kdlab.processes import die_with_parent

    die_with_parent()  # started by kdlab study / sweep run: stop when that command dies
    main()
