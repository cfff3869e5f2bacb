"""Deterministic partition of a corpus' token stream: teacher | student | validation.

The layout of ``n_tokens`` tokens with ``val_tokens`` held out is

    [0, h)                 teacher   (h = (n_tokens - val_tokens) // 2)
    [h, n - val_tokens)    student
    [n - val_tokens, n)    validation (the last val_tokens tokens)

It depends only on (n_tokens, val_tokens), never on the run's split, model or budget,
so every run of a corpus (with the study's val_tokens) is evaluated on the same tokens,
and teacher and student data never overlap. The teacher half comes first so that a
tokenizer trained on the start of the corpus has only seen teacher text (checked by the
data module). The validation tail is a fixed holdout: changing val_tokens changes the
layout, so val_tokens belongs to the study, like the corpus and tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SplitName = Literal["teacher", "student", "validation"]
TRAIN_SPLITS = ("teacher", "student")


@dataclass(frozen=True)
class SplitLayout:
    """Token ranges of the three splits of one corpus."""

    n_tokens: int
    val_tokens: int

    def __post_init__(self) -> None:
        if self.val_tokens < 1:
            raise ValueError(f"val_tokens must be positive, got {self.val_tokens}")
        if self.n_tokens - self.val_tokens < 2:
            raise ValueError(
                f"corpus has {self.n_tokens} tokens: too few for {self.val_tokens} validation "
                f"tokens plus non-empty teacher and student splits (needs at least "
                f"{self.val_tokens + 2})"
            )

    @property
    def teacher(self) -> range:
        return range(0, (self.n_tokens - self.val_tokens) // 2)

    @property
    def student(self) -> range:
        return range(self.teacher.stop, self.n_tokens - self.val_tokens)

    @property
    def validation(self) -> range:
        return range(self.n_tokens - self.val_tokens, self.n_tokens)

    def __getitem__(self, split: str) -> range:
        if split not in ("teacher", "student", "validation"):
            raise ValueError(f"unknown split {split!r}; valid splits: teacher, student, validation")
        return getattr(self, split)


def split_layout(n_tokens: int, val_tokens: int) -> SplitLayout:
    """The layout for a corpus of ``n_tokens`` with the last ``val_tokens`` held out."""
    return SplitLayout(int(n_tokens), int(val_tokens))


__all__ = ["TRAIN_SPLITS", "SplitLayout", "SplitName", "split_layout"]
