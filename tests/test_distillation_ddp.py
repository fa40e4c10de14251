"""Distillation losses across 2 CPU processes (gloo) with uneven batches equal the single-process global batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlp.functional_distillation import affinity_kl, self_distillation_loss, updated_center

SPLIT = ((0, 3), (3, 5))


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    names = ("images", "texts", "teacher_images", "teacher_texts", "student_crops", "teacher_crops")
    shapes = ((8, 4), (8, 4), (8, 6), (8, 6), (2, 8, 4), (2, 8, 4))
    values = {n: torch.randn(*s, generator=generator, dtype=torch.float64) for n, s in zip(names, shapes)}
    values["weight"] = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    values["center"] = torch.randn(4, generator=generator, dtype=torch.float64)
    return values


def losses(x: dict[str, torch.Tensor], rows: slice, shared: torch.Tensor) -> dict[str, torch.Tensor]:
    i2t, t2i = affinity_kl(x["images"][rows] @ shared, x["texts"][rows] @ shared, torch.tensor(4.0, dtype=torch.float64),
                           x["teacher_images"][rows], x["teacher_texts"][rows], 10.0)
    students = [crop[rows] @ shared for crop in x["student_crops"]]
    teachers = [crop[rows] for crop in x["teacher_crops"]]
    return {"affinity": i2t + t2i, "self_distillation": self_distillation_loss(students, teachers, x["center"], 0.1, 0.04)}


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x = inputs()
        start, size = SPLIT[rank]
        results = {}
        for name in ("affinity", "self_distillation"):
            shared = x["weight"].clone().requires_grad_(True)
            loss = losses(x, slice(start, start + size), shared)[name]
            loss.backward()
            grad, mean_loss = shared.grad.clone(), loss.detach().clone()
            dist.all_reduce(grad)  # DDP averages gradients and the logged loss over ranks
            dist.all_reduce(mean_loss)
            results[name] = (mean_loss / 2, grad / 2)
        results["center"] = updated_center(x["center"], [c[start : start + size] for c in x["teacher_crops"]], 0.9)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distillation_losses_and_centre_equal_the_global_batch(tmp_path: Path):
    mp.spawn(worker, args=(str(tmp_path), 29541), nprocs=2, join=True)
    x = inputs()
    expected_center = updated_center(x["center"], list(x["teacher_crops"]), 0.9)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in ("affinity", "self_distillation"):
            shared = x["weight"].clone().requires_grad_(True)
            loss = losses(x, slice(0, 8), shared)[name]
            loss.backward()
            torch.testing.assert_close(got[name][0], loss.detach(), msg=name)
            torch.testing.assert_close(got[name][1], shared.grad, msg=name)
        torch.testing.assert_close(got["center"], expected_center)
