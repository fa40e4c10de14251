"""Towers: outputs equal the underlying timm / transformers computations; weights load safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vlp.encoders.timm_image import TimmImageEncoder
from vlp.encoders.transformers_text import TransformersTextEncoder
from vlp.registry import ConfigError
from vlp.text.word_tokenizer import build_word_tokenizer, tokenizer_from_json

VIT = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
CLIP_TEXT = {"model_type": "clip_text_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
CORPUS = ["a red circle", "a large blue square at the top", "green"]


def image_tower(**kwargs) -> TimmImageEncoder:
    torch.manual_seed(0)
    return TimmImageEncoder(embed_dim=16, model_name="vit_tiny_patch16_224", model_kwargs=VIT, **kwargs)


def test_image_tower_matches_timm_and_returns_patch_tokens():
    tower = image_tower().eval()
    images = torch.rand(3, 3, 16, 16)
    features = tower(images)
    normalised = (images - 0.5) / 0.5  # vit_tiny's pretrained config: mean = std = 0.5
    torch.testing.assert_close(features.pooled, tower.backbone(normalised))
    hidden = tower.backbone.forward_features(normalised)
    torch.testing.assert_close(features.tokens, hidden[:, 1:])
    assert features.tokens.shape == (3, 4, 32) and features.mask.all()
    torch.testing.assert_close(features.embedding, features.pooled @ tower.projection.weight.T)
    torch.testing.assert_close(features.token_embeddings, features.tokens @ tower.projection.weight.T)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_image_weights_load_from_local_file_including_a_classifier_head(tmp_path: Path, suffix: str):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT).eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    tower = image_tower(checkpoint=str(path)).eval()
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(tower(images).pooled, source.forward_head(source.forward_features((images - 0.5) / 0.5), pre_logits=True))


def test_image_weights_that_do_not_fit_are_listed(tmp_path: Path):
    other = timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**VIT, "depth": 2})
    path = tmp_path / "deeper.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match=r"unexpected: blocks\.1\."):
        image_tower(checkpoint=str(path))


def text_tower(pooling: str = "auto") -> TransformersTextEncoder:
    torch.manual_seed(0)
    return TransformersTextEncoder(
        embed_dim=16, default_tokenizer=lambda: build_word_tokenizer(CORPUS), config=CLIP_TEXT, pooling=pooling, max_length=12
    ).eval()


def test_clip_text_tower_pools_the_end_of_text_token_and_ignores_padding():
    tower = text_tower()
    ids, mask = tower.tokenize(["a red circle", "a large blue square at the top"])
    eos = tower.tokenizer.eos_token_id
    assert (ids[0, :5] == torch.tensor(tower.tokenizer.convert_tokens_to_ids(["[BOS]", "a", "red", "circle", "[EOS]"]))).all()
    features = tower(ids, mask)
    hidden = tower.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    eos_positions = (ids == eos).int().argmax(dim=1)
    torch.testing.assert_close(features.pooled, hidden[torch.arange(2), eos_positions])
    alone = tower(*tower.tokenize(["a red circle"]))
    torch.testing.assert_close(alone.embedding[0], features.embedding[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_tower("eos")(ids, mask).pooled, features.pooled)


def test_mean_pooling_averages_real_tokens_only():
    tower = text_tower("mean")
    ids, mask = tower.tokenize(["green", "a large blue square at the top"])
    features = tower(ids, mask)
    expected = features.tokens[0, : int(mask[0].sum())].mean(0)
    torch.testing.assert_close(features.pooled[0], expected)


def test_word_tokenizer_is_order_independent_and_survives_json():
    first, second = build_word_tokenizer(CORPUS), build_word_tokenizer(list(reversed(CORPUS)))
    assert first.get_vocab() == second.get_vocab()
    restored = tokenizer_from_json(first.backend_tokenizer.to_str())
    assert restored("a Blue square")["input_ids"] == first("a blue square")["input_ids"]
    assert first.convert_ids_to_tokens(first("a purple circle")["input_ids"])[2] == "[UNK]"


def test_max_length_beyond_position_embeddings_is_refused():
    with pytest.raises(ConfigError, match="exceeds the text model's 8 position embeddings"):
        TransformersTextEncoder(
            embed_dim=8, default_tokenizer=lambda: build_word_tokenizer(CORPUS),
            config={**CLIP_TEXT, "max_position_embeddings": 8}, max_length=12,
        )
