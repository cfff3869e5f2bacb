"""kdlab study shows its log folder and each job's progress with its numbers."""

from __future__ import annotations

import json
import math
import re

import pytest

from kdlab.progress import StageBoard, fmt_count, job_line, read_jobs, stage_left
from kdlab.rundb import RunStore
from tests.conftest import FAST, run_cli

TEACHERS = """\
defaults:
  - train
  - _self_
study: tiny
family: teachers
role: teacher
data:
  tokens_per_param: 10
  budget_scale: 0.5
hydra:
  sweeper:
    params:
      model: nano_L1,nano_L2
"""


def test_a_study_prints_its_log_folder_and_a_line_per_job_with_its_numbers(tmp_path):
    study = tmp_path / "tiny"
    study.mkdir()
    (study / "study.yaml").write_text("stages: [teachers]\n")
    (study / "teachers.yaml").write_text(TEACHERS)
    root = tmp_path / "root"
    out = run_cli("kdlab.cli", "study", str(study), f"paths.root_dir={root}", *FAST)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    logs = root / "runs" / "logs"
    assert f"logs of this study: {logs}" in out.stdout
    assert f"logs: {logs / 'tiny-teachers'}" in out.stdout
    rows = {r["model"]: r for r in RunStore(f"sqlite:///{root}/runs/kdlab.db").find()}
    assert sorted(rows) == ["L1", "L2"]
    # each job's output in a file of its own, named by its number in the sweep's plan
    for number, model in enumerate(["L1", "L2"]):
        log = (logs / "tiny-teachers" / f"{number}.log").read_text()
        done = re.search(r"^kdlab: run (\w+) done: val_loss", log, re.M)
        assert done and rows[model]["key"].startswith(done.group(1)), log[-2000:]
        assert "Warning" not in log, log[-2000:]
    # the children's files: each job's last update while training, then its end
    (folder,) = (logs / "progress").iterdir()
    jobs = read_jobs(folder)
    assert [j["model"] for j in jobs] == ["L2", "L1"]  # started largest first
    job_files = {job["model"]: job for job in jobs}
    for model, row in rows.items():
        # not a terminal: one line per job when it ends, with the row's numbers
        line = re.search(rf"^teacher +{model} +N +(\S+) +D +(\S+) +done: .*$", out.stdout, re.M)
        assert line, out.stdout
        assert line.group(1) == fmt_count(row["n_params"]) and line.group(2) == fmt_count(
            row["tokens"]
        )
        numbers = re.search(r"val loss (\d\.\d{4}), (\S+) tok/s, (\d+)s$", line.group(0))
        assert numbers, line.group(0)
        assert float(numbers.group(1)) == pytest.approx(row["val_loss"], abs=5e-5)
        assert numbers.group(2) == fmt_count(row["tokens_per_sec"])
        # the job's own time from its file (a fast job's can round to 0s)
        elapsed = job_files[model]["elapsed_s"]
        assert 0 < elapsed <= row["wall_time_s"] + 60
        assert int(numbers.group(3)) == round(elapsed)
    assert re.search(r"^teachers: 2/2 jobs ended in \d+[smh]$", out.stdout, re.M)

    for job in jobs:
        row = rows[job["model"]]
        assert job["status"] == "done" and job["key"] == row["key"]
        assert job["n_params"] == row["n_params"] and job["tokens"] == row["tokens"]
        assert 0 < job["tokens_done"] <= row["tokens"]
        # the training loss of the last update, written at most once a second: in a run of
        # a few seconds it can be an early step's, above ln V, so only its sanity is checked
        assert math.isfinite(job["loss"]) and job["loss"] > 0
        assert job["val_loss"] == pytest.approx(row["val_loss"])
        assert job["flops"] == pytest.approx(row["flops"])

    # a study that runs another's sweep on another corpus (its study.yaml's overrides,
    # applied to every stage): new runs, logged under its own name, not the other's
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.yaml").write_text(
        "overrides: [data=markov, data.module.corpus.n_tokens=200000, study=other]\n"
        "stages: [../tiny/teachers]\n"
    )
    out = run_cli("kdlab.cli", "study", str(other), f"paths.root_dir={root}", *FAST)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"logs: {logs / 'other-teachers'}" in out.stdout
    ran = RunStore(f"sqlite:///{root}/runs/kdlab.db").find(study="other")
    assert sorted(r["model"] for r in ran) == ["L1", "L2"]
    assert {r["corpus"] for r in ran} == {"markov"} and {r["status"] for r in ran} == {"done"}
    assert len(list((logs / "other-teachers").glob("*.log"))) == 2


