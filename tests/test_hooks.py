"""Objective hooks: after_optimizer_step runs once per optimizer step, and views are computed once."""

from __future__ import annotations

import json

import torch

from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES
from vlp.run import fit

from conftest import REPO


@OBJECTIVES.register("test_step_counter")
class StepCounter(Objective):
    """Counts optimizer steps and image-tower runs; contributes a zero loss."""

    optimizer_steps = 0
    masked_views = 0

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def image_views(self):
        def masked(encoder, batch):
            StepCounter.masked_views += 1
            return encoder.image_tower(batch.images * 0.5)

        return {"half": masked}

    def forward(self, step):
        first, second = step.image("half"), step.image("half")  # computed once, cached
        assert first is second
        return {"loss": 0.0 * (first.embedding.sum() + self.anchor)}

    def after_optimizer_step(self, encoder) -> None:
        StepCounter.optimizer_steps += 1


def test_after_optimizer_step_runs_once_per_step_with_accumulation(tiny_overrides):
    StepCounter.optimizer_steps = StepCounter.masked_views = 0
    run_dir = fit(
        str(REPO / "experiments" / "tiny_vit.yaml"),
        tiny_overrides + ["model.objectives=[{name: clip}, {name: test_step_counter, weight: 1.0}]",
                          "trainer.accumulate_grad_batches=2", "trainer.limit_val_batches=0"],
    )
    batches = 256 // 32
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == batches // 2
    assert StepCounter.optimizer_steps == batches // 2
    assert StepCounter.masked_views == batches
