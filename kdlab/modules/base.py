"""The LightningModule every kdlab run shares: model, optimiser, schedule, validation.

Pretraining and distillation differ only in their training loss, so everything a
scaling-law point depends on besides that loss (muP groups, the schedule, the validation
cross-entropy on the fixed set) lives here once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MeanMetric

from kdlab.losses import next_token_loss
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape
from kdlab.parallel import build_gpt


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run is recorded as failed, never fitted."""


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LanguageModelModule(L.LightningModule):
    """Shared base; subclasses define ``training_loss(batch) -> (loss, logs)``."""

    def __init__(
        self,
        shape: ModelShape,
        total_steps: int,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr_ratio: float = 1e-3,
        z_loss: float = 1e-4,
        flops_per_token: float = 0.0,
    ) -> None:
        super().__init__()
        # the loggers' config and the checkpoint get the plain settings (a subclass's
        # too); the shape goes as kdlab_shape, and no module object is copied
        self.save_hyperparameters(ignore=["shape", "teacher", "teacher_shape"])
        for name, value in list(self.hparams.items()):  # Hydra hands some settings as configs:
            if isinstance(value, DictConfig | ListConfig):  # plain values, so a checkpoint
                self.hparams[name] = OmegaConf.to_container(value, resolve=True)  # loads as data
        self.shape = shape
        self.model: GPT | None = None  # built in configure_model
        # the weights are drawn from the RNG state at construction, whenever Lightning
        # calls configure_model and however the model is built (kdlab/parallel.py)
        self.init_rng_state = torch.get_rng_state()
        self.total_steps = total_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.z_loss = z_loss
        self.flops_per_token = flops_per_token
        self.val_ce = MeanMetric()

    def configure_model(self) -> None:
        """Build the GPT: sharded under FSDP, drawn shard by shard so no rank holds the
        whole model; else on the CPU."""
        if self.model is None:
            strategy = self._trainer.strategy if self._trainer is not None else None
            self.model = build_gpt(self.shape, self.init_rng_state, strategy)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.model.optimizer_groups(self.lr, self.weight_decay) + self.extra_groups()
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step, self.total_steps, self.warmup_steps, self.min_lr_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def extra_groups(self) -> list[dict]:
        """Optimizer groups of trained parameters outside the model (none by default)."""
        return []

    def train_flops_per_token(self) -> float:
        """FLOPs per trained token: forward plus a backward of twice its cost, 3 F(N)."""
        return 3.0 * self.flops_per_token

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        loss, logs = self.training_loss(batch)
        reason = self._divergence(loss)
        if reason:
            raise DivergedError(f"{reason} at step {self.global_step}")
        if self._logging_step():
            self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False)
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _divergence(self, loss: torch.Tensor) -> str | None:
        """Why training must stop, if the loss is not finite on any rank: all ranks stop
        together, or the ones still training wait forever in the gradient all-reduce."""
        bad = not bool(torch.isfinite(loss))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            if trainer.strategy.reduce_boolean_decision(bad, all=False) and not bad:
                return "the loss became non-finite on another rank"
        return f"loss became {loss.item()}" if bad else None

    def _logging_step(self) -> bool:
        """Whether Lightning hands this step's metrics to the loggers.

        It does every ``log_every_n_steps`` steps and drops the on-step values logged in
        between, yet each ``self.log`` call costs 0.5-2 ms of Python on a 2-core CPU (half
        of Lightning's per-step overhead), so the other steps log nothing.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch[:2]
        sums = next_token_loss(self.model(x), y)
        # a padding batch of a rank's validation share has no target: weight 0, not 0/0
        self.val_ce.update(sums.ce_sum / sums.n_tokens.clamp(min=1), weight=sums.n_tokens)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint can then teach a student without its run's config
        checkpoint["kdlab_shape"] = dataclasses.asdict(self.shape)
        checkpoint["kdlab_base_d_model"] = self.model.base_d_model

    def on_validation_epoch_end(self) -> None:
        loss = self.val_ce.compute()
        self.val_ce.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)
