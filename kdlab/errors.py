"""The one exception for bad input, and the one way a command reports it.

Every kdlab command (``kdlab ...`` and ``kdlab-train``) ends bad input the same way: one
sentence on stderr as ``<command>: error: <sentence>`` and exit code 2, before any
compute and before any database row.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A run or command was asked for something it cannot do; raised before any compute."""


def error_exit(prog: str, err: BaseException | str) -> int:
    """Print ``err`` as the command's one-sentence error; return the exit code for it."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT
