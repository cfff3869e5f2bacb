"""The kdlab command: every subcommand registers itself from the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kdlab.errors import ConfigError
from kdlab.rundb import RunDBError


def build_parser() -> argparse.ArgumentParser:
    from kdlab import demo, study
    from kdlab.dashboard import cli as dashboard_cli
    from kdlab.laws import cli as laws_cli
    from kdlab.report import cli as report_cli
    from kdlab.rundb import cli as runs_cli

    parser = argparse.ArgumentParser(
        prog="kdlab", description="Distillation scaling laws: runs, fits and plans."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    runs_cli.add_commands(sub)
    laws_cli.add_commands(sub)
    study.add_commands(sub)
    demo.add_commands(sub)
    report_cli.add_commands(sub)
    dashboard_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, RunDBError) as err:
        print(f"kdlab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
