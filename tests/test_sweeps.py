"""Sweeps from the command line: real Hydra multirun, skip, resume, parallel, preflight."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdlab.models.ladder import LADDERS, flops_per_token, non_embedding_params
from kdlab.rundb import RunStore
from kdlab.sweeps import plan_sweep, sweep_file
from tests.conftest import FAST, REPO, fresh_world, run_cli

# two small jobs of the nano supervised grid (33 and 66 steps: both learn)
GRID = ["model=nano_L1", "data.tokens_per_param=10,20", "data.budget_scale=0.5"]


def multirun(root: Path, name: str, *overrides: str, **kw):
    return run_cli(
        "kdlab.train",
        "-m",
        "-cd",
        "sweeps/nano",
        "-cn",
        name,
        f"paths.root_dir={root}",
        *FAST,
        *overrides,
        **kw,
    )


def _db(root: Path) -> RunStore:
    return RunStore(f"sqlite:///{root}/runs/kdlab.db")


def test_multirun_records_every_job_and_relaunch_trains_nothing(tmp_path):
    first = multirun(tmp_path, "supervised", *GRID)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _db(tmp_path).find(status="done")
    assert sorted(r["tokens_per_param"] for r in rows) == pytest.approx([5.0, 10.0])
    assert {r["family"] for r in rows} == {"supervised"} and {r["study"] for r in rows} == {"nano"}
    stamps = {r["key"]: r["updated_at"] for r in rows}

    # the plan sees them done, and the same grid with another seed as new science
    same = [f"paths.root_dir={tmp_path}", *FAST, *GRID]
    assert [j.status for j in plan_sweep(sweep_file("nano/supervised"), same).jobs] == ["done"] * 2
    other = plan_sweep(sweep_file("nano/supervised"), [*same, "seed=1"]).jobs
    assert [j.status for j in other] == ["todo"] * 2

    again = multirun(tmp_path, "supervised", *GRID)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == 2
    assert {r["key"]: r["updated_at"] for r in _db(tmp_path).find()} == stamps


def test_killed_multirun_relaunched_ends_with_every_job_done_once(tmp_path):
    # the second job (L2, 131 steps) runs for seconds after the first is recorded done,
    # so the poll below (every 0.2 s) kills the sweep in the middle of it
    grid = ["model=nano_L1,nano_L2", "data.tokens_per_param=10"]
    command = [
        sys.executable,
        "-m",
        "kdlab.train",
        "-m",
        "-cd",
        "sweeps/nano",
        "-cn",
        "supervised",
        f"paths.root_dir={tmp_path}",
        *FAST,
        *grid,
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    db = tmp_path / "runs" / "kdlab.db"
    while time.time() < deadline:
        if db.exists() and _db(tmp_path).find(status="done"):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r["key"]: r["updated_at"] for r in _db(tmp_path).find(status="done")}
    assert len(done_before) == 1, "the sweep should be killed after its first job"

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = _db(tmp_path).find()
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    for key, stamp in done_before.items():  # the finished job was not trained again
        assert _db(tmp_path).get(key)["updated_at"] == stamp


def test_two_joblib_workers_share_one_sqlite_file(tmp_path):
    grid = [
        "model=nano_L1",
        "data.tokens_per_param=5,6,7,8",  # 33 to 53 steps: every curve has two points
        "val.max_share=null",  # the nano sweep caps curve points for its tiny runs
        "hydra/launcher=parallel",
    ]
    out = multirun(tmp_path, "supervised", *grid)
    assert out.returncode == 0, out.stderr[-3000:]
    [config] = (tmp_path / "runs" / "logs").rglob("multirun.yaml")
    launcher = yaml.safe_load(config.read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    rows = _db(tmp_path).find()
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    assert all(len(_db(tmp_path).curve(r["key"])) >= 2 for r in rows)


def test_student_sweep_without_teachers_is_refused_with_the_list(tmp_path):
    out = multirun(tmp_path, "students")
    assert out.returncode == 2
    assert "2 teacher run(s) this sweep needs are not done" in out.stderr
    assert "-cn students" in out.stderr and "model=nano_L3" in out.stderr
    assert not (tmp_path / "runs" / "kdlab.db").exists() or not _db(tmp_path).find()
    via_study = run_cli("kdlab.cli", "sweep", "run", "nano/students", f"paths.root_dir={tmp_path}")
    assert via_study.returncode == 2 and "launch them first" in via_study.stderr


def test_the_printed_teacher_command_trains_the_teacher_the_sweep_needs(tmp_path):
    """The command keeps the sweep's own settings (here a scaled budget and the root), so
    running it as printed lets the student sweep start."""
    grid = ["model=nano_L1", "teacher.model=nano_L2", "data.tokens_per_param=10"]
    grid.append("data.budget_scale=0.5")
    refused = multirun(tmp_path, "students", *grid)
    assert refused.returncode == 2
    [command] = [ln.strip() for ln in refused.stderr.splitlines() if "kdlab-train -cd" in ln]
    assert "data.budget_scale=0.5" in command and f"paths.root_dir={tmp_path}" in command
    args = shlex.split(command)
    assert args[0] == "kdlab-train"
    teacher = run_cli("kdlab.train", *args[1:])
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    [row] = _db(tmp_path).find(role="teacher")
    assert row["model"] == "L2" and row["tokens"] == round(20 * row["n_params"] * 0.5)
    started = multirun(tmp_path, "students", *grid)
    assert started.returncode == 0, started.stderr[-3000:]
    [student] = _db(tmp_path).find(role="student")
    assert student["status"] == "done" and student["teacher_key"] == row["key"]


def test_sweep_plan_matches_the_papers_sizes_and_budgets():
    ladder = LADDERS["paper"]
    jobs = plan_sweep(sweep_file("paper/supervised_isoflop")).jobs
    assert len(jobs) == 9 * 4
    budgets = {3e19, 1e20, 3e20, 1e21}
    for job in jobs:
        shape = ladder[job.model]
        assert job.n_params == non_embedding_params(shape)
        c = 3 * flops_per_token(shape) * job.tokens
        assert any(abs(c - b) / b < 1e-6 for b in budgets), (job.model, c)
    teachers = plan_sweep(sweep_file("paper/teachers_fixed_m")).jobs
    assert [t.model for t in teachers] == ["546M", "975M", "1.82B", "2.72B", "4.82B", "7.75B"]
    assert all(t.tokens == pytest.approx(20 * t.n_params, abs=1) for t in teachers)
    students = plan_sweep(sweep_file("paper/students_fixed_m")).jobs
    assert sorted({round(s.tokens / s.n_params) for s in students}) == [20, 40, 80, 160, 320]
    out = run_cli("kdlab.cli", "sweep", "plan", "paper/supervised_ladder")
    assert out.returncode == 0 and "12 jobs, 0 done, 12 to run" in out.stdout


def test_a_misspelt_override_is_one_sentence():
    out = run_cli("kdlab.cli", "sweep", "plan", "paper/teachers_fixed_m", "logger.wandb.projec=kd")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "kdlab: error: the sweep paper/teachers_fixed_m does not compose: unknown setting "
        "'logger.wandb.projec'; did you mean logger.wandb.project? "
        "(prefix it with + to add a new one)"
    )


def test_ddp_on_cpu_with_two_processes(tmp_path):
    out = run_cli(
        "kdlab.train",
        f"paths.root_dir={tmp_path}",
        *FAST,
        "trainer=ddp",
        "trainer.devices=2",
        "model=nano_L1",
        "data.tokens=32768",
        "data.tokens_per_param=null",
        env=fresh_world(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEMBER: 2/2" in out.stdout + out.stderr  # two ranks really ran
    rows = _db(tmp_path).find()
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["tokens"] == 32768
    # one Hydra output directory, not one per rank
    assert len(list((tmp_path / "runs" / "logs" / "hydra").iterdir())) == 1


def test_ddp_run_diverging_on_one_rank_stops_every_rank(tmp_path):
    """A NaN on one rank alone: all ranks stop at that step (no rank left waiting in the
    gradient all-reduce) and the run is recorded as failed."""
    out = run_cli(
        "kdlab.train",
        f"paths.root_dir={tmp_path}",
        *FAST,
        "trainer=ddp",
        "trainer.devices=2",
        "model=nano_L1",
        "data.tokens=32768",
        "data.tokens_per_param=null",
        "objective._target_=tests.diverging.NanOnLastRank",
        timeout=300,
        env=fresh_world(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEMBER: 2/2" in out.stdout + out.stderr  # the NaN was on rank 1 of 2
    [row] = _db(tmp_path).find()
    assert row["status"] == "failed" and row["failure"].startswith("diverged"), row["failure"]
    assert "at step 3" in row["failure"]


def test_sweep_plan_of_a_study_names_the_commands_that_take_it():
    """A study.yaml lists stages and composes no job; planning it used to end in a traceback."""
    result = run_cli("kdlab.cli", "sweep", "plan", "pysrc/study")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("kdlab: error: ") and "is a study, not a sweep" in message
    assert "`kdlab study pysrc`" in message and "students_l4" in message
    assert len(message.splitlines()) == 1
