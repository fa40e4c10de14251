"""Pure loss functions shared by objectives. Inputs are per-rank; gathering happens here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.distributed import Gathered, all_gather_with_grad, batch_sizes, gather_normalized, rank_and_world_size
from vlp.precision import in_float32

Embeddings = Tensor | Gathered  # raw embeddings, or a step's normalised and gathered view (shared)


def gathered(*embeddings: Embeddings) -> list[Gathered]:
    """Each input as a ``Gathered`` view; raw tensors (same row counts) share one size exchange."""
    sizes = next((e.sizes for e in embeddings if isinstance(e, Gathered)), None)
    views = []
    for embedding in embeddings:
        if not isinstance(embedding, Gathered):
            sizes = sizes if sizes is not None else batch_sizes(embedding.shape[0], embedding.device)
            embedding = gather_normalized(embedding, sizes)
        views.append(embedding)
    return views


def weighted_mean(values: Tensor, sample_weight: Tensor | None, sizes: tuple[int, ...] | None = None) -> Tensor:
    """This rank's share of the global-batch mean of per-sample losses, each scaled by its weight.

    Weights multiply per-sample losses and the mean stays over the batch size (not the
    weight sum). Each rank returns W/N times its sum (N samples over W ranks), so the mean
    over ranks, which DDP's gradient averaging and logging take, is the global mean even
    when ranks hold different numbers of samples; with equal batches it is the local mean.
    """
    if sample_weight is not None:
        values = sample_weight.to(values.dtype) * values
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return values.mean()
    sizes = sizes if sizes is not None else batch_sizes(values.shape[0], values.device)
    return values.sum() * (world_size / sum(sizes))


@in_float32
def infonce_loss(
    image_embeddings: Embeddings, text_embeddings: Embeddings, logit_scale: Tensor, sample_weight: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE (CLIP) over the global batch, computed for this rank's rows.

    Each rank scores its B local images against all W*B texts (and vice versa) and
    averages cross-entropy over its rows. The mean of this value over ranks is the
    single-process loss on the global batch, and with DDP's gradient averaging the
    gradients are exactly that loss's gradients (see ``all_gather_with_grad``).
    With ``sample_weight`` (B,) each pair's two cross-entropies are scaled by its weight.
    """
    images, texts = gathered(image_embeddings, text_embeddings)
    labels = images.labels()
    image_to_text = logit_scale * images.local @ texts.all.T
    text_to_image = logit_scale * texts.local @ images.all.T
    per_pair = F.cross_entropy(image_to_text, labels, reduction="none") + F.cross_entropy(text_to_image, labels, reduction="none")
    return weighted_mean(per_pair / 2, sample_weight, images.sizes)


