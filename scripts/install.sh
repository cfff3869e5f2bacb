#!/usr/bin/env bash
# Install kdlab and everything it needs, CPU-only where there is no NVIDIA GPU.
# torch goes in first: with it present, the range in pyproject.toml is satisfied and
# nothing pulls the several GB of CUDA packages an unpinned torch would. An installed
# torch (say the build for your cluster's CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
if externally_managed "$PY"; then
    # system site-packages stay visible, so a torch installed for the system is kept
    "$PY" -m venv --system-site-packages .venv && .venv/bin/python -m pip --version >/dev/null || {
        rm -rf .venv
        echo "install.sh: $PY refuses pip (PEP 668) and cannot make a venv with pip;" \
            "install python3-venv, or set PYTHON to a Python of your own" >&2
        exit 1
    }
    source scripts/python.sh
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null; then
        "$PY" -m pip install -q "torch==2.13.0"
    else  # the CPU build: PyTorch's CPU index, or a local wheel pip is configured to find
        # (2.13.0 matches 2.13.0+cpu, which pip prefers; macOS wheels carry no +cpu)
        "$PY" -m pip install -q --retries 0 "torch==2.13.0" \
            --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 | grep -v "Retrying" || true
        "$PY" -c "import torch" || { echo "install.sh: torch 2.13.0 did not install" >&2; exit 1; }
    fi
fi
"$PY" -m pip install -q -e ".[dev]"
