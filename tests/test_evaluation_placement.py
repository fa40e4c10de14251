"""Where evaluations run: inside fit on the training device, and once across ranks.

- ``vlp fit``'s evaluations (``evaluate_before`` and the final one) run while Lightning
  is fitting, with the module on the strategy's root device (after fit, teardown has
  moved it to the CPU; before fit it has not reached the accelerator).
- With 2 processes each rank embeds half of every evaluation set and only rank 0 scores
  (the linear-probe sweep included); rank 0's metrics equal one process's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.trainer.states import TrainerStatus

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.model import VLPModule
from vlp.run import fit

from conftest import REPO, TINY_OVERRIDES

EVAL_OVERRIDES = TINY_OVERRIDES + ["data.val_size=30", "eval=[{name: zero_shot}, {name: retrieval}, {name: linear_probe, steps_per_decade: 1}]"]


def test_fit_evaluates_before_and_after_training_on_the_training_device(tiny_overrides, monkeypatch):
    seen = []
    original = VLPModule.evaluate

    def evaluate(self, datamodule, during_training=False):
        if during_training:
            return original(self, datamodule, during_training)
        trainer = self._trainer
        seen.append(trainer is not None and trainer.state.status == TrainerStatus.RUNNING
                    and next(self.encoder.parameters()).device == trainer.strategy.root_device)
        return original(self, datamodule)

    monkeypatch.setattr(VLPModule, "evaluate", evaluate)
    run_dir = fit(str(REPO / "experiments" / "tiny_vit.yaml"), tiny_overrides + ["evaluate_before=true", "data.train_size=64",
                                                                              "trainer.limit_val_batches=0"])
    assert seen == [True, True]  # before and after, both inside fit
    result = json.loads((run_dir / "metrics.json").read_text())
    assert set(result["before"]) == set(result["metrics"]) and result["global_step"] == 2


def test_costly_evaluations_run_only_before_and_after_training(tiny_overrides, monkeypatch):
    """The probe's C search skips per-epoch validation by default; any entry can opt in or out in YAML."""
    from vlp.evaluation.linear_probe import LinearProbe
    from vlp.evaluation.retrieval import Retrieval
    from vlp.evaluation.zero_shot import ZeroShotClassification

    calls = {}
    for cls in (LinearProbe, Retrieval, ZeroShotClassification):
        def counted(self, encoder, source, _original=cls.__call__, _name=cls.registry_name):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(self, encoder, source)
        monkeypatch.setattr(cls, "__call__", counted)
    evaluations = "eval=[{name: zero_shot}, {name: retrieval, every_validation: false}, {name: linear_probe, steps_per_decade: 1}]"
    fit(str(REPO / "experiments" / "tiny_vit.yaml"), tiny_overrides + ["evaluate_before=true", "data.train_size=64", "data.val_size=30",
                                                                     "trainer.max_epochs=2", evaluations])
    assert calls == {"zero_shot": 4, "retrieval": 2, "linear_probe": 2}  # 2 validations + before + after


def test_every_validation_must_be_a_boolean(tiny_overrides):
    from vlp.registry import ConfigError

    with pytest.raises(ConfigError, match=r"eval\[0\]\.every_validation.*true or false"):
        load_experiment(REPO / "experiments" / "tiny_vit.yaml", tiny_overrides + ["eval=[{name: zero_shot, every_validation: often}]"])


def count_work(module) -> dict[str, int]:
    """Wrap the encoder and the probe's fit so every call is counted."""
    import vlp.evaluation.linear_probe as linear_probe

    counts = {"images": 0, "texts": 0, "probe_fits": 0}
    encode_image, encode_text, fit_probe = module.encoder.encode_image, module.encoder.encode_text, linear_probe.fit_logistic_regression

    def image(images):
        counts["images"] += len(images)
        return encode_image(images)

    def text(texts):
        counts["texts"] += len(texts)
        return encode_text(texts)

    def probe(*args, **kwargs):
        counts["probe_fits"] += 1
        return fit_probe(*args, **kwargs)

    module.encoder.encode_image, module.encoder.encode_text, linear_probe.fit_logistic_regression = image, text, probe
    return counts


def evaluate_with_counts() -> tuple[dict[str, float], dict[str, int]]:
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", EVAL_OVERRIDES)
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    counts = count_work(module)
    return module.evaluate(datamodule), counts


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        metrics, counts = evaluate_with_counts()
        Path(out, f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "counts": counts}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_embedding_work_and_score_once(tmp_path: Path):
    mp.spawn(worker, args=(str(tmp_path), 29547), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    metrics, counts = evaluate_with_counts()
    assert ranks[0]["metrics"] == pytest.approx(metrics, abs=1e-6)
    assert ranks[1]["metrics"] == {}
    assert ranks[0]["counts"]["probe_fits"] == counts["probe_fits"] > 0 and ranks[1]["counts"]["probe_fits"] == 0
    for kind in ("images", "texts"):
        per_rank = [rank["counts"][kind] for rank in ranks]
        assert per_rank[0] == per_rank[1]  # equal shares (FSDP needs the same forward passes on every rank)
        # each set is split in two halves, the odd one padded by one item
        assert counts[kind] <= sum(per_rank) <= counts[kind] + 10, (kind, per_rank, counts[kind])
