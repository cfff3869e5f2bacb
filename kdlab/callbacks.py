"""Callbacks that feed the run database while a run trains."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import lightning as L

from kdlab.rundb import RunStore
from kdlab.rundb.store import HEARTBEAT_S


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
    """Writes each validation loss to the database's curve table as training goes, under
    the run's attempt (a forced re-run's points stay apart until it replaces the run)."""

    def __init__(self, store: RunStore, key: str, tokens_per_step: int, attempt: int = 1) -> None:
        self.store = store
        self.key = key
        self.tokens_per_step = tokens_per_step
        self.attempt = attempt

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None:
            step = trainer.global_step
            tokens = step * self.tokens_per_step
            self.store.add_curve_point(self.key, step, tokens, float(loss), self.attempt)


class Heartbeat:
    """Marks the run alive in the database every ``every_s`` seconds while the block runs.

    A thread, not a training hook: a long validation or checkpoint write is still a live
    run. A failed write (the database briefly away) is reported once and retried at the
    next beat; it never stops training.
    """

    def __init__(self, store: RunStore, key: str, every_s: float = HEARTBEAT_S) -> None:
        self.store, self.key, self.every_s = store, key, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdlab-heartbeat", daemon=True)
        self._warned = False

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.store.beat(self.key)
            except Exception as err:  # any database error: say so once, keep training
                if not self._warned:
                    self._warned = True
                    print(f"kdlab: heartbeat of run {self.key} failed ({err})", file=sys.stderr)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)  # a beat stuck on the database writes no status
