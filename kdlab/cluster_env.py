"""Which process is which rank when a scheduler starts one process per device.

``trainer=slurm`` (the paper grids' trainer) takes its ranks from the scheduler through
:func:`cluster_environment`:

- under SLURM, SLURM's own variables (Lightning's ``SLURMEnvironment``, its requeue off:
  submitit owns requeueing, conf/hydra/launcher/slurm.yaml);
- under submitit's local executor (``hydra/launcher=submitit_cpu``, one task per device),
  submitit's ``SUBMITIT_LOCAL_*`` variables: the same pickled job, tasks, pre-emption
  signal and requeue as on a cluster, on one machine. SLURMEnvironment would look for
  ``SLURM_PROCID`` there and fail;
- started by no scheduler (one process, or a workstation's GPUs), Lightning's own
  environment, which starts the other ranks itself.

A submitit-local task carries none of the variables Lightning reads a process's rank
from before its Trainer exists (``RANK``, ``SLURM_PROCID``...), so every task would take
itself for rank 0 and write the run's row and W&B run; :func:`adopt_task_rank` tells
Lightning's ``rank_zero_only`` the task's rank first.
"""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
)
from lightning.pytorch.utilities import rank_zero_only

_PORTS = (20000, 60000)  # where a job's rendezvous port is drawn from its id, as on SLURM


def cluster_environment() -> ClusterEnvironment:
    """The ranks of the run: submitit's local tasks, SLURM's tasks, or Lightning's own."""
    if SubmititLocalEnvironment.detect():
        return SubmititLocalEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment()


def adopt_task_rank() -> None:
    """Under submitit's local executor, make the task's global rank Lightning's
    ``rank_zero_only.rank`` before any Trainer is built (elsewhere Lightning has it)."""
    if SubmititLocalEnvironment.detect():
        rank_zero_only.rank = SubmititLocalEnvironment().global_rank()


class SubmititLocalEnvironment(ClusterEnvironment):
    """The tasks of one submitit local job: one node, ``tasks_per_node`` processes."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        """``MASTER_PORT``, else one drawn from the job id, which every task of the job
        and its requeued tasks share (the id is the controller's pid)."""
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        low, high = _PORTS
        return low + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % (high - low)

    @staticmethod
    def detect() -> bool:
        return os.environ.get("SUBMITIT_EXECUTOR") == "local" and (
            "SUBMITIT_LOCAL_GLOBALID" in os.environ
        )

    def world_size(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_NTASKS"])

    def set_world_size(self, size: int) -> None:
        pass  # the tasks submitit started are the world

    def global_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_GLOBALID"])

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_LOCALID"])

    def node_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_NODEID", "0"))
