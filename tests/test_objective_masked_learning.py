"""MAE learns on the embedded shapes through `vlp fit`, tools/inspect_mae.py draws its reconstructions,
and its decoder exports and reloads with the towers."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlp.cli import main
from vlp.export import load_exported
from vlp.run import load_vlp_checkpoint

from conftest import REPO

OVERRIDES = [
    "model.embed_dim=32",
    "model.image_encoder.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2, mlp_ratio: 2.0}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}",
    "model.objectives=[{name: mae, mask_ratio: 0.75, normalize_targets: false, decoder_width: 64, decoder_depth: 1, decoder_heads: 2}]",
    "data.train_size=1536", "data.val_size=64", "data.batch_size=64",
    "optim.lr=2e-3", "optim.warmup_steps=5", "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
    "eval=[]",
]


@pytest.mark.slow
def test_mae_reconstruction_loss_falls_and_the_inspection_grid_is_written(tmp_path: Path):
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "vlp", "fit", str(REPO / "experiments" / "mae.yaml"), *OVERRIDES, f"run_dir={run_dir}"],
        check=True, cwd=tmp_path,
    )
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        losses = [float(row["train/mae/loss"]) for row in csv.DictReader(handle) if row.get("train/mae/loss")]
    assert len(losses) == 48
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)

    out = tmp_path / "mae.png"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "inspect_mae.py"), str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out), "--count", "6"],
        check=True, cwd=tmp_path,
    )
    with Image.open(out) as grid:
        assert grid.size == (6 * 64, 3 * 64)

    export = tmp_path / "export"
    assert main(["export", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(export)]) == 0
    decoder = load_exported(export).objectives["mae"].decoder
    state = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for name, value in decoder.state_dict().items():
        torch.testing.assert_close(value, state[f"objectives.mae.decoder.{name}"])

