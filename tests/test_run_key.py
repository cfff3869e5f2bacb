"""The run key holds what changes a run's result, not where its code lives.

A relaunched sweep finds its finished runs by key; if moving or renaming an objective's
class re-keyed them, the whole sweep would be trained again. The key is computed the way
every run computes it, through kdlab.run_plan.plan_run.
"""

from __future__ import annotations

import pytest

from kdlab.run_plan import plan_run
from kdlab.runner import build_module
from tests.conftest import compose_run
from tests.moved_objective import MovedDistillModule, MovedPretrainModule

TEACHER = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
STUDENT = [
    "data=markov",
    "objective=distill",
    "teacher=oracle",
    "model=nano_L1",
    "data.tokens=16384",
    "data.tokens_per_param=null",
]


@pytest.mark.parametrize(
    ("run", "moved", "changed"),
    [
        (TEACHER, MovedPretrainModule, ["optim.z_loss=0.001"]),
        (STUDENT, MovedDistillModule, ["objective.kd_lambda=0.5"]),
        (STUDENT, MovedDistillModule, ["objective.taid.t_start=0.2"]),
    ],
)
def test_moving_the_objectives_class_keeps_the_key(tmp_path, run, moved, changed) -> None:
    target = f"objective._target_={moved.__module__}.{moved.__qualname__}"
    base_cfg, moved_cfg = compose_run(tmp_path, *run), compose_run(tmp_path, *run, target)
    base, elsewhere = plan_run(base_cfg), plan_run(moved_cfg)
    assert base_cfg.objective._target_ != moved_cfg.objective._target_
    assert type(build_module(moved_cfg, elsewhere)) is moved  # the moved class really trains
    assert elsewhere.key == base.key
    assert elsewhere.science == base.science
    # while a setting of the loss is science, and changes the key
    assert plan_run(compose_run(tmp_path, *run, *changed)).key != base.key
    assert plan_run(compose_run(tmp_path, *run, target, *changed)).key != base.key
