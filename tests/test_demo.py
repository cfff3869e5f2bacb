"""kdlab demo end to end on a reduced budget: runs, fits, plans and every figure."""

from __future__ import annotations

import json
import re

import pytest

from kdlab.rundb import RunStore
from tests.conftest import ALL_FIGURES, CACHE_DIR, assert_figure, run_cli


def test_the_demo_report_goes_to_wandb_when_the_runs_do():
    from kdlab.demo import report_wandb_args

    assert report_wandb_args(["threads=1"]) == []
    assert report_wandb_args(["logger=csv"]) == []
    assert report_wandb_args(["logger=wandb", "logger.wandb.project=kd", "threads=1"]) == [
        "--wandb",
        "--wandb-project",
        "kd",
    ]
    assert report_wandb_args(["++logger=wandb", "++logger.wandb.entity='my team'"]) == [
        "--wandb",
        "--wandb-entity",
        "my team",
    ]
    assert report_wandb_args(["logger=wandb", "logger=csv"]) == []


def test_the_demo_runs_as_many_one_thread_jobs_as_cores():
    from kdlab.demo import core_layout

    parallel = ["hydra/launcher=parallel"]
    assert core_layout(2, []) == ["threads=1", *parallel, "hydra.launcher.n_jobs=2"]
    assert core_layout(1, []) == ["threads=1", *parallel, "hydra.launcher.n_jobs=1"]
    assert core_layout(16, []) == ["threads=4", *parallel, "hydra.launcher.n_jobs=4"]
    # the user's own choice wins: their threads are kept, their launcher replaces ours
    assert core_layout(2, ["threads=2"]) == [*parallel, "hydra.launcher.n_jobs=2"]
    assert core_layout(2, ["hydra/launcher=basic", "threads=2"]) == []
    assert core_layout(2, ["hydra.launcher.n_jobs=1"]) == []


@pytest.mark.slow
def test_demo_on_a_reduced_budget(tmp_path):
    demo_args = [
        "demo",
        "--root",
        str(tmp_path),
        "--budget-scale",
        "0.25",  # at 0.05 the smallest baseline has 1704 tokens, under one step: failed
        "--bootstrap",
        "16",
        "threads=1",
        f"paths.cache_dir={CACHE_DIR}",
    ]
    out = run_cli("kdlab.cli", *demo_args, timeout=3000)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = tmp_path / "runs"
    rows = RunStore(f"sqlite:///{runs}/kdlab.db").find()
    roles = sorted(r["role"] for r in rows)
    assert roles.count("teacher") == 2 and roles.count("student") == 12
    assert roles.count("supervised") == 14
    assert all(r["status"] == "done" for r in rows)

    for law, names in (
        ("supervised", {"E", "A", "B", "alpha", "beta", "gamma"}),
        ("distillation", {"A", "B", "alpha", "beta", "gamma", "c0", "c1", "f1", "d1"}),
    ):
        fit = json.loads((runs / "demo" / f"{law}_fit.json").read_text())
        assert fit["law"] == law and set(fit["coefficients"]) >= names
        assert fit["n_points"] == (16 if law == "supervised" else 12)
        assert fit["bootstrap"]["resamples"] == 16
        for name in names:
            lo, hi = fit["intervals"][name]
            assert lo <= hi, name
    plans = sorted((runs / "demo").glob("plan-*.json"))
    assert len(plans) == 4
    for path in plans:
        plan = json.loads(path.read_text())
        assert plan["verdict"] and set(plan["compute_shares"]) == {
            "student",
            "teacher_logits",
            "teacher_pretraining",
        }

    report = runs / "report"
    html = (report / "index.html").read_text()
    index = json.loads((report / "report.json").read_text())
    assert sorted(index["figures"]) == sorted(ALL_FIGURES) and not index["skipped"]
    for name in ALL_FIGURES:
        assert_figure(report / f"{name}.png")
        assert f"{name}.png" in html
    # progress: every stage of the study and every later step announced itself
    for stage in ("teachers", "supervised", "supervised_isoflop", "students"):
        assert f"nano/{stage}: " in out.stdout, stage
    assert "$ kdlab fit distillation" in out.stdout and "$ kdlab report" in out.stdout

    # rerunnable: a second demo trains nothing, and redoes fits, plans and the report
    again = run_cli("kdlab.cli", *demo_args, timeout=3000)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(re.findall(r" jobs, 0 to run", again.stdout)) == 4
    assert "done." in again.stdout
