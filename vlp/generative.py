"""Pure loss functions for token prediction (captioning), exact over the global batch under DDP.

Which target positions count is given by a mask built from the tokenizer's attention mask,
not by comparing ids with a pad id: a hard-coded ``ignore_index=0`` silently drops a real
token wherever the vocabulary gives id 0 to a word (open_clip's BPE gives it to "!"), and
an ``ignore_index=pad_id`` drops every end-of-text target when pad and eos share an id
(the CLIP tokenizer in transformers), so the model never learns to stop.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vlp.distributed import rank_and_world_size


def next_token_targets(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Targets for teacher forcing: position t predicts token t+1; padding positions do not count.

    Returns ``(labels, label_mask)``, both (B, L-1), to pair with the logits of positions 0..L-2.
    """
    return input_ids[:, 1:], attention_mask[:, 1:].bool()


def caption_loss(logits: Tensor, labels: Tensor, label_mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean token cross-entropy over the real target tokens of the global batch.

    ``logits`` (B, L, V), ``labels`` (B, L), ``label_mask`` (B, L) True where the target
    is a real token. With ``label_smoothing`` e the target distribution is
    (1 - e) one-hot + e uniform (Szegedy et al., 2016), as in ``F.cross_entropy``.
    Under DDP each rank returns W/N times its sum of token losses (N real tokens over W
    ranks), so the rank mean that DDP's gradient averaging takes is the global token mean
    even when ranks hold different numbers of tokens.
    """
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", label_smoothing=label_smoothing
    )
    mask = label_mask.reshape(-1).to(per_token.dtype)
    total = (per_token * mask).sum()
    count = mask.sum().detach()
    _, world_size = rank_and_world_size()
    if world_size > 1:
        count = count.clone()
        dist.all_reduce(count)
        return total * world_size / count.clamp(min=1)
    return total / count.clamp(min=1)


def token_accuracy(logits: Tensor, labels: Tensor, label_mask: Tensor) -> Tensor:
    """Fraction of real target tokens whose most likely prediction is the target (this rank)."""
    correct = (logits.argmax(dim=-1) == labels) & label_mask
    return correct.sum() / label_mask.sum().clamp(min=1)
