#!/usr/bin/env bash
# Set up and run the test suite (slow tests too with: scripts/test.sh -m "")
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/python.sh
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The PostgreSQL tests get a throwaway server where PostgreSQL is installed or can be
# (.ci/run starts one before calling this script); it stops when this script exits, so
# pytest runs as a child here, not in place of the shell (exec would skip the clean-up).
if [ -z "${KDLAB_TEST_POSTGRES_URL:-}" ]; then
    KDLAB_PG_OPTIONAL=1 source scripts/postgres.sh
fi
"$PY" -m pytest -m "not slow" -q "$@"
