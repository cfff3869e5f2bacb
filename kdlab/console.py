"""The one rich console every kdlab command prints through."""

import sys

from rich.console import Console

# Tables of runs and grids are wide: keep them whole when output goes to a file or pipe.
console = Console(width=None if sys.stdout.isatty() else 160)
