"""Pure loss functions shared by objectives. Inputs are per-rank; gathering happens here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.distributed import all_gather_with_grad, rank_and_world_size


def infonce_loss(image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP) over the global batch, computed for this rank's rows.

    Each rank scores its B local images against all W*B texts (and vice versa) and
    averages cross-entropy over its rows. The mean of this value over ranks is the
    single-process loss on the global batch, and with DDP's gradient averaging the
    gradients are exactly that loss's gradients (see ``all_gather_with_grad``).
    """
    images = F.normalize(image_embeddings, dim=-1)
    texts = F.normalize(text_embeddings, dim=-1)
    all_images = all_gather_with_grad(images)
    all_texts = all_gather_with_grad(texts)
    rank, _ = rank_and_world_size()
    labels = torch.arange(images.shape[0], device=images.device) + rank * images.shape[0]
    image_to_text = logit_scale * images @ all_texts.T
    text_to_image = logit_scale * texts @ all_images.T
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
