"""A step gathers each view once: CLIP + FILIP + HN-NCE (and FLIP + CLIP) on 2 processes make a fixed
number of all_gathers, and their summed loss and gradients still equal the global batch on one process."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.data.base import Collate
from vlp.step import Step
from vlp.views import patch_drop

from conftest import REPO, TINY_OVERRIDES

GLOBAL_BATCH = 8
COMBINATIONS = (("clip",), ("clip", "hn_nce"), ("clip", "filip", "hn_nce"), ("flip", "clip"))
# One exchange of batch sizes per step, then one gather per view embedding (image, text),
# shared by CLIP and HN-NCE. FILIP gathers its token embeddings and word masks per modality
# (token count, tokens, mask: 3 each), reusing the step's batch sizes.
# FLIP + CLIP: the masked and the full image views, and one text view read by both.
EXPECTED_GATHERS = {("clip",): 1 + 2, ("clip", "hn_nce"): 1 + 2, ("clip", "filip", "hn_nce"): 1 + 2 + 2 * 3, ("flip", "clip"): 1 + 3}


def first_patches(batch: int, num_patches: int, keep: int, device=None) -> torch.Tensor:
    """A deterministic stand-in for the random patch draw, so ranks and one process drop the same patches."""
    return torch.arange(keep, device=device).expand(batch, keep)


def build():
    experiment = load_experiment(
        REPO / "experiments" / "tiny_vit.yaml",
        TINY_OVERRIDES + ["model.objectives=[{name: clip}, {name: filip}, {name: hn_nce}, {name: flip, mask_ratio: 0.5}]"],
    )
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule).train()
    source = datamodule.train_set
    items = [(source.images[i], [source.captions[i][0]]) for i in range(GLOBAL_BATCH)]
    return module, items


def run(module, items) -> dict:
    collate = Collate(module.encoder.text_tower.tokenize, sample_caption=False)
    batch = collate(items)
    results = {}
    for names in COMBINATIONS:
        module.zero_grad()
        step = Step(batch, module.encoder, module.image_views, module.text_views)
        calls = len(CALLS)
        loss = sum(module.objectives[name](step)["loss"] for name in names)
        gathers = len(CALLS) - calls
        loss.backward()
        grad = module.encoder.image_tower.projection.weight.grad.clone()
        results[names] = {"gathers": gathers, "loss": loss.detach(), "grad": grad}
    return results


CALLS: list[int] = []


def worker(rank: int, out: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    original = dist.all_gather

    def counting(*args, **kwargs):
        CALLS.append(1)
        return original(*args, **kwargs)

    dist.all_gather = counting
    patch_drop.random_keep_indices = first_patches
    try:
        module, items = build()
        half = GLOBAL_BATCH // 2
        results = run(module, items[rank * half : (rank + 1) * half])
        for value in results.values():  # DDP averages losses (for logging) and gradients over ranks
            for key in ("loss", "grad"):
                original_value = value[key]
                dist.all_reduce(original_value)
                value[key] = original_value / 2
        torch.save({"+".join(k): v for k, v in results.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.all_gather = original
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_views_are_gathered_once_per_step_and_losses_stay_exact(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(patch_drop, "random_keep_indices", first_patches)
    mp.spawn(worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    module, items = build()
    single = run(module, items)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for names in COMBINATIONS:
            result = got["+".join(names)]
            assert result["gathers"] == EXPECTED_GATHERS[names], names
            torch.testing.assert_close(result["loss"], single[names]["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(result["grad"], single[names]["grad"], rtol=1e-4, atol=1e-6)
