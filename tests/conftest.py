"""Shared helpers: compose the real Hydra config and run it, in process or as a command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from kdlab.configs import CONF_DIR
from kdlab.quiet import ignore_library_warnings
from kdlab.wandb_offline import read_offline_run

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
# Small, fast settings shared by the training tests. A batch of 4 windows gives a tiny
# budget enough optimizer steps to learn (a run whose loss is not below ln V is recorded
# as failed: it learned nothing a law could be fitted to).
FAST = [
    "trainer.enable_progress_bar=false",
    "data.module.batch_size=4",
    "data.module.val_tokens=8192",
    "val.points=2",
    f"paths.cache_dir={CACHE_DIR}",
    "threads=1",  # tiny models: one thread is faster, and immune to a busy machine
]


@pytest.fixture(autouse=True)
def _library_warnings_as_in_a_run():
    """What every kdlab run filters (kdlab.quiet), for the tests that build a Trainer
    themselves; pytest restores its filters after each test."""
    ignore_library_warnings()


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


@pytest.fixture(scope="session")
def postgres_url():
    """The test PostgreSQL server: KDLAB_TEST_POSTGRES_URL's (.ci/run, scripts/test.sh),
    else a private one scripts/postgres.sh starts for this session where PostgreSQL is
    installed; skips where it is not. The server stops when the session ends."""
    url = os.environ.get("KDLAB_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("no PostgreSQL server here (no /usr/lib/postgresql/*/bin/initdb)")
    # the script's server lives as long as the shell that sourced it: this one, until
    # its stdin closes
    script = 'source scripts/postgres.sh >&2 && echo "$KDLAB_TEST_POSTGRES_URL" && read -r _'
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    url = shell.stdout.readline().strip()
    if not url:
        shell.wait(timeout=60)
        pytest.fail("scripts/postgres.sh did not start a PostgreSQL server")
    yield url
    shell.stdin.close()
    shell.wait(timeout=120)


@pytest.fixture
def fresh_database(postgres_url):
    """A database of its own on the test server, so a whole study can be built in it."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"kdlab_{uuid.uuid4().hex[:8]}"
    server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    server.dispose()


def fresh_world() -> dict[str, str | None]:
    """The environment of a DDP launch from a clean shell: in-process Lightning tests
    before this one leave their world (LOCAL_RANK, NODE_RANK, MASTER_PORT...) in
    os.environ, and a child that inherits LOCAL_RANK believes it was launched as one rank
    and waits for a second that never comes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    names = ("MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return {**dict.fromkeys(names), "MASTER_PORT": port}


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 600):
    """A console command as a user types it (python -m keeps it on this interpreter);
    ``env`` adds to this process's environment, and a None value removes the variable."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_figure(path: Path, min_width: int = 800, min_height: int = 500) -> None:
    """A figure kdlab drew, not an empty frame: a PNG at least this large in which a few
    percent of the pixels are ink on the white background and coloured marks (data, fits;
    axes and text are grey) spread over a fifth of its height. An empty pair of labelled
    axes has about 2% ink and no colour at all."""
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)
    height, width, _ = rgb.shape
    assert width >= min_width and height >= min_height, (path.name, width, height)
    ink = (255 - rgb.min(axis=2) > 30).mean()
    colour = rgb.max(axis=2) - rgb.min(axis=2) > 60
    spread = colour.any(axis=1).mean()
    assert ink > 0.025 and colour.mean() > 0.001 and spread > 0.2, (path.name, ink, spread)


def wandb_offline_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    """An offline W&B run read from its ``.wandb`` file (kdlab.wandb_offline): the run's own
    fields (id, name, group, job type, tags), its config, and the rows it logged.

    wandb-core writes the file in the background and may still hold it, header only, after
    ``run.finish()`` returns (about 1 read in 4 under load). A run logged in this process is
    therefore read after W&B's service has shut down, as ``wandb sync`` reads a job's runs
    after the job has ended."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    run = read_offline_run(run_dir)
    return run.run, run.config, run.rows


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


def write_sharded_checkpoint(
    path: Path, step: int, items: dict | None = None, metadata: bool = True
) -> Path:
    """A sharded checkpoint as Lightning's ModelParallelStrategy writes one, in miniature:
    torch.distributed.checkpoint's shards and index of ``items`` (by default a weight
    and an optimizer setting), then (``metadata``) meta.pt with the step, written last."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    if items is None:
        weights = {"model.w": torch.full((2,), float(step))}
        items = {"state_dict": weights, "optimizer_0": {"param_groups": [{"lr": 0.1}]}}
    with warnings.catch_warnings():  # one process and no process group, as meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(items, checkpoint_id=path, no_dist=True)
    if metadata:
        torch.save({"global_step": step}, path / "meta.pt")
    return path
