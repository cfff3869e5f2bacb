"""Callbacks that feed the run database while a run trains."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from kdlab.rundb import RunStore


class TrainClock(L.Callback):
    """Time spent in training steps only (no validation, no checkpointing): tokens/s.

    It also carries the wall time of earlier segments of a resumed run in the
    checkpoint, so a run's recorded wall time is the whole run's, not its last segment's.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0
        self._t0 = 0.0
        self.earlier_wall_s = 0.0  # segments before the checkpoint this run resumed from
        self._fit_t0: float | None = None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_t0 = time.perf_counter()

    def state_dict(self) -> dict[str, float]:
        now = time.perf_counter()
        return {"wall_s": self.earlier_wall_s + (now - self._fit_t0 if self._fit_t0 else 0.0)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_wall_s = float(state_dict.get("wall_s", 0.0))

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.tokens += batch[0].numel() * trainer.world_size

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class CurveRecorder(L.Callback):
    """Writes each validation loss to the database's curve table as training goes."""

    def __init__(self, store: RunStore, key: str, tokens_per_step: int) -> None:
        self.store = store
        self.key = key
        self.tokens_per_step = tokens_per_step

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None:
            step = trainer.global_step
            self.store.add_curve_point(self.key, step, step * self.tokens_per_step, float(loss))
