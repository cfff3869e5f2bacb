"""Feature matching's trained projections and its losses (the maths: kdlab/features.py).

Every term is a sum over valid tokens (targets != -100), like ``kdlab.losses``; the
DistillModule weighs and normalises them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureMatching(nn.Module):
    """The projections and the hidden-state and attention-map losses of one student."""

    def __init__(
        self,
        student_width: int,
        teacher_width: int,
        pairs: list[tuple[int, int]],
        loss: str = "mse",
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.pairs = pairs
        self.loss = loss
        self.attention_layers = [(s, t) for s, t in pairs if s >= 1 and t >= 1] if attention else []
        project = student_width != teacher_width
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width, bias=False) if project else nn.Identity()
            for _ in pairs
        )
        for p in self.projections:
            if isinstance(p, nn.Linear):
                nn.init.normal_(p.weight, std=student_width**-0.5)

    def hidden_loss(self, student: list[Tensor], teacher: list[Tensor], mask: Tensor) -> Tensor:
        """Sum over valid tokens and pairs of the hidden-state distance."""
        total = mask.new_zeros((), dtype=torch.float32)
        for (s, t), project in zip(self.pairs, self.projections, strict=True):
            h_s, h_t = project(student[s]).float(), teacher[t].detach().float()
            if self.loss == "cosine":
                rows = 1.0 - F.cosine_similarity(h_s, h_t, dim=-1)
            else:
                rows = (_unit_rms(h_s) - _unit_rms(h_t)).square().mean(-1)
            total = total + torch.where(mask, rows, 0.0).sum()
        return total

    def attention_loss(
        self, student: dict[int, Tensor], teacher: dict[int, Tensor], mask: Tensor
    ) -> Tensor:
        """Sum over valid query tokens and pairs of KL(A_T || A_S) per query row."""
        total = mask.new_zeros((), dtype=torch.float32)
        for s, t in self.attention_layers:
            a_t, log_a_s = teacher[t].detach().float(), student[s].float().clamp_min(1e-30).log()
            rows = (a_t * (a_t.clamp_min(1e-30).log() - log_a_s)).sum(-1)
            total = total + torch.where(mask, rows, 0.0).sum()
        return total

    @property
    def student_attention(self) -> list[int]:
        return [s for s, _ in self.attention_layers]

    @property
    def teacher_attention(self) -> list[int]:
        return [t for _, t in self.attention_layers]


def _unit_rms(x: Tensor) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)
