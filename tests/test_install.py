"""kdlab installed as a cluster user installs it: a built wheel or ``pip install git+...``
into a fresh environment, used from a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CACHE_DIR, REPO

pytestmark = pytest.mark.slow


def _run(*argv: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    out = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, f"{' '.join(argv)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _venv(where: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (torch and the rest) but has
    its own site-packages, so the kdlab installed into it shadows any other."""
    _run(sys.executable, "-m", "venv", "--system-site-packages", str(where), cwd=where.parent)
    return where / "bin"


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDLAB_DB_URL")}
    return {**env, "KDLAB_ROOT": str(tmp / "work"), "WANDB_MODE": "offline"}


def _check_installed(bin_dir: Path, tmp: Path) -> None:
    env, work = _env(tmp), tmp / "work"
    work.mkdir()
    where = _run(
        str(bin_dir / "python"),
        "-c",
        "import kdlab.configs as c; print(c.CONF_DIR)",
        cwd=work,
        env=env,
    )
    conf = Path(where.stdout.strip())
    assert conf.is_relative_to(bin_dir.parent) and (conf / "train.yaml").is_file()

    job = _run(str(bin_dir / "kdlab-train"), "--cfg", "job", "model=198M", cwd=work, env=env)
    assert "ladder: paper\n  name: 198M" in job.stdout  # composed from the shipped conf/

    plan = _run(
        str(bin_dir / "kdlab"), "sweep", "plan", "paper/students_fixed_m", cwd=work, env=env
    )
    assert "2.15e+23" in plan.stdout

    # a user's own config folder, outside the repository, composes with the shipped ones
    mine = tmp / "my_conf" / "model"
    mine.mkdir(parents=True)
    shutil.copy(REPO / "conf" / "model" / "nano_L1.yaml", mine / "my_nano.yaml")
    run = _run(
        str(bin_dir / "kdlab-train"),
        "-cd",
        str(tmp / "my_conf"),
        "model=my_nano",
        "data.tokens=32768",  # 64 steps of 4 windows: enough to learn
        "data.tokens_per_param=null",
        "data.module.batch_size=4",
        "data.module.val_tokens=8192",
        "val.points=1",
        "threads=1",
        f"paths.cache_dir={CACHE_DIR}",
        "trainer.enable_progress_bar=false",
        cwd=work,
        env=env,
    )
    assert "done: val_loss" in run.stdout
    assert (work / "runs" / "kdlab.db").is_file()
    listing = _run(str(bin_dir / "kdlab"), "runs", "list", cwd=work, env=env)
    assert "1 runs in sqlite:///" in listing.stdout and "done" in listing.stdout


def test_built_wheel_works_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        str(REPO),
        cwd=tmp_path,
    )
    [wheel] = dist.glob("kdlab-*.whl")
    bin_dir = _venv(tmp_path / "venv")
    _run(
        str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel), cwd=tmp_path
    )
    _check_installed(bin_dir, tmp_path)


def test_pip_install_from_git_works_outside_the_repository(tmp_path):
    clone = tmp_path / "clone"  # the working tree as a commit, as a git URL would serve it
    _run("git", "clone", "-q", str(REPO), str(clone), cwd=tmp_path)
    bin_dir = _venv(tmp_path / "venv")
    _run(
        str(bin_dir / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        f"git+file://{clone}",
        cwd=tmp_path,
    )
    _check_installed(bin_dir, tmp_path)
