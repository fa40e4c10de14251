"""CLIP + FILIP + HN-NCE in one YAML train and evaluate through `vlp fit`, logging each term."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from objective_testing import train_and_evaluate


@pytest.mark.slow
def test_clip_filip_hard_negatives_experiment_trains_and_evaluates(tmp_path: Path):
    metrics = train_and_evaluate("clip_filip_hn.yaml", tmp_path)
    assert 0.0 <= metrics["zeroshot/colour/top1"] <= 1.0 and "retrieval/shapes_val/image_to_text_R@10" in metrics
    with open(tmp_path / "run" / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("train/clip/loss", "train/filip/loss", "train/hn_nce/loss"):
        assert any(row[column] for row in rows), column
