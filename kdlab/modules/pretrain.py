"""Teachers and supervised baselines: next-token prediction with z-loss."""

from __future__ import annotations

import torch

from kdlab.losses import combined_student_loss
from kdlab.modules.base import LanguageModelModule


class PretrainModule(LanguageModelModule):
    """L = CE + z_loss * (log Z)^2 per valid token: the student objective at lambda = 0."""

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        out = combined_student_loss(self.model(x), y, kd_weight=0.0, z_loss_weight=self.z_loss)
        n = out.n_tokens.clamp_min(1)
        return out.loss, {"ce": out.ce_sum.detach() / n, "z_loss": out.z_sum.detach() / n}
