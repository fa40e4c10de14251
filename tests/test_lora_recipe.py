"""A LoRA domain-adaptation recipe end to end: `vlp fit` then `vlp export`, on local fixtures.

experiments/lora/remoteclip.yaml runs as written, pointed (through its `vars`) at a tiny
random transformers CLIPModel directory and a tiny RSICD copy in its published layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_data_formats import karpathy_json
from test_pretrained_hf import clip_dir  # noqa: F401  (pytest fixture)

from vlp.cli import main
from vlp.data.shapes import COLOURS, SHAPES, Thing, captions_for, render
from vlp.export import load_exported, restore
from vlp.run import load_vlp_checkpoint

from conftest import REPO

SCENES = ["airport", "beach", "forest", "port"]


def write_rsicd(root: Path, count: int = 24) -> None:
    """RSICD layout (dataset_rsicd.json + RSICD_images/) with rendered images named <scene>_<n>.jpg."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    grid = tuple(np.mgrid[0:32, 0:32].astype(np.float32))
    entries = []
    for n in range(count):
        thing = Thing(SHAPES[n % 4], list(COLOURS)[n % 8], "large", 4)
        canvas = np.full((3, 32, 32), 30, dtype=np.float32)
        render([thing], canvas, grid, rng)
        name = f"{SCENES[n % 4]}_{n}.jpg"
        (root / "RSICD_images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas.transpose(1, 2, 0).astype(np.uint8)).save(root / "RSICD_images" / name, quality=95)
        entries.append({"filename": name, "split": "train" if n < 16 else "test", "sentences": captions_for([thing])})
    (root / "dataset_rsicd.json").write_text(json.dumps(karpathy_json(entries, "rsicd")))


def test_remoteclip_lora_recipe_fits_and_exports(clip_dir: Path, tmp_path: Path):  # noqa: F811
    write_rsicd(tmp_path / "RSICD")
    run_dir = tmp_path / "run"
    overrides = [
        f"vars.clip={clip_dir}", f"vars.data={tmp_path / 'RSICD'}", f"run_dir={run_dir}",
        "model.embed_dim=24", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "optim.warmup_steps=2", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    ]
    assert main(["fit", str(REPO / "experiments" / "lora" / "remoteclip.yaml"), *overrides]) == 0
    result = json.loads((run_dir / "metrics.json").read_text())
    assert set(result["before"]) == set(result["metrics"]) and any(k.startswith("zeroshot/") for k in result["metrics"])
    assert result["change"] == {k: result["metrics"][k] - result["before"][k] for k in result["metrics"]}

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = load_vlp_checkpoint(checkpoint)["state_dict"]
    backbone_keys = [k for k in state if ".backbone." in k]
    assert backbone_keys and all(".lora_" in k for k in backbone_keys)  # base CLIP weights referenced, not stored
    assert "objectives.clip.logit_scale.log_value" in state

    assert main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "export"), "--format", "safetensors"]) == 0
    adapted, _ = restore(checkpoint)
    reloaded = load_exported(tmp_path / "export")
    images, texts = torch.rand(3, 3, 32, 32), ["a large red circle", "a small blue square"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encoder.encode_image(images), adapted.encoder.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reloaded.encoder.encode_text(texts), adapted.encoder.encode_text(texts), rtol=1e-5, atol=1e-6)
        assert not any("lora" in n for n, _ in reloaded.named_parameters())
