"""Towers from an open_clip CLIP checkpoint: its ViT as a timm model, its text transformer as transformers'.

The checkpoint is a state dict (``.pt``/``.bin`` read with ``weights_only=True``, or
``.safetensors``), as open_clip saves it or as a training checkpoint wrapping it. Sizes
come from the tensor shapes; the head count (open_clip's default: width / 64) and the
activation (QuickGELU for OpenAI-trained weights and ``-quickgelu`` models, GELU
otherwise) are not stored, so they are arguments.
"""

from __future__ import annotations

import timm
import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from vlp.encoders.hf_directory import check_embed_dim, check_vocabulary, load_tokenizer, tokenize
from vlp.encoders.open_clip_convert import shape_of, text_part, to_hf_clip_text, to_timm_vit, unwrap, vision_part
from vlp.encoders.long_text import stretch_text_tower
from vlp.encoders.patch_tokens import timm_vit_patches
from vlp.encoders.towers import Tower
from vlp.encoders.weights import load_into, read_state_dict
from vlp.registry import IMAGE_ENCODERS, TEXT_ENCODERS, ConfigError

TIMM_CLIP_VIT = "vit_base_patch16_clip_224"  # timm's CLIP ViT definition: pre-norm, LayerNorm eps 1e-5, class token
OPEN_CLIP_HEAD_WIDTH = 64
LAYER_NORM_EPS = 1e-5


@IMAGE_ENCODERS.register("open_clip")
class OpenCLIPImageEncoder(Tower):
    """open_clip's ViT image tower, run as a timm ``VisionTransformer``, with ``visual.proj`` as the projection.

    Images arrive in [0, 1] at the checkpoint's image size and are normalised with
    ``mean``/``std`` (default OpenAI CLIP's, which most open_clip models use).
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(
        self,
        embed_dim: int,
        checkpoint: str,
        num_heads: int | None = None,
        quick_gelu: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        vision = vision_part(unwrap(read_state_dict(checkpoint)), checkpoint)
        width, _, _, patch = vision["conv1.weight"].shape
        shape = shape_of(vision)
        weights, projection = to_timm_vit(vision)
        check_embed_dim(embed_dim, projection.shape[0], "visual projection", checkpoint)
        backbone = timm.create_model(
            TIMM_CLIP_VIT,
            pretrained=False,
            num_classes=0,
            img_size=_grid_side(shape.positions - 1, checkpoint) * patch,
            patch_size=patch,
            embed_dim=width,
            depth=shape.depth,
            num_heads=num_heads or width // OPEN_CLIP_HEAD_WIDTH,
            mlp_ratio=shape.mlp_hidden / width,
            act_layer="quick_gelu" if quick_gelu else "gelu",
        )
        load_into(backbone, weights, checkpoint)
        super().__init__(width, embed_dim)
        self.backbone = backbone
        with torch.no_grad():
            self.projection.weight.copy_(projection)
        self.register_buffer("mean", torch.tensor(mean or OPENAI_CLIP_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or OPENAI_CLIP_STD).view(1, -1, 1, 1), persistent=False)
        self.patch_size, self.patch_grid = tuple(backbone.patch_embed.patch_size), tuple(backbone.patch_embed.grid_size)
        self.num_prefix_tokens = backbone.num_prefix_tokens

    def backbone_features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.backbone.forward_features((images - self.mean) / self.std)
        pooled = self.backbone.forward_head(hidden, pre_logits=True)
        tokens = hidden[:, self.backbone.num_prefix_tokens :]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return pooled, tokens, mask

    def patch_features(self, images, keep, drop_positions, layers):
        return timm_vit_patches(self.backbone, (images - self.mean) / self.std, keep, drop_positions, layers)


@TEXT_ENCODERS.register("open_clip")
class OpenCLIPTextEncoder(Tower):
    """open_clip's text transformer, run as a transformers ``CLIPTextModel``, with ``text_projection``.

    ``tokenizer`` is a local directory holding the tokenizer the model was trained with
    (for OpenAI/LAION models, a transformers ``CLIPTokenizer`` directory). The end-of-text
    token is pooled; with OpenAI's BPE it is the highest id, as open_clip's argmax assumes.
    ``long_text`` stretches the positions as Long-CLIP does (see :mod:`vlp.encoders.long_text`).
    """

    pretrained_parts = ("backbone.", "projection.")

    def __init__(
        self,
        embed_dim: int,
        checkpoint: str,
        tokenizer: str,
        num_heads: int | None = None,
        quick_gelu: bool = False,
        long_text: bool = False,
    ) -> None:
        text = text_part(unwrap(read_state_dict(checkpoint)), checkpoint)
        vocab_size, width = text["token_embedding.weight"].shape
        shape = shape_of(text)
        weights, projection = to_hf_clip_text(text)
        check_embed_dim(embed_dim, projection.shape[0], "text projection", checkpoint)
        text_tokenizer = load_tokenizer(tokenizer)
        check_vocabulary(text_tokenizer, vocab_size, checkpoint)
        if text_tokenizer.eos_token_id is None:
            raise ConfigError(f"The tokenizer in {tokenizer} has no end-of-text token to pool; use the tokenizer the model was trained with.")
        config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=shape.mlp_hidden,
            num_hidden_layers=shape.depth,
            num_attention_heads=num_heads or width // OPEN_CLIP_HEAD_WIDTH,
            max_position_embeddings=shape.positions,
            hidden_act="quick_gelu" if quick_gelu else "gelu",
            layer_norm_eps=LAYER_NORM_EPS,
            pad_token_id=text_tokenizer.pad_token_id,
            bos_token_id=text_tokenizer.bos_token_id,
            eos_token_id=text_tokenizer.eos_token_id,
        )
        backbone = CLIPTextModel(config)
        load_into(backbone, weights, checkpoint)
        super().__init__(width, embed_dim)
        self.backbone = backbone
        self.tokenizer = text_tokenizer
        self.max_length = shape.positions
        with torch.no_grad():
            self.projection.weight.copy_(projection)
        if long_text:
            stretch_text_tower(self)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return tokenize(self.tokenizer, texts, "longest", self.max_length)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return output.pooler_output, output.last_hidden_state, attention_mask.bool()


def _grid_side(patches: int, source: str) -> int:
    side = round(patches**0.5)
    if side * side != patches:
        raise ConfigError(f"{source} has {patches} patch positions, not a square grid; only square open_clip ViTs convert.")
    return side
