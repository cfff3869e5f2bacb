"""How a run's model is spread over GPUs: DDP, or FSDP2 with one unit per transformer block.

``trainer.strategy`` instantiates :func:`training_strategy` (``conf/trainer/fsdp.yaml``;
the paper sweeps choose per size, see ``kdlab sweep plan --gpu``):

- ``ddp``: a replica per GPU; gradients are DDP's all-reduce buckets
  (``gradient_as_bucket_view``), not a second copy.
- ``fsdp``: :class:`BlockFSDPStrategy`, torch's ``fully_shard`` (FSDP2) over every rank
  as one data-parallel group, through Lightning's ModelParallelStrategy. Every ``Block``
  is a unit (and, with ``activation_checkpointing``, a checkpointed one), the GPT's
  embedding and final norm the root unit, so one block's weights are gathered at a time.
  Under bf16-mixed the units gather and reduce in bf16 (the residual stream is bf16),
  the fp32 master weights stay sharded. Gradient accumulation reduce-scatters every
  micro-batch: skipping that would hold every unit's whole gradient between
  micro-batches, which kdlab/models/memory.py does not budget. Checkpoints are sharded: a
  directory, each rank writes its shard, the whole directory is swapped in once
  complete, resume reads them back (kdlab/checkpoints.py reads what torch would unpickle
  as data first).

Under FSDP the LightningModule's :func:`build_gpt` builds its GPT on the meta device,
shards it, then draws it module by module (:func:`draw_sharded`): each module's weights
are drawn whole on the CPU, by the muP rules and from the seed's RNG state, and each rank
keeps its shard, so no rank ever holds the whole model at once, and the weights are the
same at every world size. They are not the numbers of an eager build, whose constructor
draws torch's default inits first, which a meta build skips: a run's initial weights
depend on its strategy (its key does not).

FSDP2 gathers a unit's weights in the unit's ``forward``: a model method called instead
of it needs ``register_fsdp_forward_method`` (``GPT.features`` does), and every trained
parameter must belong to a unit, or its gradient would never be averaged over ranks;
:meth:`BlockFSDPStrategy.setup` refuses a module that leaves one out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor

from kdlab.checkpoints import (
    STAGED,
    aside,
    clear_staged,
    load_sharded,
    read_sharded_metadata,
    swap_in_directory,
)
from kdlab.models.gpt import GPT
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


class BlockFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all ranks: a unit per transformer block, sharded checkpoints swapped in
    whole, the model drawn shard by shard. The LightningModule shards what it builds in
    ``configure_model`` with :meth:`shard`."""

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs)
        self.activation_checkpointing = activation_checkpointing

    def setup_environment(self) -> None:
        """Every rank in one data-parallel group (Lightning's default splits the ranks of a
        node into a tensor-parallel group)."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def mixed_precision(self) -> MixedPrecisionPolicy:
        """Under bf16-mixed, units gather their weights and reduce their gradients in bf16
        (the sharded master weights stay fp32); otherwise they keep the weights' dtype."""
        if str(self.precision_plugin.precision).startswith("bf16"):
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
        return MixedPrecisionPolicy()

    def shard(self, module: nn.Module) -> None:
        """Make ``module`` a unit of its own (a student's feature projection)."""
        mesh = self.device_mesh["data_parallel"]
        fully_shard(module, mesh=mesh, mp_policy=self.mixed_precision())

    def setup(self, trainer: L.Trainer) -> None:
        unsharded = outside_units(self.lightning_module)
        if unsharded:
            raise RuntimeError(
                f"FSDP: {', '.join(unsharded)} belong to no sharded unit, so their gradients "
                "would differ between ranks; shard them in configure_model (kdlab/parallel.py)"
            )
        super().setup(trainer)

    def load_checkpoint(
        self, checkpoint_path: Any, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's load of a sharded checkpoint, with torch's reader reading as data
        only (kdlab.checkpoints.load_sharded): the weights, each optimizer's state, then
        Lightning's own metadata, which it returns."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():  # a whole checkpoint file: Lightning loads those as data
            return super().load_checkpoint(path, weights_only=True)
        module = self.lightning_module
        weights = {"state_dict": get_model_state_dict(module)}
        load_sharded(weights, path)
        module.load_state_dict(weights["state_dict"], strict=module.strict_loading)
        for number, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{number}"
            state = {key: get_optimizer_state_dict(module, optimizer)}
            load_sharded(state, path)
            options = StateDictOptions(cpu_offload=True)
            set_optimizer_state_dict(module, optimizer, state[key], options=options)
        return read_sharded_metadata(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """A sharded checkpoint is written whole beside the one it replaces, then swapped
        in (kdlab/checkpoints.py says why). Every rank calls this."""
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


def outside_units(module: nn.Module, prefix: str = "", inside: bool = False) -> list[str]:
    """The trained parameters of ``module`` in no ``fully_shard`` unit."""
    inside = inside or isinstance(module, FSDPModule)
    names = [
        prefix + name
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad and not inside
    ]
    for name, child in module.named_children():
        names += outside_units(child, f"{prefix}{name}.", inside)
    return names


def build_gpt(
    shape: ModelShape, rng_state: torch.Tensor, strategy: L.pytorch.Strategy | None = None
) -> GPT:
    """The GPT of a run, drawn from ``rng_state``: sharded by ``strategy`` when it is
    FSDP, else whole on the CPU."""
    if not isinstance(strategy, BlockFSDPStrategy):
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.set_rng_state(rng_state)
            return GPT(shape)
    return sharded_gpt(
        shape,
        rng_state,
        strategy.device_mesh["data_parallel"],
        strategy.root_device,
        strategy.mixed_precision(),
        checkpointing=strategy.activation_checkpointing,
    )


def sharded_gpt(
    shape: ModelShape,
    rng_state: torch.Tensor,
    mesh: DeviceMesh,
    device: torch.device,
    policy: MixedPrecisionPolicy,
    checkpointing: bool = False,
) -> GPT:
    """A GPT built on the meta device (so never whole), each block a unit (checkpointed
    with ``checkpointing``), the embedding and final norm the root unit, then drawn."""
    with torch.device("meta"):
        gpt = GPT(shape)
    if checkpointing:
        gpt.blocks = nn.ModuleList(checkpoint_wrapper(block) for block in gpt.blocks)
    for block in gpt.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(gpt, mesh=mesh, mp_policy=policy)
    register_fsdp_forward_method(gpt, "features")
    draw_sharded(gpt, rng_state, device)
    return gpt


@torch.no_grad()
def draw_sharded(gpt: GPT, rng_state: torch.Tensor, device: torch.device) -> None:
    """Materialise a sharded GPT built on the meta device: module by module in
    ``GPT.init_order``, its weights drawn whole on the CPU from ``rng_state`` by
    ``GPT.init_module``, then this rank's shard copied to ``device``. The result is the
    model ``GPT.reset_parameters(generator)`` draws, at any world size."""
    gpt.to_empty(device=device)
    generator = torch.Generator()
    generator.set_state(rng_state)
    for module in gpt.init_order():
        sharded = dict(module.named_parameters(recurse=False))
        whole = {
            name: nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=False)
            for name, p in sharded.items()
        }
        module._parameters.update(whole)  # the module draws into whole tensors...
        try:
            gpt.init_module(module, generator)
        finally:
            module._parameters.update(sharded)  # ...and gets its sharded ones back
        for name, p in sharded.items():
            p.to_local().copy_(_my_shard(whole[name], p))


def _my_shard(whole: torch.Tensor, sharded: DTensor) -> torch.Tensor:
    """This rank's part of ``whole`` as FSDP2 shards it: dim 0 split by torch.chunk over
    a 1-D mesh (DTensor's Shard), taken on the CPU so only the shard travels."""
    (placement,) = sharded.placements
    rank, ranks = sharded.device_mesh.get_local_rank(), sharded.device_mesh.size()
    chunks = torch.chunk(whole, ranks, dim=placement.dim)
    mine = chunks[rank] if rank < len(chunks) else whole.narrow(placement.dim, 0, 0)
    if mine.shape != sharded.to_local().shape:
        raise RuntimeError(f"a shard of {tuple(whole.shape)} is not split as FSDP2 splits it")
    return mine


def is_fsdp(trainer: L.Trainer | None) -> bool:
    return trainer is not None and isinstance(trainer.strategy, BlockFSDPStrategy)


def full_state_dict(trainer: L.Trainer) -> dict[str, Any]:
    """The LightningModule's whole state on global rank 0 (empty elsewhere under FSDP),
    gathered from the shards when the strategy shards it; every rank must call it."""
    strategy = trainer.strategy
    if not isinstance(strategy, BlockFSDPStrategy):
        return strategy.lightning_module_state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(strategy.lightning_module, options=options)
