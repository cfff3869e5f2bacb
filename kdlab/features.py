"""Feature distillation: a student's hidden states (and attention maps) matched to a teacher's.

TinyBERT (Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding",
Findings of EMNLP 2020, sec. 3.1) matches hidden states layer to layer through a learned
linear map W_h, with the uniform layer map g(m) = m L_T / L_S; MiniLM (Wang et al., NeurIPS
2020) matches attention distributions by KL. Here:

* ``pairs`` are (student, teacher) indices of the residual stream (``GPT.features``:
  0 = embedding output, i = block i's output); by default student block m is matched to
  teacher block round(m L_T / L_S), m = 1..L_S.
* Hidden states: when the widths differ a learned projection W (d_S -> d_T, no bias,
  N(0, 1/d_S) init, trained with the student at its hidden-matrix rate) maps the student's
  state. ``mse`` compares the two after dividing each by its RMS over the width: a pre-norm
  residual stream grows with depth, and the next block only ever sees it normalised, so the
  weight means the same at every layer and size; ``cosine`` is 1 - cos(W h_S, h_T).
* Attention: for the pairs whose indices are blocks (>= 1), KL(A_T || A_S) of each query's
  head-averaged attention distribution (the two models may have different head counts).

The losses and projections are ``kdlab.modules.features.FeatureMatching``; this module
holds what planning needs without torch: the layer map, the settings check, and
``training_flops_per_token``, what the projections and the recomputed attention maps add
to a training step (the run's compute includes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kdlab.errors import ConfigError
from kdlab.models.ladder import ModelShape

LOSSES = ("mse", "cosine")


def layer_pairs(
    student_layers: int, teacher_layers: int, pairs: Sequence[Sequence[int]] | None = None
) -> list[tuple[int, int]]:
    """The (student, teacher) residual-stream indices to match; ConfigError when out of range."""
    if pairs is None:
        return [
            (m, round(m * teacher_layers / student_layers)) for m in range(1, student_layers + 1)
        ]
    out = []
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(i, int) for i in pair):
            raise ConfigError(
                f"objective.features.layers must be [student, teacher] index pairs, not {pair}"
            )
        s, t = pair
        if not 0 <= s <= student_layers or not 0 <= t <= teacher_layers:
            raise ConfigError(
                f"objective.features.layers pair [{s}, {t}] is out of range: the student has "
                f"layers 0..{student_layers} and the teacher 0..{teacher_layers} "
                "(0 is the embedding output)"
            )
        out.append((s, t))
    if not out:
        raise ConfigError("objective.features.layers names no layer pair")
    return out


def check_settings(settings: Mapping[str, Any]) -> None:
    if settings.get("loss", "mse") not in LOSSES:
        raise ConfigError(
            f"objective.features.loss must be one of {', '.join(LOSSES)}, not {settings['loss']}"
        )
    for name in ("weight", "attention_weight"):
        value = settings.get(name, 0.0)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"objective.features.{name} must be a number >= 0, not {value}")


def training_flops_per_token(
    student: ModelShape, teacher: ModelShape, pairs: list[tuple[int, int]], attention: bool
) -> float:
    """FLOPs per token the feature terms add to a training step (a multiply-add is 2).

    A projection costs 2 d_S d_T forward and twice that backward. An attention map is
    recomputed (SDPA never forms it): q, k, v of the block (2 d 3d) and the scores over
    (T + 1) / 2 keys on average (2 d (T + 1) / 2), three times for the student (it is
    trained through) and once for the teacher.
    """
    total = 0.0
    for s, t in pairs:
        if student.d_model != teacher.d_model:
            total += 3 * 2 * student.d_model * teacher.d_model
        if attention and s >= 1 and t >= 1:
            total += 3 * _attention_map_flops(student) + _attention_map_flops(teacher)
    return total


def _attention_map_flops(shape: ModelShape) -> float:
    d = shape.d_model
    return 2 * d * 3 * d + d * (shape.n_ctx + 1)
