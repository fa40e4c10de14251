"""transformers CLIP/SigLIP directories: vlp's embeddings equal the original model's on the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.encoders.hf_clip import HFCLIPImageEncoder, HFCLIPTextEncoder
from vlp.encoders.hf_siglip import HFSiglipImageEncoder, HFSiglipTextEncoder
from vlp.encoders.pretrained_scales import read_scales
from vlp.model import DualEncoder
from vlp.registry import ConfigError
from vlp.text.word_tokenizer import build_word_tokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = ["a red circle", "a large blue square at the top", "green", "two small triangles on the left"]
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel saved with its tokenizer and preprocessor config."""
    path = tmp_path_factory.mktemp("clip")
    tokenizer = build_word_tokenizer(CORPUS)
    text = {**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    vision = {**TOWER, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return path


def test_clip_directory_embeddings_equal_transformers(clip_dir: Path):
    encoder = DualEncoder(HFCLIPImageEncoder(24, str(clip_dir)), HFCLIPTextEncoder(24, str(clip_dir))).eval()
    reference = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = encoder.text_tower.tokenizer
    images = torch.rand(3, 3, 32, 32)
    texts = CORPUS[:3]
    with torch.no_grad():
        pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        expected_image = reference.get_image_features(pixel_values=pixels).pooler_output
        expected_text = reference.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
        torch.testing.assert_close(encoder.encode_image(images), F.normalize(expected_image, dim=-1))
        torch.testing.assert_close(encoder.encode_text(texts), F.normalize(expected_text, dim=-1))


def test_clip_image_tokens_share_the_pooled_feature_space(clip_dir: Path):
    tower = HFCLIPImageEncoder(24, str(clip_dir)).eval()
    reference = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = tower(images)
        pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        hidden = reference.vision_model(pixel_values=pixels).last_hidden_state
    assert features.tokens.shape == (2, 16, 32) and features.mask.all()
    torch.testing.assert_close(features.tokens, reference.vision_model.post_layernorm(hidden[:, 1:]))


def test_clip_embed_dim_must_match_the_projection(clip_dir: Path):
    with pytest.raises(ConfigError, match="model.embed_dim is 16 but the visual projection .* outputs 24 dimensions"):
        HFCLIPImageEncoder(16, str(clip_dir))


def test_clip_weights_that_do_not_fit_the_config_are_listed(clip_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(clip_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 3
    config["text_config"]["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"missing: vision_model\.encoder\.layers\.2\..*wrong shape: text_model\.encoder\.layers\.0\.mlp\.fc1"):
        HFCLIPImageEncoder(24, str(broken))


def test_a_directory_of_another_family_is_refused(clip_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ConfigError, match='holds a "siglip" model but the "hf_clip" tower reads "clip" models'):
        HFCLIPTextEncoder(24, str(other))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SiglipModel with its tokenizer and no preprocessor config (SigLIP's 0.5/0.5 apply)."""
    path = tmp_path_factory.mktemp("siglip")
    tokenizer = build_word_tokenizer(CORPUS)
    text = {**TOWER, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text, vision_config={**TOWER, "image_size": 32, "patch_size": 8})).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_siglip_directory_embeddings_equal_transformers(siglip_dir: Path):
    encoder = DualEncoder(HFSiglipImageEncoder(32, str(siglip_dir)), HFSiglipTextEncoder(32, str(siglip_dir))).eval()
    reference = SiglipModel.from_pretrained(siglip_dir, local_files_only=True).eval()
    tokenizer = encoder.text_tower.tokenizer
    images = torch.rand(3, 3, 32, 32)
    texts = CORPUS[1:]
    with torch.no_grad():
        expected_image = reference.get_image_features(pixel_values=(images - 0.5) / 0.5).pooler_output
        ids = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
        expected_text = reference.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(encoder.encode_image(images), F.normalize(expected_image, dim=-1))
        torch.testing.assert_close(encoder.encode_text(texts), F.normalize(expected_text, dim=-1))
    assert encoder.text_tower.tokenize(texts)[0].shape == (3, 64)


def test_siglip_embed_dim_must_equal_the_head_width(siglip_dir: Path):
    with pytest.raises(ConfigError, match="model.embed_dim is 24 but the vision pooling head .* outputs 32 dimensions; set model.embed_dim: 32"):
        HFSiglipImageEncoder(24, str(siglip_dir))


def test_scales_are_read_from_clip_and_siglip_directories(clip_dir: Path, siglip_dir: Path):
    clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True)
    siglip = SiglipModel.from_pretrained(siglip_dir, local_files_only=True)
    assert read_scales(str(clip_dir)).log_logit_scale == clip.logit_scale.item()
    assert read_scales(str(clip_dir)).logit_bias is None
    scales = read_scales(str(siglip_dir), need_bias=True)
    assert (scales.log_logit_scale, scales.logit_bias) == (siglip.logit_scale.item(), siglip.logit_bias.item())
    with pytest.raises(ConfigError, match="holds no logit_bias"):
        read_scales(str(clip_dir), need_bias=True)


def test_scales_are_found_in_sharded_weights(tmp_path: Path):
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=TOWER, vision_config={**TOWER, "image_size": 16, "patch_size": 8}))
    with torch.no_grad():
        model.logit_scale.fill_(1.25)
        model.logit_bias.fill_(-3.5)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    scales = read_scales(str(tmp_path))
    assert (scales.log_logit_scale, scales.logit_bias) == (1.25, -3.5)


def test_example_yaml_builds_towers_equal_to_the_directory(clip_dir: Path):
    overrides = [f"model.image_encoder.pretrained={clip_dir}", f"model.text_encoder.pretrained={clip_dir}", "model.embed_dim=24",
                 "data.image_size=32", "data.train_size=8", "data.val_size=8", "data.batch_size=4"]
    experiment = load_experiment(REPO / "experiments" / "pretrained" / "hf_clip.yaml", overrides)
    encoder = build_module(experiment, build_datamodule(experiment)).encoder.eval()
    reference = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        expected = F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        torch.testing.assert_close(encoder.encode_image(images), expected)
