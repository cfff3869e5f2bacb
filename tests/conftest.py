"""Shared helpers: compose the real Hydra config and run it, in process or as a command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kdlab.train import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# One token cache for every test (keyed by corpus and tokenizer content, so sharing is safe).
CACHE_DIR = Path(tempfile.gettempdir()) / "kdlab-test-token-cache"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# every figure of a full report, named as kdlab report writes them
ALL_FIGURES = (
    "supervised_loss",
    "isoflop",
    "capacity_gap",
    "student_tokens",
    "parity",
    "plan_shares",
    "distillation_map",
)
# Small, fast settings shared by the training tests.
FAST = [
    "trainer.enable_progress_bar=false",
    "data.module.val_tokens=8192",
    "val.points=2",
    f"paths.cache_dir={CACHE_DIR}",
    "threads=1",  # tiny models: one thread is faster, and immune to a busy machine
]


def compose_run(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.root_dir={root}", *FAST, *overrides],
            return_hydra_config=False,
        )


@pytest.fixture
def train(tmp_path):
    """Compose and execute one run in this process; returns its database row."""
    from kdlab.runner import execute

    def run(*overrides: str, root: Path = tmp_path):
        return execute(compose_run(root, *overrides))

    return run


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 600):
    """A console command as a user types it (python -m keeps it on this interpreter)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
