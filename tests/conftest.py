"""Shared fixtures: a tiny experiment that builds in a second and trains in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = [
    "model.embed_dim=32",
    "model.image_encoder.model_kwargs={img_size: 16, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}",
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def run_vlp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``vlp ARGS`` as a user runs it: a fresh process; fails the test with its stderr unless it exits 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "vlp", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}"]


# Small enough to train in well under a minute on 2 cores, big enough to learn colours
# and retrieval far above chance: for learning tests of objectives.
LEARNING_OVERRIDES = [
    "model.embed_dim=64",
    "model.image_encoder.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2, mlp_ratio: 2.0}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 2}",
    "data.train_size=4000",
    "data.val_size=300",
    "data.shape_variants=1",  # independent scenes, as the learning thresholds were calibrated
    "data.batch_size=64",
    "optim.lr=2e-3",
    "optim.warmup_steps=20",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
