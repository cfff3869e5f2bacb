"""Several teachers: a student distils from the weighted mixture of their distributions.

    p_mix(a | x) = sum_i w_i p_i(a | x),   w_i >= 0, sum_i w_i = 1

The mixture's "logits" are log p_mix (log-probabilities are logits: softmax gives them
back), so every divergence, temperature and truncation of ``kdlab.losses`` applies to the
mixture as to one teacher. Each teacher is resolved like a single one and they must share
one tokenizer, vocabulary, corpus and context; every one of them runs per student token,
so their inference FLOPs add up, as do their pretraining FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.identity import run_key
from kdlab.teacher import Teacher


class MixtureTeacher(nn.Module):
    """``forward(idx) -> log sum_i w_i softmax(z_i)`` [B, T, V], fp32."""

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        total = float(sum(weights))
        self.register_buffer("log_weights", torch.tensor([math.log(w / total) for w in weights]))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(t(idx).float(), dim=-1) for t in self.teachers])
        return torch.logsumexp(log_probs + self.log_weights.view(-1, 1, 1, 1), dim=0)


def mixture(teachers: Sequence[Teacher], weights: Sequence[float]) -> Teacher:
    """One Teacher standing for the mixture; ConfigError for bad weights or teachers that
    do not share a tokenizer, vocabulary, corpus or context."""
    if len(teachers) < 2:
        raise ConfigError("teacher=mixture needs at least two teachers in teacher.teachers")
    for i, w in enumerate(weights, start=1):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ConfigError(
                f"teacher.teachers[{i - 1}].weight must be a positive number, not {w}"
            )
    first = teachers[0]
    for i, other in enumerate(teachers[1:], start=2):
        for what, attr in (
            ("tokenizers", "tokenizer"),
            ("vocabularies", "vocab_size"),
            ("corpora", "fingerprint"),
            ("contexts", "n_ctx"),
        ):
            if getattr(other, attr) != getattr(first, attr):
                raise ConfigError(
                    f"teachers 1 ({getattr(first, attr)}) and {i} ({getattr(other, attr)}) have "
                    f"different {what}; a mixture's teachers must share one"
                )
    total = float(sum(weights))
    members = tuple(
        {
            "key": t.key,
            "kind": t.kind,
            "weight": w / total,
            "model": t.name,
            "n_params": t.n_params,
            "tokens": t.tokens,
            "loss": t.loss,
            "flops_per_token": t.flops_per_token,
        }
        for t, w in zip(teachers, weights, strict=True)
    )
    key = "mixture:" + run_key({"mixture": [[m["weight"], m["key"]] for m in members]})
    return Teacher(
        load=lambda: MixtureTeacher([t.model for t in teachers], [m["weight"] for m in members]),
        key=key,
        name="mixture",
        n_params=sum(t.n_params for t in teachers),
        tokens=sum(t.tokens for t in teachers),
        loss=None,  # the mixture's own L_T, measured on the validation tokens by the student
        flops_per_token=sum(t.flops_per_token for t in teachers),
        fingerprint=first.fingerprint,
        tokenizer=first.tokenizer,
        vocab_size=first.vocab_size,
        n_ctx=first.n_ctx,
        kind="mixture",
        members=members,
    )
