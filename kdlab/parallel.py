"""How a run's model is spread over GPUs: DDP, or FSDP with one unit per transformer block.

``trainer.strategy`` instantiates :func:`training_strategy` (``conf/trainer/fsdp.yaml``;
the paper sweeps choose per size, see ``kdlab sweep plan --gpu``):

- ``ddp``: a replica per GPU; gradients are DDP's all-reduce buckets
  (``gradient_as_bucket_view``), not a second copy.
- ``fsdp``: :class:`BlockFSDPStrategy`. Every ``Block`` is an FSDP unit (and, with
  ``activation_checkpointing``, a checkpointed one), so one block's weights are gathered
  at a time; checkpoints are sharded (a directory: each rank writes its shard, the whole
  directory is swapped in once complete, resume reads them back); and the
  LightningModule builds its GPT on the meta device in ``configure_model``, which FSDP
  materialises unit by unit with kdlab's muP init (:class:`MetaInit`): no rank ever
  holds the whole model in fp32. Every rank draws the same weights from the seed's RNG
  state, by the same muP rules as an eager build, but not the same numbers: the eager
  constructor draws torch's default inits first, which a meta build skips. So a run's
  initial weights depend on its strategy (its key does not).

Lightning's FSDP strategy refuses CPUs (FSDP needs ``device_id=cpu`` there, which
Lightning does not pass) and clipping by norm (its precision plugin raises); both are
handled here, the first so FSDP can be tested on CPU processes with gloo.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from kdlab.checkpoints import STAGED, aside, clear_staged, swap_in_directory
from kdlab.models.gpt import GPT, Block
from kdlab.models.ladder import ModelShape


def training_strategy(kind: str, activation_checkpointing: bool = False) -> L.pytorch.Strategy:
    """The Lightning strategy for ``kind`` ("ddp" or "fsdp")."""
    if kind == "ddp":
        if activation_checkpointing:
            raise ValueError("activation checkpointing comes with the fsdp strategy only")
        return DDPStrategy(gradient_as_bucket_view=True)
    if kind == "fsdp":
        return BlockFSDPStrategy(activation_checkpointing=activation_checkpointing)
    raise ValueError(f"trainer strategy kind must be 'ddp' or 'fsdp', not '{kind}'")


class BlockFSDPStrategy(FSDPStrategy):
    """FSDP with one unit per transformer block, sharded checkpoints, meta-device init."""

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("state_dict_type", "sharded")
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            **kwargs,
        )

        self._root: FSDP | None = None

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap once: Lightning sets the model up again for ``validate`` after ``fit``, and
        wrapping the LightningModule a second time would take the root unit's sharded
        views (the embedding) for whole weights."""
        if self._root is not None and self._root.module is model:
            return self._root
        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            self.kwargs["param_init_fn"] = MetaInit(model)
        if self.root_device.type == "cpu":
            model = FSDP(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                auto_wrap_policy=self.kwargs.pop("auto_wrap_policy"),
                device_id=self.root_device,
                **self.kwargs,
            )
        self._root = super()._setup_model(model)
        return self._root

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """A sharded checkpoint is written whole beside the one it replaces, then swapped
        in (kdlab/checkpoints.py says why). Every rank calls this."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        staged = aside(path, STAGED)
        if self.global_rank == 0:
            clear_staged(path)
        self.barrier("kdlab-checkpoint-staged")
        super().save_checkpoint(checkpoint, staged, storage_options)
        self.barrier("kdlab-checkpoint-written")  # every shard and the metadata
        failure = None
        if self.global_rank == 0:
            try:
                swap_in_directory(staged, path)
            except OSError as err:
                failure = f"{type(err).__name__}: {err}"
        failure = self.broadcast(failure)  # every rank raises, none waits on the others
        if failure:
            raise OSError(f"the checkpoint {path} was written but not swapped in: {failure}")


class MetaInit:
    """FSDP's ``param_init_fn``: each module's own tensors made real on the CPU and drawn
    with GPT.init_module from the generator state the module was created with; FSDP then
    moves the unit to its GPU and shards it."""

    def __init__(self, root: nn.Module) -> None:
        self.gpts = [m for m in root.modules() if isinstance(m, GPT)]
        self.generator = torch.Generator()
        self.generator.set_state(root.init_rng_state)

    def __call__(self, module: nn.Module) -> None:
        own = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
        if not any(t.is_meta for t in own):
            return
        module.to_empty(device=torch.device("cpu"), recurse=False)
        owner = next(g for g in self.gpts if any(m is module for m in g.modules()))
        owner.init_module(module, self.generator)


def build_gpt(shape: ModelShape, rng_state: torch.Tensor, meta: bool) -> GPT:
    """The GPT of a run: on the meta device for FSDP to materialise, else on the CPU,
    drawn from ``rng_state`` either way."""
    if meta:
        with torch.device("meta"):
            return GPT(shape)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.set_rng_state(rng_state)
        return GPT(shape)


def is_fsdp(trainer: L.Trainer | None) -> bool:
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


def full_state_dict(trainer: L.Trainer) -> dict[str, Any]:
    """The LightningModule's whole state on global rank 0 (empty elsewhere under FSDP),
    gathered from the shards when the strategy shards it; every rank must call it."""
    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy):
        return strategy.lightning_module_state_dict()
    config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
        return strategy.model.state_dict()


def clip_gradient_norm(trainer: L.Trainer, max_norm: float) -> bool:
    """Clip by the global norm under FSDP (over every rank's shards); False elsewhere,
    where Lightning's own clipping is right."""
    root = trainer.strategy.model
    if not isinstance(root, FSDP):
        return False
    root.clip_grad_norm_(max_norm)
    return True
