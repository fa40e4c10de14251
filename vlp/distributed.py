"""Collectives with gradients, so losses over the global batch are exact under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's slice.

    Each rank's loss depends on every rank's features, so the gradient of a rank's
    input is the sum over ranks of the gradients flowing into its slot. Implemented
    with all_reduce (every backend has it; gloo lacks reduce_scatter).
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        rank, world_size = rank_and_world_size()
        ctx.rank, ctx.size = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (rank order); identity on one process.

    All ranks must pass the same shape: training loaders drop the last partial batch.
    """
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)
