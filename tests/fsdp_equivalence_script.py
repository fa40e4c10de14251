"""Launched by tests/test_fsdp.py: one FSDP2 step on 2 CPU processes (Lightning re-runs this script for rank 1).

Usage: python fsdp_equivalence_script.py OUT_DIR OVERRIDE... ; each rank writes its loss and
the full (unsharded) gradients after FSDP2's reduction to OUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from test_ddp_equivalence import GLOBAL_BATCH, FixedData, _dataset
from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment


class RecordFullGradients(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss = loss.detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                 for n, p in pl_module.named_parameters() if p.grad is not None}
        sharded = sorted(n for n, p in pl_module.named_parameters() if isinstance(p, DTensor))
        torch.save({"grads": grads, "loss": self.loss, "sharded": sharded}, f"{self.out}/rank{trainer.global_rank}.pt")


def build(experiment_path: str, overrides: list[str]):
    experiment = load_experiment(experiment_path, overrides)
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    return build_module(experiment, datamodule), _dataset(datamodule)


if __name__ == "__main__":
    out, experiment_path, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    module, dataset = build(experiment_path, overrides)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RecordFullGradients(out)], num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=FixedData(dataset, module.encoder.text_tower.tokenize, GLOBAL_BATCH // 2))
