"""Several teachers and feature matching: the mixture's distribution, its FLOPs and
identity; feature losses by hand, the projection's FLOPs in the run's compute, layer
maps checked before compute."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.features import layer_pairs, training_flops_per_token
from kdlab.models.ladder import get_shape
from kdlab.modules.features import FeatureMatching
from kdlab.teacher import Teacher
from kdlab.teachers.mixture import MixtureTeacher, mixture
from tests.conftest import FAST, run_cli

TEACHERS = [
    ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"],
    ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"],
]
STUDENT = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]


def _mixture(w1: float = 0.25, w2: float = 0.75) -> list[str]:
    return [
        "objective=distill",
        "teacher=mixture",
        f"teacher.teachers=[{{model: nano_L1, tokens: 16384, weight: {w1}}},"
        f"{{model: nano_L2, tokens: 32768, weight: {w2}}}]",
    ]


class _Fixed(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_mixture_is_the_weighted_sum_of_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7) * 3
    mixed = MixtureTeacher([_Fixed(a), _Fixed(b)], [1.0, 3.0])(torch.zeros(2, 3))
    expected = 0.25 * F.softmax(a, -1) + 0.75 * F.softmax(b, -1)
    torch.testing.assert_close(mixed.exp(), expected)


def _fake(key: str, tokenizer: str = "byte", vocab: int = 256) -> Teacher:
    return Teacher(None, key, "L1", 10, 20, 1.0, 5.0, "fp", tokenizer, vocab, 128)


def test_teachers_of_different_tokenizers_or_weights_are_refused():
    with pytest.raises(
        ConfigError, match=r"teachers 1 \(byte\) and 2 \(bpe-300-ab\) have different tokenizers"
    ):
        mixture([_fake("a"), _fake("b", "bpe-300-ab", 300)], [1, 1])
    with pytest.raises(
        ConfigError, match=r"teacher.teachers\[1\].weight must be a positive number"
    ):
        mixture([_fake("a"), _fake("b")], [1, 0])
    with pytest.raises(ConfigError, match="at least two teachers"):
        mixture([_fake("a")], [1])


def test_a_student_of_two_teachers_names_and_pays_for_both(train, tmp_path):
    small, large = train(*TEACHERS[0]), train(*TEACHERS[1])
    student = train(*STUDENT, *_mixture())
    assert student["teacher_kind"] == "mixture" and student["teacher_model"] == "mixture"
    members = student["teachers"]
    assert [(m["key"], m["weight"]) for m in members] == [
        (small["key"], 0.25),
        (large["key"], 0.75),
    ]
    f1, f2 = small["flops_per_token"], large["flops_per_token"]
    assert student["flops_teacher_logits"] == pytest.approx((f1 + f2) * 16384)
    assert student["flops_teacher_pretraining"] == pytest.approx(small["flops"] + large["flops"])
    # L_T is the mixture's own, measured on the validation tokens: it beats the weaker one
    assert student["teacher_loss"] < small["val_loss"]
    # other weights are another student; the key changes with them
    other = train(*STUDENT, *_mixture(0.5, 0.5))
    assert other["key"] != student["key"]
    from kdlab.rundb.query import fit_points

    labels = fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "distillation")["kd_objective"]
    assert set(labels) == {"forward_kl lambda=1 tau=1 teachers=2"}


# ------------------------------------------------------------------------- features


def test_uniform_layer_map_and_out_of_range_pairs():
    assert layer_pairs(2, 6) == [(1, 3), (2, 6)]
    assert layer_pairs(3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert layer_pairs(2, 4, [[0, 0], [2, 4]]) == [(0, 0), (2, 4)]
    with pytest.raises(ConfigError, match=r"pair \[1, 5\] is out of range: .* teacher 0..4"):
        layer_pairs(2, 4, [[1, 5]])


def test_feature_losses_by_hand():
    torch.manual_seed(0)
    match = FeatureMatching(4, 6, [(1, 2)], loss="mse", attention=True)
    h_s = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    h_t = [torch.randn(2, 3, 6) * 5 for _ in range(3)]
    mask = torch.tensor([[True, True, False], [True, False, True]])
    projected = match.projections[0](h_s[1])

    def unit(x):
        return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    rows = (unit(projected) - unit(h_t[2])).pow(2).mean(-1)
    torch.testing.assert_close(match.hidden_loss(h_s, h_t, mask), rows[mask].sum())
    match.loss = "cosine"
    rows = 1 - F.cosine_similarity(projected, h_t[2], dim=-1)
    torch.testing.assert_close(match.hidden_loss(h_s, h_t, mask), rows[mask].sum())
    a_s = torch.softmax(torch.randn(2, 3, 3), -1)
    a_t = torch.softmax(torch.randn(2, 3, 3), -1)
    rows = (a_t * (a_t.log() - a_s.log())).sum(-1)
    torch.testing.assert_close(match.attention_loss({1: a_s}, {2: a_t}, mask), rows[mask].sum())


def test_feature_student_pays_for_its_projection(train, tmp_path):
    train(*TEACHERS[1])
    teacher = ["teacher.model=nano_L2", "teacher.tokens=32768"]
    student = train(*STUDENT, "objective=features", *teacher)
    logit_only = train(*STUDENT, "objective=distill", *teacher)
    s, t = get_shape("nano", "L1"), get_shape("nano", "L2")
    projection = 3 * 2 * s.d_model * t.d_model  # one pair: student block 1 to teacher block 2
    assert training_flops_per_token(s, t, layer_pairs(1, 2), attention=False) == projection
    assert student["flops"] == pytest.approx((3 * student["flops_per_token"] + projection) * 16384)
    assert student["flops"] > logit_only["flops"]
    assert student["val_loss"] != logit_only["val_loss"]
    ckpt = torch.load(Path(student["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"]["matching.projections.0.weight"].shape == (32, 16)
    # feature matching alone (lambda = 0) still learns from the teacher: not its twin
    alone = train(*STUDENT, "objective=features", "objective.kd_lambda=0", *teacher)
    twin = train(*STUDENT, "objective=distill", "objective.kd_lambda=0", *teacher)
    assert abs(alone["val_loss"] - twin["val_loss"]) > 1e-4
    from kdlab.rundb.query import fit_points

    labels = set(fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "distillation")["kd_objective"])
    assert labels == {
        "forward_kl lambda=1 tau=1 hidden=1:mse",
        "forward_kl lambda=1 tau=1",
        "forward_kl lambda=0 tau=1 hidden=1:mse",
        "forward_kl lambda=0 tau=1",
    }
    assert math.isfinite(alone["val_loss"])


def test_bad_layer_maps_and_teachers_refused_before_compute(train, tmp_path):
    train(*TEACHERS[1])
    teacher = ["teacher.model=nano_L2", "teacher.tokens=32768"]
    out = run_cli(
        "kdlab.train",
        f"paths.root_dir={tmp_path}",
        *FAST,
        *STUDENT,
        "objective=features",
        *teacher,
        "objective.features.layers=[[1,3]]",
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "kdlab-train: error: objective.features.layers pair [1, 3] is out of range: the "
        "student has layers 0..1 and the teacher 0..2 (0 is the embedding output)"
    )
    with pytest.raises(ConfigError, match="needs a kdlab teacher network .* not a oracle"):
        train("data=markov", *STUDENT, "objective=features", "teacher=oracle")
    with pytest.raises(ConfigError, match="objective.features.loss must be one of mse, cosine"):
        train(*STUDENT, "objective=features", *teacher, "objective.features.loss=l1")
    from kdlab.rundb import RunStore

    assert not RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find(role="student")
