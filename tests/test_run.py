"""fit -> checkpoint -> resume -> eval on the embedded data, and the run directory's contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlp.cli import main
from vlp.run import evaluate, fit, load_vlp_checkpoint
from vlp.registry import ConfigError

from conftest import REPO

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")


def test_fit_resume_eval_round_trip(tiny_overrides, tmp_path: Path):
    run_dir = fit(EXPERIMENT, tiny_overrides)
    for name in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "csv/version_0/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    first_log = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    first = json.loads((run_dir / "metrics.json").read_text())
    steps_per_epoch = 256 // 32
    assert first["global_step"] == steps_per_epoch

    checkpoint = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert "model:" in checkpoint["vlp"]["config"] and checkpoint["vlp"]["tokenizer"]

    config = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="`optim.lr` is 1e\\+30 .* cannot change on resume"):
        fit(EXPERIMENT, tiny_overrides + ["optim.lr=1e30"], resume="last")
    assert (run_dir / "config.yaml").read_text() == config  # the record still says what ran

    resumed = fit(EXPERIMENT, tiny_overrides + ["trainer.max_epochs=2"], resume="last")
    assert resumed == run_dir
    second = json.loads((run_dir / "metrics.json").read_text())
    assert second["global_step"] == 2 * steps_per_epoch
    assert (run_dir / "csv" / "version_0" / "metrics.csv").read_text() == first_log  # earlier logs kept
    assert (run_dir / "csv" / "version_1" / "metrics.csv").is_file()

    metrics = evaluate(str(run_dir / "checkpoints" / "last.ckpt"), output=str(tmp_path / "eval.json"))
    assert metrics == pytest.approx(second["metrics"], abs=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == metrics


def test_existing_run_dir_is_never_overwritten(tiny_overrides):
    run_dir = Path(next(o for o in tiny_overrides if o.startswith("run_dir=")).split("=", 1)[1])
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(EXPERIMENT, tiny_overrides)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_bad_input_leaves_no_run_directory(tiny_overrides):
    run_dir = Path(next(o for o in tiny_overrides if o.startswith("run_dir=")).split("=", 1)[1])
    with pytest.raises(ConfigError, match="not a multiple of its patch size"):
        fit(EXPERIMENT, tiny_overrides + ["model.image_encoder.model_kwargs.img_size=20"])
    assert not run_dir.exists()
    assert main(["fit", EXPERIMENT, *tiny_overrides, "optim.lrr=1"]) == 2
    assert not run_dir.exists()
    with pytest.raises(ConfigError, match="Lightning rejected the `trainer` section"):
        fit(EXPERIMENT, tiny_overrides + ["trainer.strategy=no_such_strategy"])
    assert not run_dir.exists()


def test_foreign_or_missing_checkpoint_is_refused(tmp_path: Path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(ConfigError, match="not a vlp checkpoint"):
        evaluate(str(foreign))
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(str(tmp_path / "missing.ckpt"))
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        evaluate(str(tmp_path / "corrupt.ckpt"))
