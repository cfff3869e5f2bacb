"""Distillation end to end: teacher lookup, refusal of bad teachers, student rows, oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.errors import ConfigError
from kdlab.rundb import RunStore

TEACHER = ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"]
STUDENT = [
    "objective=distill",
    "model=nano_L1",
    "data.tokens=16384",
    "data.tokens_per_param=null",
    "teacher.model=nano_L2",
    "teacher.tokens=32768",
]


def test_student_finds_its_teacher_and_records_the_row(train, tmp_path):
    teacher = train(*TEACHER)
    student = train(*STUDENT)
    assert student["status"] == "done" and student["role"] == "student"
    assert student["split"] == "student" and teacher["split"] == "teacher"
    assert student["teacher_key"] == teacher["key"]
    assert (student["n_params"], student["tokens"]) == (3408, 16384)
    assert (student["teacher_n_params"], student["teacher_tokens"]) == (26848, 32768)
    assert student["teacher_loss"] == pytest.approx(teacher["val_loss"])
    assert (student["kd_lambda"], student["kd_tau"], student["divergence"]) == (
        1.0,
        1.0,
        "forward_kl",
    )
    f_s, f_t = student["flops_per_token"], teacher["flops_per_token"]
    assert student["flops_student"] == pytest.approx(3 * f_s * 16384)
    assert student["flops_teacher_logits"] == pytest.approx(f_t * 16384)
    assert student["flops_teacher_pretraining"] == pytest.approx(3 * f_t * 32768)
    for metric in ("val_loss", "val_kl", "val_top1_agreement", "val_ece"):
        assert student[metric] is not None and student[metric] >= 0, metric
    assert 0 <= student["val_top1_agreement"] <= 1
    # the teacher is never saved into the student's checkpoint
    import torch

    ckpt = torch.load(Path(student["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(k.startswith("model.") for k in ckpt["state_dict"]), list(ckpt["state_dict"])[:5]
    n_student = sum(v.numel() for v in ckpt["state_dict"].values())
    assert n_student < 10_000  # L1 only; L2's 35k parameters are not in it
    # relaunching the finished student skips it without reading the teacher's weights
    import kdlab.teacher

    def no_loading(path):
        raise AssertionError(f"loaded {path} for a finished student")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kdlab.teacher, "load_weights", no_loading)
        again = train(*STUDENT)
    assert again["updated_at"] == student["updated_at"]
    # the same student by teacher key finds the same run
    by_key = train(*STUDENT[:4], f"teacher.key={teacher['key']}")
    assert by_key["teacher_key"] == teacher["key"]
    # by the teacher's weights file: L_T is measured on the same validation tokens
    weights = Path(teacher["run_dir"]) / "model.pt"
    by_file = train(*STUDENT[:4], f"teacher.checkpoint={weights}")
    assert by_file["teacher_loss"] == pytest.approx(teacher["val_loss"], rel=1e-4)


def test_a_student_without_the_teachers_loss_is_its_supervised_twin(train):
    """lambda = 0 leaves only the next-token loss: same seed, batches and initial weights
    as the supervised run, so the same final loss. Reading the teacher's weights once
    moved the global RNG, and every student started from other weights per teacher."""
    train(*TEACHER)
    twin = train(
        "model=nano_L1", "role=supervised", "data.tokens=16384", "data.tokens_per_param=null"
    )
    alone = train(*STUDENT, "objective.kd_lambda=0")
    assert alone["split"] == twin["split"] == "student"
    assert alone["val_loss"] == pytest.approx(twin["val_loss"], abs=1e-6)


def test_missing_teacher_refused_before_compute(train, tmp_path):
    with pytest.raises(ConfigError, match="not in the run database") as err:
        train(*STUDENT)
    assert "\n" not in str(err.value)
    assert not RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find()


def test_unfinished_teacher_refused(train, tmp_path):
    teacher = train(*TEACHER)
    store = RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db")
    store.update(teacher["key"], status="running")
    with pytest.raises(ConfigError, match="is running, not done"):
        train(*STUDENT)


def test_run_of_the_student_split_refused_as_teacher(train, tmp_path):
    baseline = train(*TEACHER, "role=supervised")
    with pytest.raises(ConfigError, match="trained on the student split"):
        train(*STUDENT[:4], f"teacher.key={baseline['key']}")


def test_mismatched_teacher_refused_before_compute(train, tmp_path):
    teacher = train(*TEACHER)
    before = len(RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find())
    with pytest.raises(ConfigError, match="does not match the student: corpus"):
        train("data=markov", *STUDENT[:4], f"teacher.key={teacher['key']}")
    assert len(RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find()) == before


def test_oracle_teacher_beats_supervised_on_markov(train):
    common = ["data=markov", "model=nano_L1", "data.tokens=65536", "data.tokens_per_param=null"]
    supervised = train(*common, "role=supervised")
    student = train(*common, "objective=distill", "teacher=oracle")
    assert student["teacher_model"] == "oracle"
    assert student["teacher_loss"] < student["val_loss"]
    assert student["val_loss"] < supervised["val_loss"] - 0.01, (
        student["val_loss"],
        supervised["val_loss"],
    )


def test_taid_moves_in_training_not_in_validation(tmp_path):
    import lightning as L

    from kdlab.run_plan import plan_run
    from kdlab.runner import build_module
    from tests.conftest import compose_run

    cfg = compose_run(
        tmp_path,
        "data=markov",
        "model=nano_L1",
        "data.tokens=20480",
        "data.tokens_per_param=null",
        "objective=distill",
        "teacher=oracle",
        "objective.divergence=taid",
    )
    plan = plan_run(cfg)
    module = build_module(cfg, plan)
    t0 = module.taid.t
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    # half the schedule: t is past its start and below its cap of 1, free to move either way
    trainer = L.Trainer(max_steps=plan.steps // 2, limit_val_batches=0, **quiet)
    trainer.fit(module, datamodule=plan.data)
    t_trained = module.taid.t
    assert t0 < t_trained < 1.0

    steps = []
    validation_step = module.validation_step
    module.validation_step = lambda *a, **k: steps.append(1) or validation_step(*a, **k)
    L.Trainer(limit_val_batches=2, **quiet).validate(module, datamodule=plan.data, verbose=False)
    assert len(steps) == 2  # validation really ran, on the TAID loss's inputs
    assert module.taid.t == t_trained


def test_students_of_another_objective_are_not_fitted_with_the_scaling_ones(train, tmp_path):
    from kdlab.laws.io import LawInputError, read_db_points
    from kdlab.rundb.query import fit_points

    train(*TEACHER)
    train(*STUDENT)
    train(*STUDENT, "objective.kd_lambda=0.5", "objective.top_k=16")
    url = f"sqlite:///{tmp_path}/runs/kdlab.db"
    labels = sorted(fit_points(url, "distillation")["kd_objective"])
    assert labels == ["forward_kl lambda=0.5 tau=1 top_k=16", "forward_kl lambda=1 tau=1"]
    with pytest.raises(LawInputError, match="mix kd_objective .* select one with --kd-objective"):
        read_db_points(url, "distillation")
    points, info = read_db_points(
        url, "distillation", {"kd_objective": "forward_kl lambda=1 tau=1"}
    )
    assert len(points) == 1 and info["kd_objective"] == "forward_kl lambda=1 tau=1"
