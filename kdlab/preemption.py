"""Pre-emption loses little: on the requeue signal, a checkpoint at the next step.

Under SLURM, submitit asks for a signal some time before a job's limit (``signal_delay_s``
in conf/hydra/launcher/slurm.yaml; USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` names another),
and its handler requeues the job and exits. With checkpoints every
``checkpoint.every_n_steps`` steps alone, the requeued run would repeat up to that many
steps. ``PreemptionCheckpoint`` takes the signal first: the handler only notes it; at the
end of the optimizer step in progress all ranks agree (one collective, so a sharded save
starts on every rank together), write ``hpc_ckpt_<step>.ckpt`` in the attempt's directory
(which resume looks for: kdlab/runner.py) and hand the signal on to the handler that was
there before (submitit's requeue). The run records itself pre-empted and exits as that
handler asked (the status submitit's local executor requeues on); the requeued job resumes
from that step. Where there was no handler, the run stops as interrupted, as with
SIGTERM, and its next launch resumes from that step.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

from kdlab.processes import RunInterrupted


def preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM for (its ``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    return signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"]


class PreemptionCheckpoint(L.Callback):
    def __init__(self, run_dir: Path, signum: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.signum = signum or preemption_signal()
        self._noted: tuple[int, FrameType | None] | None = None
        self._previous: Any = None
        self._installed = False
        self._last_step = -1

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._noted = (signum, frame)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._note)
            self._installed = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stepped = trainer.global_step != self._last_step  # not inside an accumulation window
        self._last_step = trainer.global_step
        if not stepped:
            return
        if not trainer.strategy.reduce_boolean_decision(self._noted is not None, all=False):
            return
        trainer.save_checkpoint(self.run_dir / f"hpc_ckpt_{trainer.global_step}.ckpt")
        signum, frame = self._noted or (self.signum, None)
        previous = self._previous
        self._restore()
        if callable(previous):
            try:
                previous(signum, frame)  # submitit's: requeue the job, then exit
            except SystemExit as requeued:
                raise RunInterrupted(signum, requeued_exit=requeued.code) from requeued
        raise RunInterrupted(signum)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False
