"""The evaluations of ``vlp fit`` (before the first step, after the last) on the training device.

They run inside Lightning's fit: after it, Lightning's teardown has moved the module back
to the CPU, and before it the module has not reached the accelerator. Every rank takes
part (each embeds its share of the evaluation sets, see ``vlp.evaluation.base``; FSDP
needs every rank in each forward pass) and rank 0 writes the metrics to the run
directory, where the launching process reads them (under ``ddp_spawn`` that process
is not one that trained).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class EvaluateOnDevice(L.Callback):
    """Evaluate at train start (optional) and train end; rank 0 writes ``{"metrics", "before", "global_step"}``."""

    def __init__(self, path: Path, before: bool) -> None:
        self.path = path
        self.before = before
        self.before_metrics: dict[str, float] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.before:
            self.before_metrics = pl_module.evaluate(trainer.datamodule)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        metrics = pl_module.evaluate(trainer.datamodule)
        if trainer.is_global_zero:
            result: dict[str, Any] = {"metrics": metrics, "global_step": trainer.global_step}
            if self.before_metrics is not None:
                result["before"] = self.before_metrics
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(result))

    @staticmethod
    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())
