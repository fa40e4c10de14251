"""SigLIP towers from a local transformers ``SiglipModel`` directory (weights, heads, tokenizer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import SiglipModel

from vlp.encoders.hf_directory import (
    check_embed_dim,
    check_vocabulary,
    image_statistics,
    load_model,
    load_tokenizer,
    read_config,
    tokenize,
)
from vlp.encoders.patch_tokens import hf_vit_patches
from vlp.encoders.towers import Tower
from vlp.registry import IMAGE_ENCODERS, TEXT_ENCODERS, ConfigError

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@IMAGE_ENCODERS.register("hf_siglip")
class HFSiglipImageEncoder(Tower):
    """The vision model of a SiglipModel directory; its attention-pooling head output is the embedding.

    The head already maps into the joint space, so the tower's projection is a frozen
    identity and ``embed_dim`` must equal the vision width. Images arrive in [0, 1] at
    the model's ``image_size`` and are normalised with preprocessor_config.json's
    statistics, else SigLIP's (0.5, 0.5).
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(self, embed_dim: int, pretrained: str) -> None:
        read_config(pretrained, "siglip", "hf_siglip")
        model = load_model(SiglipModel, pretrained)
        vision_config = model.config.vision_config
        if not vision_config.vision_use_head:
            raise ConfigError(f"The vision model in {pretrained} has no pooling head (vision_use_head is false); use a SigLIP checkpoint with its head.")
        check_embed_dim(embed_dim, vision_config.hidden_size, "vision pooling head", pretrained)
        super().__init__(vision_config.hidden_size, embed_dim)
        self.backbone = model.vision_model
        nn.init.eye_(self.projection.weight)
        self.projection.requires_grad_(False)
        self.projection_is_fixed = True
        mean, std = image_statistics(pretrained, SIGLIP_MEAN, SIGLIP_STD)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.patch_size = (vision_config.patch_size,) * 2
        self.patch_grid = (vision_config.image_size // vision_config.patch_size,) * 2

    def backbone_features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(pixel_values=(images - self.mean) / self.std)
        tokens = output.last_hidden_state
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return output.pooler_output, tokens, mask

    def patch_features(self, images, keep, drop_positions, layers):
        hidden, _, intermediates = hf_vit_patches(
            self.backbone, (images - self.mean) / self.std, keep, drop_positions, layers, class_token=False
        )
        tokens = self.backbone.post_layernorm(hidden)
        return self.backbone.head(tokens), tokens, intermediates


@TEXT_ENCODERS.register("hf_siglip")
class HFSiglipTextEncoder(Tower):
    """The text model of a SiglipModel directory with its tokenizer; its linear head is the projection.

    SigLIP was trained on texts padded to its 64 positions without an attention mask and
    pools the last position, so texts are padded to the full length and the mask is not
    given to the model (it is still returned, marking real tokens, for token objectives).
    ``tokenizer`` names another local directory when the model directory has none.
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(self, embed_dim: int, pretrained: str, tokenizer: str | None = None) -> None:
        read_config(pretrained, "siglip", "hf_siglip")
        model = load_model(SiglipModel, pretrained)
        text_config = model.config.text_config
        check_embed_dim(embed_dim, text_config.projection_size, "text head", pretrained)
        super().__init__(text_config.hidden_size, embed_dim)
        self.backbone = model.text_model
        self.projection = self.backbone.head
        self.backbone.head = nn.Identity()
        self.tokenizer = load_tokenizer(tokenizer or pretrained)
        self.max_length = text_config.max_position_embeddings
        check_vocabulary(self.tokenizer, text_config.vocab_size, pretrained)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return tokenize(self.tokenizer, texts, "max_length", self.max_length)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(input_ids=input_ids)
        return output.pooler_output, output.last_hidden_state, attention_mask.bool()
