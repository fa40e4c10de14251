"""Shared check for objective tests: DDP equivalence of a functional loss.

``assert_ddp_matches_single_process`` runs a loss on 2 CPU processes (gloo), each holding
half of every per-sample input, and checks the DDP contract: the mean of the rank losses
is the single-process loss on the whole batch; each rank's input gradient divided by the
world size (DDP averages parameter gradients) is that loss's gradient for its half; the
rank-averaged gradients of shared parameters equal the single-process ones.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(loss_fn, inputs, params, rank: int | None) -> dict:
    """Loss and gradients on this rank's half of the inputs, or on all of them (rank None)."""
    halves = {k: v if rank is None else v.chunk(WORLD_SIZE)[rank] for k, v in inputs.items()}
    local = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in halves.items()}
    shared = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = loss_fn(**local, **shared)
    loss.backward()
    grads = {k: v.grad for k, v in {**local, **shared}.items() if v.grad is not None}
    return {"loss": loss.detach(), "grads": grads}


def _worker(rank: int, loss_fn, inputs, params, out: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    torch.save(_run(loss_fn, inputs, params, rank), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def assert_ddp_matches_single_process(
    loss_fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], params: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """``inputs`` are split in halves along dim 0; ``params`` are shared scalars."""
    mp.spawn(_worker, args=(loss_fn, inputs, params, str(tmp_path), _free_port()), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    single = _run(loss_fn, inputs, params, None)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD_SIZE, single["loss"])
    for name, grad in single["grads"].items():
        if name in params:
            got = sum(r["grads"][name] for r in ranks) / WORLD_SIZE
        else:
            got = torch.cat([r["grads"][name] for r in ranks]) / WORLD_SIZE
        torch.testing.assert_close(got, grad, msg=lambda m: f"gradient of {name}: {m}")

