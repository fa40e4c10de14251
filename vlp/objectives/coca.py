"""CoCa: contrastive captioners (Yu et al., 2022).

A contrastive loss between an attentional-pooled image embedding and the unimodal text
embedding, plus an autoregressive captioning loss from a multimodal decoder that reads
the text tower's per-token states and cross-attends to (pooled) image tokens. The text
tower is CoCa's unimodal decoder, so it must be causal: position t may not see t+1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlp.heads.caption_decoder import AttentionalPooler, MultimodalTextDecoder
from vlp.functional import infonce_loss
from vlp.generation import beam_search, greedy_search, ranked_beam_search
from vlp.generative import caption_loss, next_token_targets, token_accuracy
from vlp.objectives.base import Objective
from vlp.objectives.temperature import LogitScale
from vlp.needs import SpecialTokens
from vlp.registry import OBJECTIVES, ConfigError
from vlp.step import Step


@OBJECTIVES.register("coca")
class CoCa(Objective):
    """``contrastive_weight`` x InfoNCE + ``caption_weight`` x next-token cross-entropy (paper: 1 and 2).

    The image embedding is one learned query attending to the image tokens (then a linear
    map into the joint space); the captioning decoder attends to ``image_queries`` learned
    queries over the same tokens (``image_queries: 0``: to every image token). The decoder has ``decoder_depth`` layers of width
    ``decoder_width``. ``label_smoothing`` smooths the caption targets (paper: 0.1).
    """

    def __init__(
        self,
        embed_dim: int,
        image_width: int,
        text_width: int,
        vocab_size: int,
        special_tokens: SpecialTokens,
        encoder: nn.Module,
        caption_weight: float = 2.0,
        contrastive_weight: float = 1.0,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        image_queries: int = 64,
        label_smoothing: float = 0.0,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        image_view: str = "full",
        text_view: str = "full",
    ) -> None:
        super().__init__()
        for name, width in (("embed_dim", embed_dim), ("decoder_width", decoder_width)):
            if width % heads:
                raise ConfigError(f"coca: {name} {width} is not divisible by heads {heads}; choose heads that divide it.")
        if special_tokens.bos is None or special_tokens.eos is None or special_tokens.pad is None:
            raise ConfigError(
                "coca needs a tokenizer with padding, begin and end tokens (to batch, start and stop captions); "
                "use one that has all three, such as the default word tokenizer."
            )
        if not attends_causally(encoder.text_tower, special_tokens.bos, special_tokens.eos, (special_tokens.eos + 1) % vocab_size):
            raise ConfigError(
                "coca needs a causal text tower (it is CoCa's unimodal text decoder), but the configured one lets "
                "tokens see later tokens; use a causal text model such as model_type: clip_text_model."
            )
        self.pad_id, self.bos_id, self.eos_id = special_tokens.pad, special_tokens.bos, special_tokens.eos
        self.caption_weight = caption_weight
        self.contrastive_weight = contrastive_weight
        self.label_smoothing = label_smoothing
        self.image_view = image_view
        self.text_view = text_view
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)
        self.image_pooler = AttentionalPooler(image_width, embed_dim, n_queries=1, heads=heads)
        self.image_projection = nn.Linear(embed_dim, embed_dim, bias=False)
        self.decoder = MultimodalTextDecoder(
            text_width, image_width, vocab_size, width=decoder_width, depth=decoder_depth, heads=heads,
            mlp_ratio=mlp_ratio, image_queries=image_queries,
        )

    def image_embedding(self, image_tokens: Tensor) -> Tensor:
        """CoCa's contrastive image embedding: one attentional-pooling query, projected."""
        return self.image_projection(self.image_pooler(image_tokens)[:, 0])

    def forward(self, step: Step) -> dict[str, Tensor]:
        image = step.image(self.image_view)
        text = step.text(self.text_view)
        scale = self.logit_scale()
        contrastive = infonce_loss(self.image_embedding(image.tokens), text.embedding, scale)
        logits = self.decoder(text.tokens[:, :-1], self.decoder.image_memory(image.tokens))
        labels, mask = next_token_targets(step.batch.input_ids, step.batch.attention_mask)
        caption = caption_loss(logits, labels, mask, self.label_smoothing)
        return {
            "loss": self.contrastive_weight * contrastive + self.caption_weight * caption,
            "contrastive": contrastive.detach(),
            "caption": caption.detach(),
            "token_accuracy": token_accuracy(logits.detach(), labels, mask),
            "logit_scale": scale.detach(),
        }

    @torch.no_grad()
    def generate(self, encoder: nn.Module, images: Tensor, max_new_tokens: int, beam_size: int = 1,
                 ranked: bool = False) -> Tensor:
        """Caption token ids (B, T) for images in [0, 1], starting with the begin token: greedy or beam search.

        With ``ranked``, every final beam, best first: (B, beam_size, T).
        """
        memory = self.decoder.image_memory(encoder.image_tower(images).tokens)
        banned = [t for t in {self.pad_id, self.bos_id} if t != self.eos_id]

        def next_log_probs(prefixes: Tensor, rows: Tensor) -> Tensor:
            states = encoder.text_tower(prefixes, torch.ones_like(prefixes)).tokens
            logits = self.decoder(states, memory[rows])[:, -1].float()
            logits[:, banned] = float("-inf")  # never emit padding or a second begin token
            return logits.log_softmax(dim=-1)

        search = dict(batch_size=images.shape[0], bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id,
                      max_new_tokens=max_new_tokens, device=images.device)
        if ranked:
            return ranked_beam_search(next_log_probs, beam_size=beam_size, **search)
        if beam_size == 1:
            return greedy_search(next_log_probs, **search)
        return beam_search(next_log_probs, beam_size=beam_size, **search)

    def caption(self, encoder: nn.Module, images: Tensor, beam_size: int = 1, max_new_tokens: int | None = None) -> list[str]:
        """Captions as text; at most the text tower's ``max_length`` tokens in all by default."""
        return [ranked[0] for ranked in self.captions(encoder, images, 1, beam_size, max_new_tokens)]

    def captions(self, encoder: nn.Module, images: Tensor, count: int, beam_size: int = 1,
                 max_new_tokens: int | None = None) -> list[list[str]]:
        """The ``count`` best captions per image, best first: the top beams of a search ``max(count, beam_size)`` wide."""
        tower = encoder.text_tower
        limit = getattr(tower, "max_length", 77) - 1
        width = max(count, beam_size)
        if count == 1:
            ids = self.generate(encoder, images, min(max_new_tokens or limit, limit), width)[:, None]
        else:
            ids = self.generate(encoder, images, min(max_new_tokens or limit, limit), width, ranked=True)[:, :count]
        texts = tower.tokenizer.batch_decode(ids.flatten(0, 1), skip_special_tokens=True)
        return [texts[i * count : (i + 1) * count] for i in range(images.shape[0])]


@torch.no_grad()
def attends_causally(text_tower: nn.Module, first: int, middle: int, other: int) -> bool:
    """Whether the tower's token states ignore later tokens: changing the last id must not move the others."""
    was_training = text_tower.training
    text_tower.eval()
    ids = torch.tensor([[first, middle, middle], [first, middle, other]])
    device = next(text_tower.parameters()).device
    states = text_tower(ids.to(device), torch.ones_like(ids, device=device)).tokens
    text_tower.train(was_training)
    return torch.allclose(states[0, :2], states[1, :2], atol=1e-5)
