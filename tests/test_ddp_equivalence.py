"""Under DDP (2 CPU processes, gloo) CLIP's loss and gradients equal the global batch on one process.

Each rank trains on half of an 8-sample dataset; a callback records the rank's loss and,
after DDP has averaged them, the parameter gradients. The mean of the rank losses and
the averaged gradients must equal one process's loss and gradients on all 8 samples.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.data.base import Collate, ImageCaptionDataset
from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES

GLOBAL_BATCH = 8


class RecordGradients(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "loss": self.loss}, f"{self.out}/rank{trainer.global_rank}.pt")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss = loss.detach().clone()


def _dataset(datamodule) -> ImageCaptionDataset:
    datamodule.setup("fit")
    source = datamodule.train_set
    return ImageCaptionDataset(source.images[:GLOBAL_BATCH], [[c[0]] for c in source.captions[:GLOBAL_BATCH]])


class FixedData(L.LightningDataModule):
    def __init__(self, dataset, tokenize, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.tokenize, self.batch_size = dataset, tokenize, batch_size

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=Collate(self.tokenize, sample_caption=False))


def test_clip_ddp_two_processes_equals_single_process_global_batch(tmp_path: Path):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES + ["optim.name=sgd", "optim.warmup_steps=0"])
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule)
    dataset = _dataset(datamodule)
    reference = copy.deepcopy(module)

    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RecordGradients(str(tmp_path))], num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=FixedData(dataset, module.encoder.text_tower.tokenize, GLOBAL_BATCH // 2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    batch = Collate(reference.encoder.text_tower.tokenize, sample_caption=False)([dataset[i] for i in range(GLOBAL_BATCH)])
    reference.train()
    step = Step(batch, reference.encoder, reference.image_views, reference.text_views)
    loss = reference.objectives["clip"](step)["loss"]
    loss.backward()

    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["grads"], ranks[1]["grads"])
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert set(ranks[0]["grads"]) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
