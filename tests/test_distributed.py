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


def loss_worker(rank: int, out: str, port: int) -> None:
    """Each rank embeds its share (3 or 5 samples) with a shared map; DDP's averaging is emulated."""
    from vlp.functional import infonce_loss, sigmoid_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        images, texts, weight = global_inputs()
        start, size = (0, 3) if rank == 0 else (3, 5)
        results = {}
        for name, loss_fn in (("clip", lambda x, y: infonce_loss(x, y, torch.tensor(5.0, dtype=torch.float64))),
                              ("siglip", lambda x, y: sigmoid_loss(x, y, torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)))):
            shared = weight.clone().requires_grad_(True)
            loss = loss_fn(images[start : start + size] @ shared, texts[start : start + size] @ shared)
            loss.backward()
            grad = shared.grad.clone()
            dist.all_reduce(grad)
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[name] = (mean_loss / 2, grad / 2)
        torch.save(results, f"{out}/loss{rank}.pt")
    finally:
        dist.destroy_process_group()


def global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.randn(8, 4, generator=generator, dtype=torch.float64),
            torch.randn(4, 4, generator=generator, dtype=torch.float64))


def test_losses_with_uneven_rank_batches_equal_the_global_batch(tmp_path: Path):
    from vlp.functional import infonce_loss, sigmoid_loss

    mp.spawn(loss_worker, args=(str(tmp_path), 29533), nprocs=2, join=True)
    images, texts, weight = global_inputs()
    expected = {}
    for name, loss_fn in (("clip", lambda x, y: infonce_loss(x, y, torch.tensor(5.0, dtype=torch.float64))),
                          ("siglip", lambda x, y: sigmoid_loss(x, y, torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)))):
        shared = weight.clone().requires_grad_(True)
        loss = loss_fn(images @ shared, texts @ shared)
        loss.backward()
        expected[name] = (loss.detach(), shared.grad)
    for rank in range(2):
        got = torch.load(tmp_path / f"loss{rank}.pt", weights_only=True)
        for name, (loss, grad) in expected.items():
            torch.testing.assert_close(got[name][0], loss, msg=name)
            torch.testing.assert_close(got[name][1], grad, msg=name)
