#!/usr/bin/env bash
# Set up and run the test suite (slow tests too with: scripts/test.sh -m "")
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/python.sh
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" -m pytest -m "not slow" -q "$@"
