"""A pretraining objective whose loss turns NaN on one DDP rank only (for test_sweeps)."""

from __future__ import annotations

import torch

from kdlab.modules import PretrainModule


class NanOnLastRank(PretrainModule):
    """From step 3, the last rank's loss is NaN; the other ranks' losses stay finite."""

    def training_loss(self, batch):
        loss, logs = super().training_loss(batch)
        if self.global_step >= 3 and self.global_rank == self.trainer.world_size - 1:
            loss = loss * torch.tensor(float("nan"))
        return loss, logs
