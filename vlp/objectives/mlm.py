"""Masked language modelling on the text tower (BERT), plain or image-fused (ALBEF, LightCLIP)."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.heads.fusion import CrossAttentionFusion
from vlp.heads.mlm import MLMHead
from vlp.masked_modeling import masked_token_loss
from vlp.needs import SpecialTokens
from vlp.objectives.base import Objective
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step
from vlp.text.masking import IGNORE_INDEX
from vlp.views.bert_mask import LABELS, BertMask


@OBJECTIVES.register("mlm")
class MaskedLanguageModeling(Objective):
    """Predict the tokens BERT's masking chose from the text tower's hidden states of the masked caption.

    The masked caption is the text view ``text_view`` (default ``bert_mask``: 15% of real,
    non-special tokens, 80/10/10; declare another ``bert_mask`` view under ``model.views``
    for other rates). BERT's head (dense, GELU, LayerNorm) maps each chosen token's hidden
    state to the vocabulary; with ``tie_embeddings`` (BERT's choice) its output matrix is
    the text tower's input embedding matrix, otherwise the head owns one. The loss is the
    cross-entropy over the chosen tokens of the global batch; ``accuracy`` is this rank's
    share of chosen tokens predicted exactly.

    ``fusion_depth: n >= 1`` is image-fused MLM: n cross-attention layers let the masked
    caption's tokens attend to the image tokens of ``image_view`` before the head, so words
    the caption alone cannot give (a colour, a shape) are read from the image, as in ALBEF's
    multimodal encoder and LightCLIP's image-fused MLM. With ``fusion_depth: 0`` a causal
    text tower (``clip_text_model``) sees only the left context of a masked token; a
    bidirectional one (``bert``) sees both sides.
    """

    def __init__(
        self,
        text_width: int,
        image_width: int,
        vocab_size: int,
        special_tokens: SpecialTokens,
        encoder: nn.Module,
        tie_embeddings: bool = True,
        fusion_depth: int = 0,
        fusion_heads: int = 4,
        text_view: str = "bert_mask",
        image_view: str = "full",
    ) -> None:
        super().__init__()
        if special_tokens.mask is None:
            raise ConfigError(
                "mlm needs a tokenizer with a mask token; use the default word tokenizer (it has [MASK]) "
                "or a text tower whose tokenizer has one (e.g. BERT's)."
            )
        if fusion_depth < 0:
            raise ConfigError(f"mlm fusion_depth must be 0 (plain MLM) or a number of fusion layers, got {fusion_depth}.")
        self.text_view, self.image_view = text_view, image_view
        if tie_embeddings:
            rows, width = input_embeddings(encoder.text_tower).shape
            if width != text_width:
                raise ConfigError(
                    f"The text tower's token embeddings have width {width}, not its hidden width {text_width}, "
                    f"so the MLM decoder cannot be tied to them; set tie_embeddings: false."
                )
            vocab_size = rows
        self.head = MLMHead(text_width, vocab_size, tied=tie_embeddings)
        self.fusion = CrossAttentionFusion(text_width, image_width, fusion_depth, fusion_heads) if fusion_depth else None

    def text_views(self) -> dict[str, BertMask]:
        return {"bert_mask": BertMask()} if self.text_view == "bert_mask" else {}

    def forward(self, step: Step) -> dict[str, Tensor]:
        text = step.text(self.text_view)
        labels = text.meta.get(LABELS)
        if labels is None:
            raise ConfigError(f'mlm reads text view "{self.text_view}", which masks nothing; point text_view at a bert_mask view.')
        chosen = labels != IGNORE_INDEX
        hidden = text.tokens
        if self.fusion is not None:
            image = step.image(self.image_view)
            hidden = self.fusion(hidden, text.mask, image.tokens, image.mask)
        embeddings = input_embeddings(step.encoder.text_tower) if self.head.tied else None
        logits = self.head(hidden[chosen], embeddings)
        targets = labels[chosen]
        correct = (logits.detach().argmax(dim=-1) == targets).sum()
        return {"loss": masked_token_loss(logits, targets), "accuracy": correct / chosen.sum().clamp(min=1)}


def input_embeddings(text_tower: nn.Module) -> Tensor:
    """The text tower's token embedding matrix (vocabulary x width), read where it lives."""
    get = getattr(getattr(text_tower, "backbone", None), "get_input_embeddings", None)
    embedding = get() if get is not None else None
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError(
            f"The {type(text_tower).__name__} text tower exposes no token embedding matrix to tie the MLM "
            f"decoder to; set tie_embeddings: false."
        )
    return embedding.weight
