"""The kdlab command.

Subcommands are listed here by name with the module that implements them, and only the
module of the command being run is imported: ``kdlab plan`` never pays for Lightning,
and no subcommand module imports this one back (each registers its own parsers through
``add_commands(subparsers)``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kdlab.errors import ConfigError, error_exit

# name: (module with add_commands, one line for `kdlab --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "runs": ("kdlab.rundb.cli", "list, show or export recorded runs"),
    "fit": ("kdlab.laws.cli", "fit the supervised or distillation scaling law"),
    "predict": ("kdlab.laws.cli", "evaluate a fitted (or the published) law"),
    "plan": ("kdlab.laws.cli", "compute-optimal distillation for a student size and budget"),
    "sweep": ("kdlab.study", "plan or launch a grid from sweeps/"),
    "study": ("kdlab.study", "run a study's stages in order, skipping what is done"),
    "demo": ("kdlab.demo", "run the built-in nano study end to end"),
    "report": ("kdlab.report.cli", "HTML report of the runs, fits and plans"),
    "dashboard": ("kdlab.dashboard.cli", "interactive planner: a budget in, a strategy out"),
    "data": ("kdlab.data.cli", "prepare a corpus's token cache (for runs without network)"),
    "teacher": ("kdlab.teachers.cli", "run a teacher once for many students (logit cache)"),
    "generate": ("kdlab.teachers.cli", "sample a corpus from a teacher for text-only students"),
    "export": ("kdlab.hf", "export a run's weights (Hugging Face transformers format)"),
}


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand asked for: the first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command`` fully registered, the others as one-line entries."""
    parser = argparse.ArgumentParser(
        prog="kdlab", description="Distillation scaling laws: runs, fits and plans."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).add_commands(sub)
    else:
        for name, (_, help_line) in COMMANDS.items():
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # the fits' small SciPy optimisations run fastest on one BLAS thread; this must be set
    # before anything loads NumPy
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_name(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        return error_exit("kdlab", err)


if __name__ == "__main__":
    sys.exit(main())
