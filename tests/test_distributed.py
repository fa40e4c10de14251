"""all_gather_with_grad across 2 CPU processes (gloo), with batches of different sizes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlp.distributed import all_gather_with_grad, batch_offset

SIZES = (2, 3)


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        full = torch.arange(sum(SIZES) * 2, dtype=torch.float64).view(-1, 2)
        start = sum(SIZES[:rank])
        local = full[start : start + SIZES[rank]].clone().requires_grad_(True)
        gathered = all_gather_with_grad(local)
        weights = torch.linspace(-1, 1, gathered.numel(), dtype=torch.float64).view_as(gathered)
        ((rank + 1) * (gathered * weights).sum()).backward()  # each rank's own loss
        torch.save({"gathered": gathered.detach(), "grad": local.grad, "offset": batch_offset(SIZES[rank])}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_uneven_all_gather_returns_every_row_once_and_sums_gradients(tmp_path: Path):
    mp.spawn(worker, args=(str(tmp_path), 29531), nprocs=2, join=True)
    full = torch.arange(sum(SIZES) * 2, dtype=torch.float64).view(-1, 2)
    weights = torch.linspace(-1, 1, full.numel(), dtype=torch.float64).view_as(full)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["gathered"], full)
        start = sum(SIZES[:rank])
        assert result["offset"] == start
        # d/dx of sum_k (k+1) <gathered, w> for this rank's rows: (1 + 2) * w
        torch.testing.assert_close(result["grad"], 3 * weights[start : start + SIZES[rank]])
