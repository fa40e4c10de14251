"""Objective hooks (EMA teachers) run after real optimizer steps only, not after steps AMP's scaler skipped."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment

from conftest import REPO, TINY_OVERRIDES


class Scaler:
    """GradScaler's contract: ``update`` (inside the step) halves the scale when the step was skipped."""

    def __init__(self, skip: bool) -> None:
        self.scale, self.skip = 1024.0, skip

    def get_scale(self) -> float:
        return self.scale

    def step_done(self) -> None:
        if self.skip:
            self.scale /= 2


def test_hooks_skip_a_step_the_scaler_skipped(monkeypatch):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES)
    datamodule = build_datamodule(experiment)
    module = build_module(experiment, datamodule)
    calls = []
    monkeypatch.setattr(module.objectives["clip"], "after_optimizer_step", lambda encoder: calls.append(encoder))
    for skip, expected in ((False, 1), (True, 1), (False, 2)):
        scaler = Scaler(skip)
        monkeypatch.setattr(L.LightningModule, "optimizer_step", lambda self, *a, **k: scaler.step_done())
        module.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
        module.optimizer_step(0, 0, None)
        assert len(calls) == expected
