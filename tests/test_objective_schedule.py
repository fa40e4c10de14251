"""Objectives scheduled by training progress (`active: [start, end]`), e.g. SigLIP 2's late objectives."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vlp.config.experiment import load_experiment
from vlp.model import _is_active
from vlp.registry import ConfigError
from vlp.run import fit

from conftest import REPO, TINY_OVERRIDES

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
LATE_SIGLIP = "model.objectives=[{name: clip}, {name: siglip, active: [0.5, 1.0]}]"


@pytest.mark.parametrize(("progress", "expected"), [(0.0, False), (0.49, False), (0.5, True), (0.99, True), (1.0, True)])
def test_span_includes_its_start_and_the_end_of_training(progress: float, expected: bool):
    assert _is_active((0.5, 1.0), progress) is expected
    assert _is_active((0.0, 0.5), progress) is (progress < 0.5)


def test_a_late_objective_logs_only_in_its_span(tiny_overrides):
    run_dir = fit(EXPERIMENT, tiny_overrides + [LATE_SIGLIP, "trainer.max_epochs=2"])
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    clip_steps = {int(r["step"]) for r in rows if r.get("train/clip/loss")}
    siglip_steps = {int(r["step"]) for r in rows if r.get("train/siglip/loss")}
    total = 2 * 256 // 32
    assert clip_steps == set(range(total))
    assert siglip_steps == set(range(total // 2, total))  # progress = step / total steps


@pytest.mark.parametrize("span", ["[0.5]", "[0.8, 0.2]", "[0.0, 1.5]", "late"])
def test_bad_spans_are_refused(span: str):
    with pytest.raises(ConfigError, match=r"model.objectives\[1\].active"):
        load_experiment(EXPERIMENT, [f"model.objectives=[{{name: clip}}, {{name: siglip, active: {span}}}]"])


def test_plain_ddp_is_refused_with_a_scheduled_objective():
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        load_experiment(EXPERIMENT, [LATE_SIGLIP, "trainer.strategy=ddp"])


@pytest.mark.slow
def test_siglip2_recipe_adds_its_late_objectives_for_the_last_fifth(tmp_path: Path):
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("model.image_encoder")] + [
        "model.image_encoder.model_kwargs={img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0, "
        "dynamic_img_size: true}", "data.multi_crop.local_size=8",
        "trainer.max_epochs=2", "eval=[]", f"run_dir={tmp_path / 'run'}",
    ]
    run_dir = fit(str(REPO / "experiments" / "siglip2.yaml"), overrides)
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    total = 2 * 256 // 32
    steps = {name: {int(r["step"]) for r in rows if r.get(f"train/{name}/loss")} for name in ("siglip", "coca", "silc", "cfm_vit")}
    assert steps["siglip"] == steps["coca"] == set(range(total))
    assert steps["silc"] == steps["cfm_vit"] == {s for s in range(total) if s / total >= 0.8}
