#!/usr/bin/env bash
# Install kdlab and everything it needs into the current Python, CPU-only where no GPU.
# The CPU build of torch goes in first: with it present, the range in pyproject.toml is
# satisfied and nothing pulls the several GB of CUDA packages an unpinned torch would.
# On a GPU cluster, install the torch build for your CUDA first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
