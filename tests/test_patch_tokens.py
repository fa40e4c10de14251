"""The token-level image entry: patch subsets, positional-embedding drop and intermediates, per tower family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from vlp.encoders.hf_clip import HFCLIPImageEncoder
from vlp.encoders.hf_siglip import HFSiglipImageEncoder
from vlp.encoders.patch_tokens import timm_vit_patches
from vlp.encoders.timm_image import TimmImageEncoder
from vlp.registry import ConfigError
from vlp.text.word_tokenizer import build_word_tokenizer

VIT = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def test_kept_patches_equal_timms_own_patch_dropout():
    """timm's PatchDropout draws its kept indices from torch.randn; the same draw fed to our entry gives its output."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, patch_drop_rate=0.5, **VIT).double().train()
    pixels = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    torch.manual_seed(1)
    expected = vit.forward_features(pixels)
    torch.manual_seed(1)
    keep = torch.randn(3, 16).argsort(dim=-1)[:, :8]  # timm's draw: max(1, int(16 * (1 - 0.5))) patches
    pooled, tokens, _ = timm_vit_patches(vit, pixels, keep, None, ())
    torch.testing.assert_close(tokens, expected[:, 1:])
    torch.testing.assert_close(pooled, vit.forward_head(expected, pre_logits=True))


def test_dropped_positions_equal_a_vit_without_positional_embedding():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="avg", **VIT).double().eval()
    without = timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="avg", **VIT).double().eval()
    without.load_state_dict(vit.state_dict())
    with torch.no_grad():
        without.pos_embed[:, 1:] = 0.0  # keep the class token's position, drop the patches'
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    pooled, tokens, _ = timm_vit_patches(vit, pixels, None, torch.tensor([True, False]), ())
    torch.testing.assert_close(tokens[0], without.forward_features(pixels)[0, 1:])
    torch.testing.assert_close(tokens[1], vit.forward_features(pixels)[1, 1:])
    torch.testing.assert_close(pooled[0], without.forward_head(without.forward_features(pixels), pre_logits=True)[0])


def test_intermediate_layers_equal_timms_forward_intermediates():
    torch.manual_seed(0)
    tower = TimmImageEncoder(24, "vit_tiny_patch16_224", VIT).double().eval()
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    features = tower.forward_patches(images, layers=(0, -1))
    pixels = (images - tower.mean) / tower.std
    _, intermediates = tower.backbone.forward_intermediates(pixels, indices=[0, 1], norm=False, output_fmt="NLC")
    assert len(features.layers) == 2
    for got, expected in zip(features.layers, intermediates):
        torch.testing.assert_close(got, expected)
    full = tower(images)
    torch.testing.assert_close(features.embedding, full.embedding)
    torch.testing.assert_close(features.tokens, full.tokens)
    assert features.kept is None and tower.patch_grid == (4, 4) and tower.patch_size == (4, 4)


def _check_tower(tower, images: torch.Tensor) -> None:
    """All patches in order equal the tower's forward; a subset equals the tower on those patches' tokens."""
    full = tower(images)
    every = tower.forward_patches(images, keep=torch.arange(16).expand(len(images), 16))
    torch.testing.assert_close(every.embedding, full.embedding)
    torch.testing.assert_close(every.tokens, full.tokens)
    keep = torch.tensor([[0, 5, 10, 15], [3, 2, 1, 0]])
    part = tower.forward_patches(images, keep=keep, layers=(0,))
    assert part.tokens.shape == (2, 4, tower.width) and part.kept is keep and part.layers[0].shape == (2, 4, tower.width)
    assert not torch.allclose(part.embedding, full.embedding)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(["a red circle", "a blue square"])


def test_hf_clip_tower_runs_on_patch_subsets(tmp_path: Path, tokenizer):
    text = {**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config={**TOWER, "image_size": 32, "patch_size": 8}, projection_dim=24)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    tower = HFCLIPImageEncoder(24, str(tmp_path)).eval()
    assert tower.patch_grid == (4, 4) and tower.num_prefix_tokens == 1
    _check_tower(tower, torch.rand(2, 3, 32, 32))


def test_hf_siglip_tower_runs_on_patch_subsets(tmp_path: Path, tokenizer):
    text = {**TOWER, "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text, vision_config={**TOWER, "image_size": 32, "patch_size": 8})).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tower = HFSiglipImageEncoder(32, str(tmp_path)).eval()
    assert tower.patch_grid == (4, 4) and tower.num_prefix_tokens == 0
    _check_tower(tower, torch.rand(2, 3, 32, 32))


def test_a_cnn_tower_refuses_patch_dropping_with_one_sentence():
    tower = TimmImageEncoder(16, "resnet18")
    with pytest.raises(ConfigError, match="patch dropping needs a timm ViT"):
        tower.forward_patches(torch.rand(1, 3, 32, 32), keep=torch.zeros(1, 1, dtype=torch.long))
