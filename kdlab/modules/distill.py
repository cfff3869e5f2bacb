"""Students: (1 - lambda) L_NTP + lambda L_KD + lambda_Z L_Z against a frozen teacher,
plus, optionally, gamma_h L_hidden + gamma_a L_attention (feature matching).

The teacher is held outside the module's registered children, so it is never trained,
never in the optimiser, and never written into the student's checkpoints. Its signal is
either its logits, computed here per batch, or a logit cache's sparse top k, which the
data module delivers as each batch's third item (then there is no teacher network at
all). Feature matching's projections are the student's: registered, trained, saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryCalibrationError

from kdlab.features import layer_pairs
from kdlab.losses import (
    IGNORE_INDEX,
    TAIDSchedule,
    TeacherSignal,
    combined_student_loss,
    kl_teacher_student,
    teacher_target_log_loss,
    token_confidence_correct,
    top1_agreement,
)
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape
from kdlab.modules.base import LanguageModelModule
from kdlab.modules.features import FeatureMatching
from kdlab.parallel import is_fsdp


class DistillModule(LanguageModelModule):
    def __init__(
        self,
        *args: Any,
        teacher: nn.Module | None,
        teacher_flops_per_token: float = 0.0,
        teacher_shape: ModelShape | None = None,
        features: dict | None = None,
        feature_flops_per_token: float = 0.0,
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
        self.feature_weights = (0.0, 0.0)
        self.matching: FeatureMatching | None = None
        if features and (features.get("weight") or features.get("attention_weight")):
            self.feature_weights = (features["weight"], features["attention_weight"])
            self.matching = FeatureMatching(
                self.shape.d_model,
                teacher_shape.d_model,
                layer_pairs(self.shape.n_layer, teacher_shape.n_layer, features.get("layers")),
                loss=features.get("loss", "mse"),
                attention=bool(features["attention_weight"]),
            )
        self.feature_flops_per_token = feature_flops_per_token
        self.val_kl = MeanMetric()
        self.val_teacher_ce = MeanMetric()  # L_T on the same tokens as L_S
        self.val_agree = MeanMetric()
        self.val_ece = BinaryCalibrationError(n_bins=15, norm="l1")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def configure_model(self) -> None:
        """The student's GPT, and under FSDP its feature projections sharded too: each
        is a unit of its own, or its gradient would not be averaged over ranks."""
        super().configure_model()
        if self.matching is None or not is_fsdp(self._trainer):
            return
        for projection in self.matching.projections:
            if isinstance(projection, nn.Linear) and not isinstance(projection, FSDPModule):
                self.trainer.strategy.shard(projection)

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
        if self.teacher is None:  # a logit cache or generated text: no network here
            return
        bf16 = str(self.trainer.precision).startswith("bf16")
        dtype = torch.bfloat16 if bf16 and isinstance(self.teacher, GPT) else None
        self.teacher.to(device=self.device, dtype=dtype)

    @torch.no_grad()
    def teacher_signal(self, batch: tuple[torch.Tensor, ...]) -> TeacherSignal:
        """The batch's cached sparse teacher, or the teacher network's logits."""
        if len(batch) > 2:
            return batch[2]
        self.teacher.eval()
        return self.teacher(batch[0])

    def train_flops_per_token(self) -> float:
        """The student's 3 F(N_S), the teacher's forward F(N_T) (0 when cached) and what
        feature matching adds."""
        return (
            3.0 * self.flops_per_token + self.teacher_flops_per_token + self.feature_flops_per_token
        )

    def extra_groups(self) -> list[dict]:
        """Feature projections train like the student's hidden matrices (lr / m)."""
        if self.matching is None:
            return []
        params = [p for p in self.matching.parameters()]
        if not params:
            return []
        lr = self.lr / self.model.width_mult
        return [
            {
                "name": "feature_projections",
                "params": params,
                "lr": lr,
                "weight_decay": self.weight_decay / lr,
            }
        ]

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        x, y = batch[:2]
        if self.matching is None:
            zs, zt = self.model(x), self.teacher_signal(batch)
        else:
            student = self.model.features(x, self.matching.student_attention)
            with torch.no_grad():
                self.teacher.eval()
                teacher = self.teacher.features(x, self.matching.teacher_attention)
            zs, zt = student.logits, teacher.logits
        taid_t = self.taid.t if self.taid else None
        out = combined_student_loss(
            zs,
            y,
            zt,
            kd_weight=self.kd_lambda,
            z_loss_weight=self.z_loss,
            taid_t=taid_t,
            **self.kd_options,
        )
        n = out.n_tokens.clamp_min(1)
        logs = {"ce": out.ce_sum.detach() / n, "kd": out.kd_sum.detach() / n}
        loss = out.loss
        if self.matching is not None:
            mask = y != IGNORE_INDEX
            w_hidden, w_attention = self.feature_weights
            hidden = self.matching.hidden_loss(student.hidden, teacher.hidden, mask)
            loss = loss + w_hidden * hidden / n
            logs["hidden"] = hidden.detach() / n
            if w_attention:
                attention = self.matching.attention_loss(student.attention, teacher.attention, mask)
                loss = loss + w_attention * attention / n
                logs["attention"] = attention.detach() / n
        if self.taid:
            progress = (self.global_step + 1) / self.total_steps
            logs["taid_t"] = torch.tensor(self.taid.update(out.kd_sum.detach() / n, progress))
        return loss, logs

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # L_S: cross-entropy against the data
        x, y = batch[:2]
        zs, zt = self.model(x), self.teacher_signal(batch)
        agree, n = top1_agreement(zs, zt, y)
        per_token = 1 / n.clamp(min=1)  # a padding batch (all targets masked) weighs 0
        teacher_ce, _ = teacher_target_log_loss(zt, y)
        self.val_teacher_ce.update(teacher_ce * per_token, weight=n)
        kl = kl_teacher_student(zs, zt, y, tau=1.0)
        self.val_kl.update(kl * per_token, weight=n)
        self.val_agree.update(agree * per_token, weight=n)
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
