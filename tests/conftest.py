"""Shared helpers: compose the real Hydra config and run it, in process or as a command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kdlab.configs import CONF_DIR

REPO = Path(__file__).resolve().parent.parent

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
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
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


# -- the suite leaves no file in the repository ---------------------------------------
# Caches Python and the tools make are allowed; anything else new (a database, runs/, a
# fit JSON, a lock file) is a test writing into the tree, and fails the session.
_TOOL_CACHES = ("__pycache__/", ".pytest_cache/", ".ruff_cache/", ".egg-info/", ".venv/")
_BEFORE = pytest.StashKey[set]()


def _tree_files() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    paths = {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(c in f"/{p}" for c in _TOOL_CACHES)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _tree_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = sorted(_tree_files() - session.config.stash.get(_BEFORE, set()))
    if left:
        print(f"\nthe tests left files in the repository: {', '.join(left[:20])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