def test_stages_written_as_a_group_share_one_queue_of_jobs(tmp_path):
    """stages: [[teachers, baselines]] with two jobs at once: the four jobs from one
    queue, two at a time, each a single run forked from the study's zygote, one board."""
    study = tmp_path / "pair"
    study.mkdir()
    (study / "study.yaml").write_text("stages: [[teachers, baselines]]\n")
    (study / "teachers.yaml").write_text(TEACHERS)
    baselines = TEACHERS.replace(
        "family: teachers\nrole: teacher", "family: baselines\nrole: supervised"
    )
    (study / "baselines.yaml").write_text(baselines)
    root = tmp_path / "root"
    parallel = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    out = run_cli("kdlab.cli", "study", str(study), f"paths.root_dir={root}", *FAST, *parallel)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    logs = root / "runs" / "logs"
    for stage in ("teachers", "baselines"):
        assert f"pair/{stage}: 2 jobs, 2 to run" in out.stdout
        assert f"logs: {logs / f'pair-{stage}'}" in out.stdout
        assert sorted(p.name for p in (logs / f"pair-{stage}").iterdir()) == ["0.log", "1.log"]
    assert re.search(r"^teachers, baselines: 4/4 jobs ended in \d+[smh]$", out.stdout, re.M)
    rows = RunStore(f"sqlite:///{root}/runs/kdlab.db").find()
    assert sorted((r["role"], r["model"], r["status"]) for r in rows) == [
        ("supervised", "L1", "done"),
        ("supervised", "L2", "done"),
        ("teacher", "L1", "done"),
        ("teacher", "L2", "done"),
    ]
    # no Hydra multirun: each job a single run (its own folder of Hydra's, its mode RUN)
    assert not (logs / "multirun").exists()
    runs = sorted((logs / "hydra").glob("*/.hydra/hydra.yaml"))
    assert len(runs) == 4 and all("mode: RUN\n" in r.read_text() for r in runs)
    # and from one queue: a teacher and a baseline trained at the same time
    (folder,) = (logs / "progress").iterdir()
    spans = {
        role: [
            (j["opened"], j["opened"] + j["elapsed_s"])
            for j in read_jobs(folder)
            if j["role"] == role
        ]
        for role in ("teacher", "supervised")
    }
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["teacher"] for b0, b1 in spans["supervised"])


def test_the_jobs_a_study_may_run_at_once_come_from_its_launcher_overrides():
    from kdlab.study import stage_slots

    assert stage_slots([]) == 1  # the basic launcher: one job at a time
    assert stage_slots(["hydra/launcher=parallel"]) == 2  # conf/hydra/launcher/parallel.yaml
    assert stage_slots(["hydra/launcher=parallel", "hydra.launcher.n_jobs=4"]) == 4
    assert stage_slots(["hydra/launcher=slurm"]) == 1


def _job(**fields):
    base = dict(key="k", role="student", model="L2", n_params=26_800, tokens=1_072_000)
    return {**base, "flops": 3 * 6 * 26_800 * 1_072_000, **fields}


def test_a_running_job_line_has_its_share_loss_speed_and_time_left():
    running = _job(status="running", tokens_done=268_000, loss=2.4567, tokens_per_sec=4_150.0)
    line = job_line({**running, "left_s": 95.4})
    assert line.split() == (
        "student L2 N 26.8k D 1.07M 25% loss 2.457 4.15k tok/s left 95s".split()
    )
    assert job_line(_job(status="running")).endswith("starting")


def test_stage_time_left_is_the_compute_left_at_the_rate_reached():
    flops = _job()["flops"]
    ended = _job(status="done")
    half = _job(status="running", tokens_done=536_000)
    # 1.5 jobs' compute in 30 s; 4 jobs in the stage: 2.5 jobs left at 20 s a job
    assert stage_left([ended, half], 4 * flops, 30.0) == pytest.approx(50.0)
    assert stage_left([], 4 * flops, 30.0) is None


def test_the_board_falls_back_on_the_plan_estimate_before_any_progress(tmp_path):
    from rich.console import Console

    console = Console(file=open(tmp_path / "out.txt", "w"), force_terminal=False)  # noqa: SIM115
    board = StageBoard("students", 3, 1e12, tmp_path, console, estimate=600.0)
    assert board.summary([]).startswith("students: 0/3 jobs ended in 0s, stage time left about")
    assert board.summary([]).endswith("10m")
    (tmp_path / "k.json").write_text(json.dumps(_job(status="done", val_loss=2.5, elapsed_s=3)))
    board.tick()
    console.file.close()
    assert "done: val loss 2.5000, - tok/s, 3s" in (tmp_path / "out.txt").read_text()


def test_on_a_terminal_the_board_draws_running_jobs_and_the_time_left(tmp_path):
    from rich.console import Console

    folder = tmp_path / "progress"
    folder.mkdir()
    console = Console(file=open(tmp_path / "tty.txt", "w"), force_terminal=True, width=120)  # noqa: SIM115
    ended = _job(key="a", status="done", val_loss=2.31, tokens_per_sec=4100, elapsed_s=130)
    running = _job(key="b", status="running", tokens_done=268_000, loss=2.91)
    running.update(tokens_per_sec=2100, left_s=610, opened=1.0)
    with StageBoard("students", 2, 2 * ended["flops"], folder, console) as board:
        for job in (ended, running):
            (folder / f"{job['key']}.json").write_text(json.dumps(job))
        board.start -= 50.0  # 1.25 jobs' compute in 50 s: 0.75 of a job left, 30 s
        board.tick()
    console.file.close()
    shown = (tmp_path / "tty.txt").read_text()
    assert "student    L2       N  26.8k  D  1.07M   25%  loss 2.910  2.1k tok/s  left 10m" in shown
    assert "done: val loss 2.3100, 4.1k tok/s, 2m" in shown
    assert "students: 1/2 jobs ended in 50s, stage time left about 30s" in shown
    assert "students: 2/2" not in shown and shown.rstrip().endswith("\x1b[?25h")
