#!/usr/bin/env bash
# Set up and run the built-in demo study (nano scale, built-in corpus, SQLite under runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/python.sh
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" -m kdlab.cli demo "$@"
