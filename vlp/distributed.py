"""Collectives with gradients, so losses over the global batch are exact under DDP.

Ranks may hold batches of different sizes (a batch that lost a bad sample is one
short), so gathers exchange sizes first and each rank knows its offset in the global batch.
A training step exchanges the batch sizes once and shares them (``Gathered``), so the
objectives of one step gather each view's embeddings once, with one size exchange in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_sizes(size: int, device: torch.device | None = None) -> list[int]:
    """Every rank's batch size, in rank order."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return [size]
    mine = torch.tensor([size], device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def batch_offset(size: int, device: torch.device | None = None) -> int:
    """Index of this rank's first sample in the gathered (global) batch."""
    rank, _ = rank_and_world_size()
    return sum(batch_sizes(size, device)[:rank])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's slice.

    Each rank's loss depends on every rank's features, so the gradient of a rank's
    input is the sum over ranks of the gradients flowing into its slot. Implemented
    with all_reduce (every backend has it; gloo lacks reduce_scatter). Batches of
    different sizes are padded to the largest for the collective and unpadded after.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: Sequence[int]) -> Tensor:
        rank, world_size = rank_and_world_size()
        padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, max(sizes) - tensor.shape[0]))
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.size = sum(sizes[:rank]), tensor.shape[0]
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.size], None


def all_gather_with_grad(tensor: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (rank order); identity on one process.

    ``sizes`` are every rank's row counts when already known (see ``Gathered``); else
    they are exchanged first.
    """
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    if sizes is None:
        sizes = batch_sizes(tensor.shape[0], tensor.device)
    return _AllGatherWithGrad.apply(tensor, tuple(sizes))


@dataclass
class Gathered:
    """L2-normalised embeddings of one view: this rank's rows and every rank's rows.

    Computed once per step per view (``Step.gathered``) and shared by the objectives
    that read it, so a step gathers each view once whatever the number of losses.
    ``sizes`` are the ranks' row counts; ``offset`` is where this rank's rows start.
    """

    local: Tensor
    all: Tensor
    sizes: tuple[int, ...]

    @property
    def offset(self) -> int:
        rank, _ = rank_and_world_size()
        return sum(self.sizes[:rank])

    def labels(self) -> Tensor:
        """Global indices of this rank's rows: their positives in the gathered batch."""
        return torch.arange(self.local.shape[0], device=self.local.device) + self.offset


def gather_normalized(embeddings: Tensor, sizes: Sequence[int] | None = None) -> Gathered:
    """Normalise and gather ``embeddings`` (exchanging sizes unless given)."""
    local = F.normalize(embeddings, dim=-1)
    if sizes is None:
        sizes = batch_sizes(local.shape[0], local.device)
    return Gathered(local, all_gather_with_grad(local, sizes), tuple(sizes))
