"""Multi-process runs: one run directory for all ranks, FSDP2 sharding, distributed checkpoints.

Lightning's ``ddp`` strategy re-runs the user's command once per extra rank, so
everything before ``trainer.fit`` (including the choice of a timestamped run directory)
runs again in each of them. The launching rank publishes its choice in the environment
before ``trainer.fit``; the processes Lightning starts inherit that environment and use it.
Processes started by an external launcher (torchrun, SLURM, one command per node) share
no such moment, so they must be given the same ``run_dir``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from torch import nn

from vlp.registry import ConfigError

RUN_DIR_ENV = "VLP_RUN_DIR"


def inherited_run_dir() -> Path | None:
    """The run directory chosen by the rank that launched this process, if it launched this one."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def check_ranks_agree(trainer: L.Trainer, explicit_run_dir: bool) -> None:
    """Refuse externally launched multi-process runs whose ranks would each pick a directory."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    external = environment is not None and environment.creates_processes_externally
    if trainer.world_size > 1 and external and not explicit_run_dir and inherited_run_dir() is None:
        raise ConfigError(
            f"The {trainer.world_size} processes of this run were started by an external launcher "
            f"({type(environment).__name__}) and would each choose their own run directory; pass run_dir=runs/NAME."
        )


@contextmanager
def shared_with_launched_ranks(run_dir: Path) -> Iterator[None]:
    """Publish ``run_dir`` to the ranks that ``trainer.fit`` launches (they copy this environment)."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


# FSDP2 -------------------------------------------------------------------------------
# ``trainer.strategy: fsdp2`` is Lightning's ModelParallelStrategy with every rank in one
# data-parallel group; VLPModule.configure_model then calls ``shard_fsdp2``.

FSDP2 = "fsdp2"


def strategy_from_name(arguments: dict[str, Any]) -> dict[str, Any]:
    """Replace ``strategy: fsdp2`` (a name Lightning lacks) by ModelParallelStrategy, data parallel only."""
    if arguments.get("strategy") != FSDP2:
        return arguments
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FullyShardedDataParallel(ModelParallelStrategy):
        """Every rank in one data-parallel group, however many devices and nodes there are."""

        def setup_environment(self) -> None:
            self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1
            super().setup_environment()

    return {**arguments, "strategy": FullyShardedDataParallel(data_parallel_size="auto", tensor_parallel_size=1)}


def shard_fsdp2(module: nn.Module, mesh: Any) -> None:
    """``fully_shard`` each transformer block of both towers, then each tower; replicate the objectives.

    A block is the unit that is gathered for its forward and freed after it, so peak
    memory is the shards plus one block. The towers' remaining parameters (embeddings,
    final norm, projection) form one unit per tower. Frozen and LoRA parameters shard
    like the rest (FSDP2 keeps ``requires_grad`` per parameter). ``encode_image`` /
    ``encode_text`` reach the towers through their forward, so evaluations gather
    parameters like training does. The objectives' parameters (temperatures: scalars,
    which ``fully_shard`` refuses) stay whole on every rank, their gradients averaged.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if any(isinstance(m, FSDPModule) for m in module.modules()):
        return  # configure_model runs again for later stages of the same trainer
    data_parallel = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    for tower in (module.encoder.image_tower, module.encoder.text_tower):
        for block in _blocks(tower.backbone):
            fully_shard(block, mesh=data_parallel)
        fully_shard(tower, mesh=data_parallel)
    for parameter in module.objectives.parameters():
        if parameter.requires_grad:
            parameter.register_post_accumulate_grad_hook(_average_gradient)


def _average_gradient(parameter: nn.Parameter) -> None:
    """DDP's averaging for one replicated parameter (linear, so accumulated micro-batches stay exact)."""
    import torch.distributed as dist

    dist.all_reduce(parameter.grad)  # gloo has no AVG
    parameter.grad.div_(dist.get_world_size())


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    from vlp.tuning import block_list

    try:
        return list(block_list(backbone))
    except ConfigError:
        return []  # no known block list: the tower is one unit


# Distributed checkpoints ---------------------------------------------------------------

def read_distributed_checkpoint(path: Path) -> dict[str, Any]:
    """A DCP checkpoint directory (FSDP2) as one full checkpoint dict, read safely on one process.

    ``meta.pt`` (loops, callbacks, vlp's config) loads with ``weights_only=True``; of the
    sharded part only the model's tensors are read (optimizer states and the pickled
    objects that DCP stores as bytes are never unpickled).
    """
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    reader = dcp.FileSystemReader(str(path))
    prefix = "state_dict."
    template = {
        key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    state = {"state_dict": template}
    dcp.load(state, storage_reader=reader, no_dist=True)
    checkpoint["state_dict"] = state["state_dict"]
    return checkpoint
