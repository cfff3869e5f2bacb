"""Callbacks that feed the run database and the experiment loggers while a run trains."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import lightning as L
import torch

from kdlab.hardware import matmul_peak_flops
from kdlab.progress import JobProgress
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


def device_peak(trainer: L.Trainer, module: L.LightningModule) -> float:
    """One device's matmul peak in the precision the run computes in."""
    dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
    return matmul_peak_flops(str(module.device), dtype)


def _exact(value: float, device: torch.device | None = None) -> torch.Tensor:
    """float64: Lightning keeps it, where a float would become float32 (7 digits)."""
    return torch.tensor(value, dtype=torch.float64, device=device)


class TrainingProgress(L.Callback):
    """Logs, beside the losses, the axes runs are compared on and how training goes.

    In every row Lightning hands the loggers (each ``log_every_n_steps`` steps, and each
    validation): ``tokens`` and ``flops`` after this step; in training rows also the
    learning rate each optimizer group stepped with (``lr/<group>``) and the throughput
    since the last such row, timed by ``clock`` over training steps only.
    kdlab.loggers says which axis W&B draws each against.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, clock: TrainClock) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.clock = clock
        self._step_at_start = -1
        self._last = (0, 0.0)  # the clock's tokens and seconds at the last training row

    def _log_axes(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # the same number on every rank; synced (max) so that Lightning, which reduces an
        # epoch-level value across ranks, has nothing to warn about. Across ranks it sits
        # on the module's device, where the collective (NCCL on GPUs) can read it; alone,
        # on the CPU (Apple's GPUs have no float64)
        device = module.device if trainer.world_size > 1 else None
        tokens = trainer.global_step * self.tokens_per_step
        for name, value in (("tokens", tokens), ("flops", tokens * self.flops_per_token)):
            module.log(name, _exact(value, device), sync_dist=True, reduce_fx="max")

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self._step_at_start = trainer.global_step
        every = trainer.log_every_n_steps
        if every > 0 and (trainer.global_step + 1) % every == 0:  # this step's row is logged
            for i, group in enumerate(trainer.optimizers[0].param_groups):
                module.log(f"lr/{group.get('name', i)}", _exact(group["lr"]))

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        every = trainer.log_every_n_steps
        stepped = trainer.global_step > self._step_at_start  # not inside an accumulation
        if not stepped or every <= 0 or trainer.global_step % every:
            return
        self._log_axes(trainer, module)
        tokens, seconds = self.clock.tokens - self._last[0], self.clock.seconds - self._last[1]
        self._last = (self.clock.tokens, self.clock.seconds)
        if seconds <= 0:
            return
        flops_per_sec = tokens / seconds * module.train_flops_per_token()
        module.log("throughput/tokens_per_sec", tokens / seconds)
        module.log("throughput/flops_per_sec", flops_per_sec)
        peak = trainer.world_size * device_peak(trainer, module)
        module.log("throughput/mfu", flops_per_sec / peak)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_axes(trainer, module)


class ProgressFile(L.Callback):
    """Keeps the job's progress file for ``kdlab study`` (kdlab.progress): tokens so far,
    the training loss of the last step and the training steps' tokens/s."""

    def __init__(self, progress: JobProgress, tokens_per_step: int, clock: TrainClock) -> None:
        self.progress = progress
        self.tokens_per_step = tokens_per_step
        self.clock = clock

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        if not self.progress.due() or not trainer.is_global_zero:
            return
        loss = out["loss"] if isinstance(out, dict) else out
        tokens = trainer.global_step * self.tokens_per_step
        self.progress.update(tokens, float(loss), self.clock.tokens_per_sec)


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
