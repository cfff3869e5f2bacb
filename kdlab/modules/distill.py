"""Students: (1 - lambda) L_NTP + lambda L_KD + lambda_Z L_Z against a frozen teacher.

The teacher is held outside the module's registered children, so it is never trained,
never in the optimiser, and never written into the student's checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryCalibrationError

from kdlab.losses import (
    TAIDSchedule,
    combined_student_loss,
    kl_teacher_student,
    next_token_loss,
    token_confidence_correct,
    top1_agreement,
)
from kdlab.models.gpt import GPT
from kdlab.modules.base import LanguageModelModule


class DistillModule(LanguageModelModule):
    def __init__(
        self,
        *args: Any,
        teacher: nn.Module,
        teacher_flops_per_token: float = 0.0,
        kd_lambda: float = 1.0,
        tau: float = 1.0,
        tau_squared: bool = True,
        divergence: str = "forward_kl",
        top_k: int | None = None,
        top_p: float | None = None,
        beta: float = 0.5,
        alpha: float = 0.1,
        hard: bool = False,
        taid: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._teacher = [teacher]  # a list hides it from nn.Module registration
        self.teacher_flops_per_token = teacher_flops_per_token
        self.kd_lambda = kd_lambda
        self.kd_options = dict(
            divergence=divergence,
            tau=tau,
            tau_squared=tau_squared,
            top_k=top_k,
            top_p=top_p,
            beta=beta,
            alpha=alpha,
            hard=hard,
        )
        self.taid = TAIDSchedule(**taid) if divergence == "taid" else None
        self.val_kl = MeanMetric()
        self.val_teacher_ce = MeanMetric()  # L_T on the same tokens as L_S
        self.val_agree = MeanMetric()
        self.val_ece = BinaryCalibrationError(n_bins=15, norm="l1")

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self._place_teacher()

    def on_validation_start(self) -> None:
        self._place_teacher()

    def _place_teacher(self) -> None:
        """The teacher whole on every device, in the compute dtype (bf16 under bf16
        training: half the bytes of fp32, and what its matmuls run in anyway).

        Not sharded with the student: it has no gradients or optimizer state, so its bf16
        weights (2 P_T: 15.8 GB at 7.75B) are all it costs, and every paper student fits
        beside it on 80 GB (kdlab sweep plan --gpu); sharding would add an all-gather of
        those bytes to every micro-batch's forward. A Markov oracle keeps its fp32
        log-probabilities: they are the exact distribution, not weights.
        """
        bf16 = str(self.trainer.precision).startswith("bf16")
        dtype = torch.bfloat16 if bf16 and isinstance(self.teacher, GPT) else None
        self.teacher.to(device=self.device, dtype=dtype)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        return self.teacher(x)

    def train_flops_per_token(self) -> float:
        """The student's 3 F(N_S) plus the teacher's forward F(N_T)."""
        return 3.0 * self.flops_per_token + self.teacher_flops_per_token

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        taid_t = self.taid.t if self.taid else None
        out = combined_student_loss(
            self.model(x),
            y,
            self.teacher_logits(x),
            kd_weight=self.kd_lambda,
            z_loss_weight=self.z_loss,
            taid_t=taid_t,
            **self.kd_options,
        )
        n = out.n_tokens.clamp_min(1)
        logs = {"ce": out.ce_sum.detach() / n, "kd": out.kd_sum.detach() / n}
        if self.taid:
            progress = (self.global_step + 1) / self.total_steps
            logs["taid_t"] = torch.tensor(self.taid.update(out.kd_sum.detach() / n, progress))
        return out.loss, logs

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # L_S: cross-entropy against the data
        x, y = batch
        zs, zt = self.model(x), self.teacher_logits(x)
        agree, n = top1_agreement(zs, zt, y)
        self.val_teacher_ce.update(next_token_loss(zt, y).ce_sum / n, weight=n)
        kl = kl_teacher_student(zs, zt, y, tau=1.0)
        self.val_kl.update(kl / n, weight=n)
        self.val_agree.update(agree / n, weight=n)
        confidence, correct = token_confidence_correct(zs, y)
        self.val_ece.update(confidence, correct.long())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/kl_teacher", self.val_kl.compute(), sync_dist=True)
        self.log("val/teacher_loss", self.val_teacher_ce.compute(), sync_dist=True)
        self.log("val/top1_agreement", self.val_agree.compute(), sync_dist=True)
        self.log("val/ece", self.val_ece.compute(), sync_dist=True)
        for metric in (self.val_kl, self.val_teacher_ce, self.val_agree, self.val_ece):
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.taid:
            checkpoint["taid"] = self.taid.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.taid and "taid" in checkpoint:
            self.taid.load_state_dict(checkpoint["taid"])
