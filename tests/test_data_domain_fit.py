"""Every domain datamodule trains through ``vlp.run.fit`` on a tiny copy of its published layout (see ``domain_layouts``).

RS5M also runs through the ``vlp fit`` command in a subprocess: before ``image_key``/``caption_key``
it exited 0 after 0 steps with no skipped sample reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from domain_layouts import LAYOUTS, SPACENET_CLASSES

from conftest import REPO, TINY_OVERRIDES
from vlp.data.records import held_out
from vlp.run import fit

BATCH = 2
PMC_SINGLE_TRAIN = sum(not held_out(f"PMC21231{i}_Fig3_{i}.jpg", 0.5, 0) for i in range(6))
SPACENET_TRAIN = sum(not held_out(f"{c}/{c}_{i}.jpg", 0.3, 0) for c in SPACENET_CLASSES[:4] for i in range(3))
# training samples of each fixture (file datamodules drop the last short batch; shards keep it)
TRAIN_SAMPLES = {"rsicd": 2, "ucm_captions": 2, "sydney_captions": 2, "rs5m": 4, "biomedica": 4, "quilt": 3, "pmc_oa": 4,
                 "pmc_oa_single": PMC_SINGLE_TRAIN, "roco": 3, "mimic_cxr": 3, "cosmoclip": SPACENET_TRAIN, "semart": 3}
SKIPPED = {"mimic_cxr": {"empty_caption": 1}}


def overrides(data: dict, run_dir: Path) -> list[str]:
    model_and_trainer = [o for o in TINY_OVERRIDES if o.startswith(("model.", "trainer."))]
    data = data | {"image_size": 16, "batch_size": BATCH}
    return model_and_trainer + [f"data={json.dumps(data)}", "trainer.num_sanity_val_steps=0", f"run_dir={run_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(set(LAYOUTS) - {"rs5m"}))
def test_domain_datamodule_trains_on_its_published_layout(tmp_path: Path, layout: str) -> None:
    data = LAYOUTS[layout](tmp_path / "data")
    run_dir = fit(str(REPO / "experiments" / "tiny_vit.yaml"), overrides(data, tmp_path / "run"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    samples = TRAIN_SAMPLES[layout]
    shards = "train" in data
    assert metrics["global_step"] == (-(-samples // BATCH) if shards else samples // BATCH) > 0
    assert metrics["data_quality"]["skipped"] == SKIPPED.get(layout, {})
    assert any(name.startswith("retrieval/") for name in metrics["metrics"])


@pytest.mark.slow
def test_vlp_fit_command_trains_on_rs5m_shards(tmp_path: Path) -> None:
    data = LAYOUTS["rs5m"](tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vlp", "fit", str(REPO / "experiments" / "tiny_vit.yaml"), *overrides(data, tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 // BATCH
    quality = json.loads((tmp_path / "run" / "data_quality.json").read_text())
    assert quality["skipped"] == {} and quality["seen"] == 4 + 2  # one epoch of 4 training samples, 2 validation samples
