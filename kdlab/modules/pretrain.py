"""Teachers and supervised baselines: next-token prediction with z-loss."""

from __future__ import annotations

import torch

from kdlab.losses import next_token_loss
from kdlab.modules.base import LanguageModelModule


class PretrainModule(LanguageModelModule):
    """L = CE + z_loss * (log Z)^2, both averaged over the batch's valid tokens."""

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        sums = next_token_loss(self.model(x), y)
        ce = sums.ce / sums.n_tokens
        z = sums.z / sums.n_tokens
        return ce + self.z_loss * z, {"ce": ce.detach(), "z_loss": z.detach()}
