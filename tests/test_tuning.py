"""LoRA/DoRA and LiT locking: what trains, what checkpoints hold, and merging for export."""

from __future__ import annotations

import pytest
import torch

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.registry import ConfigError
from vlp.tuning import merge_adapters

from conftest import REPO, TINY_OVERRIDES


def build(*overrides: str):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES + list(overrides))
    torch.manual_seed(0)
    return build_module(experiment, build_datamodule(experiment))


def trainable(module, prefix: str) -> set[str]:
    return {n[len(prefix):] for n, p in module.named_parameters() if n.startswith(prefix) and p.requires_grad}


def test_lora_on_timm_vit_adapts_block_linears_only():
    module = build("model.tuning.image={mode: lora, lora: {r: 4, alpha: 8}}")
    names = trainable(module, "encoder.image_tower.")
    assert names == {
        "projection.weight",
        *(f"backbone.blocks.0.{layer}.lora_{ab}.default.weight" for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") for ab in "AB"),
    }
    assert module.encoder.image_tower.backbone.blocks[0].attn.qkv.lora_A["default"].weight.shape == (4, 32)
    assert all(p.requires_grad for p in module.encoder.text_tower.parameters())  # the other tower trains fully


def test_dora_adds_magnitude_vectors_and_locking_keeps_last_blocks():
    module = build(
        "model.tuning.image={mode: lora, train_projection: false, lora: {r: 2, dora: true}}",
        "model.tuning.text={mode: locked, unlocked_blocks: 1}",
        "model.text_encoder.config.num_hidden_layers=2",
        "model.tuning.train_objectives=false",
    )
    image = trainable(module, "encoder.image_tower.")
    assert "backbone.blocks.0.attn.qkv.lora_magnitude_vector.default.weight" in image
    assert "projection.weight" not in image
    text = trainable(module, "encoder.text_tower.")
    assert text == {"projection.weight", "backbone.final_layer_norm.weight", "backbone.final_layer_norm.bias"} | {
        n[len("encoder.text_tower."):] for n, _ in module.named_parameters() if ".encoder.layers.1." in n and "text_tower" in n
    }
    assert not any(p.requires_grad for p in module.objectives.parameters())


def test_lit_lock_freezes_whole_tower():
    module = build("model.tuning.image={mode: locked}")
    assert trainable(module, "encoder.image_tower.") == {"projection.weight"}


def test_merged_lora_model_computes_the_same_embeddings():
    module = build("model.tuning.image={mode: lora, lora: {r: 4}}").eval()
    with torch.no_grad():
        for name, parameter in module.encoder.image_tower.named_parameters():
            if "lora_B" in name:  # LoRA starts as a no-op (B = 0); make it matter
                parameter.normal_(std=0.5)
    images = torch.rand(3, 3, 16, 16)
    adapted = module.encoder.encode_image(images)
    assert not torch.allclose(adapted, build().eval().encoder.encode_image(images), atol=1e-3)
    merge_adapters(module.encoder)
    assert not any("lora" in n for n, _ in module.named_parameters())
    torch.testing.assert_close(module.encoder.encode_image(images), adapted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.tuning.image={mode: lora, lora: {rank: 4}}", "Unknown key `model.tuning.image.lora.rank`"),
        ("model.tuning.image={mode: adapters}", "`model.tuning.image.mode`"),
        ("model.tuning.text={mode: locked, unlocked_blocks: 9}", "has 1 blocks"),
        ("model.tuning.image={mode: lora, lora: {target_modules: [nope]}}", "match no layer"),
    ],
)
def test_bad_tuning_is_reported(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("`", "`").replace(".", r"\.")):
        build(override)
