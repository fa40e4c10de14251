"""CLIP towers from a local transformers ``CLIPModel`` directory (weights, projections, tokenizer)."""

from __future__ import annotations

import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch import Tensor
from transformers import CLIPModel

from vlp.encoders.hf_directory import (
    check_embed_dim,
    check_vocabulary,
    image_statistics,
    load_model,
    load_tokenizer,
    read_config,
    tokenize,
)
from vlp.encoders.long_text import stretch_text_tower
from vlp.encoders.patch_tokens import hf_vit_patches
from vlp.encoders.towers import Tower
from vlp.registry import IMAGE_ENCODERS, TEXT_ENCODERS, ConfigError

LEGACY_EOS_ID = 2  # transformers pools the highest token id when a CLIP config says eos_token_id == 2


@IMAGE_ENCODERS.register("hf_clip")
class HFCLIPImageEncoder(Tower):
    """The vision model of a CLIPModel directory, with its visual projection as the tower's projection.

    Images arrive in [0, 1] at the model's ``image_size``; they are normalised with the
    directory's preprocessor_config.json statistics, else OpenAI CLIP's. Patch tokens go
    through the final layer norm so the projection maps them like the pooled feature.
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(self, embed_dim: int, pretrained: str) -> None:
        read_config(pretrained, "clip", "hf_clip")
        model = load_model(CLIPModel, pretrained)
        check_embed_dim(embed_dim, model.config.projection_dim, "visual projection", pretrained)
        super().__init__(model.config.vision_config.hidden_size, embed_dim)
        self.backbone = model.vision_model
        self.projection = model.visual_projection
        mean, std = image_statistics(pretrained, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        vision_config = model.config.vision_config
        self.patch_size = (vision_config.patch_size,) * 2
        self.patch_grid = (vision_config.image_size // vision_config.patch_size,) * 2
        self.num_prefix_tokens = 1

    def backbone_features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(pixel_values=(images - self.mean) / self.std)
        tokens = self.backbone.post_layernorm(output.last_hidden_state[:, 1:])
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return output.pooler_output, tokens, mask

    def patch_features(self, images, keep, drop_positions, layers):
        hidden, _, intermediates = hf_vit_patches(
            self.backbone, (images - self.mean) / self.std, keep, drop_positions, layers, class_token=True
        )
        normed = self.backbone.post_layernorm(hidden)  # as backbone_features: pooled and tokens both normed
        return normed[:, 0], normed[:, 1:], intermediates


@TEXT_ENCODERS.register("hf_clip")
class HFCLIPTextEncoder(Tower):
    """The text model of a CLIPModel directory, with its text projection and tokenizer.

    ``tokenizer`` names another local directory when the model directory has none.
    Texts are padded to the longest in the batch and truncated at the model's positions;
    the end-of-text token is pooled, as transformers does. ``long_text`` stretches the
    positions as Long-CLIP does (77 -> 248; see :mod:`vlp.encoders.long_text`).
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(self, embed_dim: int, pretrained: str, tokenizer: str | None = None, long_text: bool = False) -> None:
        read_config(pretrained, "clip", "hf_clip")
        model = load_model(CLIPModel, pretrained)
        check_embed_dim(embed_dim, model.config.projection_dim, "text projection", pretrained)
        text_config = model.config.text_config
        super().__init__(text_config.hidden_size, embed_dim)
        self.backbone = model.text_model
        self.projection = model.text_projection
        self.tokenizer = load_tokenizer(tokenizer or pretrained)
        self.max_length = text_config.max_position_embeddings
        check_vocabulary(self.tokenizer, text_config.vocab_size, pretrained)
        _check_end_of_text(self.tokenizer.eos_token_id, text_config.eos_token_id, pretrained)
        if long_text:
            stretch_text_tower(self)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return tokenize(self.tokenizer, texts, "longest", self.max_length)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return output.pooler_output, output.last_hidden_state, attention_mask.bool()


def _check_end_of_text(tokenizer_eos: int | None, config_eos: int | None, path: str) -> None:
    """transformers pools the first ``eos_token_id``: the tokenizer must emit that id."""
    if config_eos != LEGACY_EOS_ID and tokenizer_eos != config_eos:
        raise ConfigError(
            f"The tokenizer's end-of-text id is {tokenizer_eos} but the text model in {path} pools id {config_eos}; "
            f"use the tokenizer the model was trained with."
        )
