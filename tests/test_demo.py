"""kdlab demo's own choices: its core layout and where its report goes. The demo end to end
(runs, fits, plans, every figure, run again) is the first command of
tests/test_readme_in_order.py."""

from __future__ import annotations


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