@in_float32
def sigmoid_loss(
    image_embeddings: Embeddings, text_embeddings: Embeddings, logit_scale: Tensor, logit_bias: Tensor,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """SigLIP (Zhai et al., 2023, Alg. 1): -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)).

    z_ij is +1 for matched pairs and -1 otherwise. This rank's images meet every rank's
    texts one rank-block (B_local x B_local) at a time, so the global B x B matrix never
    exists. Dividing this rank's sum by B_local makes the mean over ranks the loss over
    the global batch; gathered texts send their gradients home (``all_gather_with_grad``).
    ``sample_weight`` scales each image's row of terms.
    """
    images, texts = gathered(image_embeddings, text_embeddings)
    rank, _ = rank_and_world_size()
    rows = torch.zeros(images.local.shape[0], dtype=images.local.dtype, device=images.local.device)
    for block, block_texts in enumerate(texts.all.split(list(texts.sizes))):
        logits = logit_scale * images.local @ block_texts.T + logit_bias
        signs = -torch.ones_like(logits)
        if block == rank:
            signs.diagonal().fill_(1.0)
        rows = rows + F.logsigmoid(signs * logits).sum(dim=1)
    return -weighted_mean(rows, sample_weight, images.sizes)


def reweighted_infonce(logits: Tensor, labels: Tensor, log_weights: Tensor) -> Tensor:
    """Per-row -log(e^{l_ip} / sum_j w_ij e^{l_ij}), p the row's label; weights as logs.

    The shared form of hard-negative losses: w_ij = 1 everywhere is InfoNCE.
    """
    positives = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    return torch.logsumexp(logits + log_weights, dim=1) - positives


@in_float32
def hn_nce_loss(
    image_embeddings: Embeddings, text_embeddings: Embeddings, logit_scale: Tensor, alpha: float, beta: float,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """HN-NCE (Radenovic et al., 2023, DiHT, Eq. 3), both directions averaged.

    Row i: -log e^{s_ii} / (alpha e^{s_ii} + sum_{j!=i} w_ij e^{s_ij}), s = logit_scale x.y,
    w_ij = (B-1) e^{beta s_ij} / sum_{k!=i} e^{beta s_ik} over the global batch (weights
    carry gradients, as in the paper). alpha=1, beta=0 is InfoNCE; alpha=0 is DHN-NCE.
    """
    images, texts = gathered(image_embeddings, text_embeddings)
    labels = images.labels()

    def direction(queries: Tensor, keys: Tensor) -> Tensor:
        logits = logit_scale * queries @ keys.T
        positive = F.one_hot(labels, logits.shape[1]).bool()
        hardness = (beta * logits).masked_fill(positive, -math.inf)
        log_weights = math.log(logits.shape[1] - 1) + hardness - torch.logsumexp(hardness, dim=1, keepdim=True)
        log_weights = log_weights.masked_fill(positive, math.log(alpha) if alpha > 0 else -math.inf)
        return reweighted_infonce(logits, labels, log_weights)

    per_pair = direction(images.local, texts.all) + direction(texts.local, images.all)
    return weighted_mean(per_pair / 2, sample_weight, images.sizes)


@in_float32
def llave_loss(
    image_embeddings: Embeddings, text_embeddings: Embeddings, logit_scale: Tensor, alpha: float,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """LLaVE's hardness-weighted contrastive loss (Lan et al., 2025, Eq. 5-6), both directions.

    Row i: -log e^{s_ii} / (e^{s_ii} + sum_{j!=i} w_ij e^{s_ij}) with w_ij = e^{alpha sg(c_ij)},
    c the cosine similarity (not scaled by the temperature) and sg stop-gradient.
    """
    images, texts = gathered(image_embeddings, text_embeddings)
    labels = images.labels()

    def direction(queries: Tensor, keys: Tensor) -> Tensor:
        cosine = queries @ keys.T
        positive = F.one_hot(labels, cosine.shape[1]).bool()
        log_weights = (alpha * cosine.detach()).masked_fill(positive, 0.0)
        return reweighted_infonce(logit_scale * cosine, labels, log_weights)

    per_pair = direction(images.local, texts.all) + direction(texts.local, images.all)
    return weighted_mean(per_pair / 2, sample_weight, images.sizes)


@in_float32
def multi_positive_infonce(
    image_embeddings: Embeddings, caption_embeddings: Tensor, caption_valid: Tensor, logit_scale: Tensor,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """InfoNCE with every caption of an image a positive (SupCon's L_out, Khosla et al., 2020).

    Image i against all valid captions of the global batch: -1/|P(i)| sum_{p in P(i)}
    log softmax(s_i.)_p. Each caption against all images: cross-entropy to its image,
    averaged over the image's valid captions. The two directions are averaged per image.
    ``caption_embeddings`` is (B, K, D), ``caption_valid`` (B, K). With K=1 this is InfoNCE.
    """
    batch, captions_per_image = caption_valid.shape
    (image_view,) = gathered(image_embeddings)
    images = image_view.local
    captions = F.normalize(caption_embeddings, dim=-1).flatten(0, 1)
    valid = caption_valid.to(images.dtype)
    labels = image_view.labels()
    caption_sizes = batch_sizes(captions.shape[0], captions.device)
    all_valid = all_gather_with_grad(valid.flatten(), caption_sizes).bool()
    logits = (logit_scale * images @ all_gather_with_grad(captions, caption_sizes).T).masked_fill(~all_valid, -math.inf)
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    own = labels.unsqueeze(1) * captions_per_image + torch.arange(captions_per_image, device=images.device)
    own_log_probs = log_probs.gather(1, own).masked_fill(valid == 0, 0.0)
    image_to_text = -(own_log_probs.sum(1) / valid.sum(1))
    text_logits = logit_scale * captions @ image_view.all.T
    text_losses = F.cross_entropy(text_logits, labels.repeat_interleave(captions_per_image), reduction="none")
    text_to_image = (text_losses.view(batch, captions_per_image) * valid).sum(1) / valid.sum(1)
    return weighted_mean((image_to_text + text_to_image) / 2, sample_weight, image_view.sizes)


def _gather_tokens(tokens: Tensor, mask: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Gather (B, N, D) tokens and (B, N) masks from all ranks, padding N to the longest rank."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tokens, mask
    length = torch.tensor([tokens.shape[1]], device=tokens.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    torch.distributed.all_gather(lengths, length)
    pad = int(max(lengths).item()) - tokens.shape[1]
    tokens = F.pad(tokens, (0, 0, 0, pad))
    mask = F.pad(mask.to(tokens.dtype), (0, pad))
    return all_gather_with_grad(tokens, sizes), all_gather_with_grad(mask, sizes).bool()


def token_wise_similarity(queries: Tensor, query_mask: Tensor, keys: Tensor, key_mask: Tensor, chunk_size: int) -> Tensor:
    """FILIP's late interaction (Yao et al., 2022, Eq. 4-5): (Bq, Bk) similarities.

    s_ab = mean over valid tokens n of sample a of max over valid tokens m of sample b of
    q_an . k_bm. Computed on chunk_size x chunk_size blocks of sample pairs, so the
    Bq x Bk x Nq x Nk tensor never exists (max's backward keeps only indices). A sample
    with no valid token scores 0 against everything (the loss leaves such pairs out).
    """
    rows = []
    key_blocks = list(zip(keys.split(chunk_size), key_mask.split(chunk_size)))
    for query_block, query_valid in zip(queries.split(chunk_size), query_mask.split(chunk_size)):
        weights = query_valid.to(queries.dtype)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        row = []
        for key_block, key_valid in key_blocks:
            tokens = torch.einsum("and,bmd->abnm", query_block, key_block)
            best = tokens.masked_fill(~key_valid[None, :, None, :], -math.inf).amax(dim=3)
            best = best.masked_fill(~key_valid.any(1)[None, :, None], 0.0)  # a key with no valid token scores 0, not -inf
            row.append(torch.einsum("abn,an->ab", best, weights))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows)


@in_float32
def filip_loss(
    image_tokens: Tensor, image_mask: Tensor, text_tokens: Tensor, text_mask: Tensor, logit_scale: Tensor,
    chunk_size: int = 64, sample_weight: Tensor | None = None, sizes: tuple[int, ...] | None = None,
) -> Tensor:
    """FILIP (Yao et al., 2022, Eq. 3-5): InfoNCE on token-wise similarities, both directions.

    Image-to-text uses s^I (mean over patches of the max over words), text-to-image uses
    s^T (mean over words of the max over patches). Tokens are L2-normalised per token;
    masks drop padding (and, as the FILIP objective chooses, special tokens). Each rank
    scores its images against every rank's texts and its texts against every rank's images.
    A caption (or image) with no valid token has no token-wise similarity: its pair adds
    0 to the batch mean and it is no negative for other samples (the loss stays finite).
    ``sizes`` are the ranks' batch sizes when the step already exchanged them.
    """
    return _token_infonce(image_tokens, image_mask, text_tokens, text_mask, logit_scale, chunk_size, sample_weight, False, sizes)


def _token_infonce(
    image_tokens: Tensor, image_mask: Tensor, text_tokens: Tensor, text_mask: Tensor, logit_scale: Tensor,
    chunk_size: int, sample_weight: Tensor | None, words_both_ways: bool, sizes: tuple[int, ...] | None = None,
) -> Tensor:
    """Symmetric InfoNCE on token-wise similarities over the global batch.

    Text-to-image scores by words (each word's best patch); image-to-text scores by patches
    (FILIP's s^I) or, with ``words_both_ways``, by the same word-based score transposed.
    """
    image_tokens = F.normalize(image_tokens, dim=-1)
    text_tokens = F.normalize(text_tokens, dim=-1)
    sizes = tuple(sizes) if sizes is not None else tuple(batch_sizes(image_tokens.shape[0], image_tokens.device))
    all_texts, all_text_mask = _gather_tokens(text_tokens, text_mask, sizes)
    all_images, all_image_mask = _gather_tokens(image_tokens, image_mask, sizes)
    rank, _ = rank_and_world_size()
    labels = torch.arange(image_tokens.shape[0], device=image_tokens.device) + sum(sizes[:rank])
    if words_both_ways:
        image_to_text = token_wise_similarity(all_texts, all_text_mask, image_tokens, image_mask, chunk_size).T
    else:
        image_to_text = token_wise_similarity(image_tokens, image_mask, all_texts, all_text_mask, chunk_size)
    text_to_image = token_wise_similarity(text_tokens, text_mask, all_images, all_image_mask, chunk_size)
    own = F.one_hot(labels, image_to_text.shape[1]).bool()
    no_negative_texts = ~all_text_mask.any(1)[None, :] & ~own  # samples without tokens are no negatives
    no_negative_images = ~all_image_mask.any(1)[None, :] & ~own
    per_pair = F.cross_entropy((logit_scale * image_to_text).masked_fill(no_negative_texts, -math.inf), labels, reduction="none")
    per_pair = per_pair + F.cross_entropy((logit_scale * text_to_image).masked_fill(no_negative_images, -math.inf), labels, reduction="none")
    has_tokens = text_mask.any(1) & image_mask.any(1)
    return weighted_mean(torch.where(has_tokens, per_pair / 2, torch.zeros_like(per_pair)), sample_weight, sizes)


@in_float32
def intra_modality_separation_loss(
    embeddings: Embeddings, paired_embeddings: Embeddings, semantic_embeddings: Embeddings, logit_scale: Tensor,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """AlignCLIP's IMSep (Eslami & de Melo, 2025, Sec. 4.2): push same-modality embeddings apart.

    Row i is a softmax over the global batch of logits l_ij = scale * (1 - c_ij) x_i.x_j for
    j != i, where c_ij is the cosine of the pairs' semantic (text) embeddings, so negatives
    with similar meaning are pushed less; the positive l_ii = scale * x_i.y_i is the
    cross-modal similarity of the pair. ``semantic_embeddings`` carry no gradient.
    """
    own, pair, meaning = gathered(embeddings, paired_embeddings, semantic_embeddings)
    x, paired = own.local, pair.local
    labels = own.labels()
    rescaled = (x @ own.all.T) * (1 - meaning.local.detach() @ meaning.all.detach().T)
    positive = F.one_hot(labels, rescaled.shape[1]).bool()
    logits = logit_scale * torch.where(positive, (x * paired).sum(1, keepdim=True), rescaled)
    return weighted_mean(F.cross_entropy(logits, labels, reduction="none"), sample_weight, own.sizes)


@in_float32
def alignclip_loss(
    image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor, alpha: float = 1.0, beta: float = 0.5,
    separate_image: bool = True, separate_text: bool = True, sample_weight: Tensor | None = None,
) -> Tensor:
    """AlignCLIP's whole loss (Eslami & de Melo, 2025): alpha * (CE image->text + CE text->image), summed as in the
    official code, plus beta * (IMSep of images + IMSep of texts), every term at the one ``logit_scale``.

    The texts' own embeddings (detached) stand in for the paper's frozen sentence encoder.
    """
    loss = alpha * 2 * infonce_loss(image_embeddings, text_embeddings, logit_scale, sample_weight)
    if separate_image:
        loss = loss + beta * intra_modality_separation_loss(image_embeddings, text_embeddings, text_embeddings, logit_scale, sample_weight)
    if separate_text:
        loss = loss + beta * intra_modality_separation_loss(text_embeddings, image_embeddings, text_embeddings, logit_scale, sample_weight)
    return loss


@in_float32
def soft_label_infonce(
    image_embeddings: Embeddings, text_embeddings: Embeddings, logit_scale: Tensor, negative_mass: float,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """InfoNCE against softened targets (LightCLIP, Nie et al., 2023, Sec. 3.2), both directions.

    Row i of the global batch of N: cross-entropy -sum_j y_ij log softmax(s_i.)_j with
    y_ii = 1 - negative_mass and y_ij = negative_mass / (N - 1) for each negative j.
    negative_mass = 0 is InfoNCE; the objective grows it over training.
    """
    images, texts = gathered(image_embeddings, text_embeddings)
    labels = images.labels()

    def direction(queries: Tensor, keys: Tensor) -> Tensor:
        log_probs = torch.log_softmax(logit_scale * queries @ keys.T, dim=1)
        negative = negative_mass / (keys.shape[0] - 1)
        targets = torch.full_like(log_probs, negative).scatter_(1, labels.unsqueeze(1), 1.0 - negative_mass)
        return -(targets * log_probs).sum(1)

    per_pair = direction(images.local, texts.all) + direction(texts.local, images.all)
    return weighted_mean(per_pair / 2, sample_weight, images.sizes)


@in_float32
def relaxed_matching_loss(
    image_tokens: Tensor, image_mask: Tensor, text_tokens: Tensor, text_mask: Tensor, logit_scale: Tensor,
    chunk_size: int = 64, sample_weight: Tensor | None = None, sizes: tuple[int, ...] | None = None,
) -> Tensor:
    """LightCLIP's token-level alignment (Nie et al., 2023, Sec. 3.3), both directions.

    A bipartite matching of words to patches, relaxed so that every word takes its most
    similar patch (several words may share one): s_ij = mean over valid words w of text j
    of max over valid patches p of image i of w.p (per-token L2-normalised). InfoNCE on s
    in both directions, so image-to-text and text-to-image rank the same word-matched score.
    """
    return _token_infonce(image_tokens, image_mask, text_tokens, text_mask, logit_scale, chunk_size, sample_weight, True, sizes)


@in_float32
def consistency_gates(
    image_embeddings: Tensor, raw_embeddings: Tensor, synthetic_embeddings: Tensor, running_means: Tensor,
    momentum: float, gamma: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ALIP's gates (Yang et al., 2023, Sec. 3.2-3.3), without gradients.

    With cosines s^T_i = t_i.c_i (raw text vs synthetic caption), s^I_i = x_i.t_i and
    s^C_i = x_i.c_i, each global-batch mean m updates a running mean
    a <- momentum * a + (1 - momentum) * m, ordered (T, I, C) in ``running_means``.
    Language consistency gate: W_s = min(exp(gamma (s^T - a^T)), 1). Description
    consistency gates, only for samples whose raw text and caption disagree (s^T < a^T,
    else 1): W_t = exp(gamma (s^I - a^I)), W_c = exp(gamma (s^C - a^C)).
    Returns this rank's (W_s, W_t, W_c) and the updated running means.
    """
    with torch.no_grad():
        x = F.normalize(image_embeddings.detach(), dim=-1)
        t = F.normalize(raw_embeddings.detach(), dim=-1)
        c = F.normalize(synthetic_embeddings.detach(), dim=-1)
        similarities = torch.stack([(t * c).sum(1), (x * t).sum(1), (x * c).sum(1)], dim=1)
        means = all_gather_with_grad(similarities).mean(0)
        running_means = momentum * running_means + (1 - momentum) * means
        gates = torch.exp(gamma * (similarities - running_means))
        inconsistent = gates[:, 0] < 1
        ones = torch.ones_like(gates[:, 0])
        sample_gate = torch.where(inconsistent, gates[:, 0], ones)
        raw_gate = torch.where(inconsistent, gates[:, 1], ones)
        synthetic_gate = torch.where(inconsistent, gates[:, 2], ones)
    return sample_gate, raw_gate, synthetic_gate, running_means
