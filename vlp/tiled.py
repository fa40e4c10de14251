"""Memory-bounded exact contrastive losses: the B x N logits exist one tile at a time.

The dense losses keep the whole B x N logit matrix (and its softmax) for the backward
pass, so memory grows with the square of the global batch (~17 GB at 65,536). Here the
forward reduces each row over column tiles (log-sum-exp for InfoNCE, sum of log-sigmoids
for SigLIP) and the backward recomputes every tile from the saved features, as in Inf-CL
(Cheng et al., 2024). Peak extra memory is a few tile x tile blocks; the price is one
more matrix product per tile in the backward (InfoNCE wins it back: one block of logits
serves both directions). Values and gradients (features, logit scale, bias, sample
weights) equal ``vlp.functional.infonce_loss`` / ``sigmoid_loss``.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.distributed import all_gather_with_grad, batch_offset
from vlp.functional import weighted_mean
from vlp.registry import ConfigError


def check_tile_size(tile_size: int | None) -> int | None:
    """An objective's ``tile_size`` YAML key: None (dense) or a positive number of rows per tile."""
    if tile_size is not None and tile_size < 1:
        raise ConfigError(f"tile_size must be a positive number of rows (e.g. 4096) or null for the dense loss, got {tile_size}.")
    return tile_size


def _tiles(size: int, tile_size: int) -> Iterator[slice]:
    for start in range(0, size, tile_size):
        yield slice(start, min(start + tile_size, size))


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """Tiles run in float32 at least, whatever the autocast or feature dtype (float64 stays)."""
    return torch.promote_types(tensor.dtype, torch.float32)


class _BothWayLogSumExp(torch.autograd.Function):
    """Row and column log-sum-exps of S = scale * Q K^T, one (tile x tile) block of S at a time.

    One block serves both directions of InfoNCE: its rows reduce into image-to-text, its
    columns into text-to-image. Backward: with p = exp(S - row_lse) (rows sum to 1),
    p' = exp(S - col_lse) (columns sum to 1) and upstream g (rows), h (columns), the
    gradient of S is W = g_i p_ij + h_j p'_ij, so dQ = scale W K, dK = scale W^T Q and
    dscale = sum W_ij q_i.k_j.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, scale: Tensor, tile_size: int) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(queries)
        q, k, s = queries.to(dtype), keys.to(dtype), scale.to(dtype)
        row_lse = torch.full((q.shape[0],), -math.inf, dtype=dtype, device=q.device)
        col_lse = torch.full((k.shape[0],), -math.inf, dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], tile_size):
                for cols in _tiles(k.shape[0], tile_size):
                    logits = (s * q[rows]) @ k[cols].T
                    row_lse[rows] = torch.logaddexp(row_lse[rows], torch.logsumexp(logits, dim=1))
                    col_lse[cols] = torch.logaddexp(col_lse[cols], torch.logsumexp(logits, dim=0))
        ctx.save_for_backward(queries, keys, scale, row_lse, col_lse)
        ctx.tile_size = tile_size
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, grad_rows: Tensor, grad_cols: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        queries, keys, scale, row_lse, col_lse = ctx.saved_tensors
        dtype = row_lse.dtype
        q, k, s = queries.to(dtype), keys.to(dtype), scale.to(dtype)
        g = torch.zeros_like(row_lse) if grad_rows is None else grad_rows.to(dtype)
        h = torch.zeros_like(col_lse) if grad_cols is None else grad_cols.to(dtype)
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        grad_s = torch.zeros((), dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], ctx.tile_size):
                for cols in _tiles(k.shape[0], ctx.tile_size):
                    dots = q[rows] @ k[cols].T
                    logits = s * dots
                    weights = torch.exp(logits - row_lse[rows, None]).mul_(g[rows, None])
                    weights += torch.exp(logits.sub_(col_lse[None, cols])).mul_(h[None, cols])
                    grad_q[rows] += weights @ k[cols]
                    grad_k[cols] += weights.T @ q[rows]
                    grad_s += (weights * dots).sum()
        return grad_q.mul_(s).to(queries.dtype), grad_k.mul_(s).to(keys.dtype), grad_s.to(scale.dtype), None


class _RowLogSigmoidSum(torch.autograd.Function):
    """r_i = sum_j log sigmoid(z_ij (scale q_i.k_j + bias)), z_ij = +1 iff j = i + offset, tile by tile.

    Backward: with upstream g_i, d r_i / d l_ij = z_ij sigmoid(-z_ij l_ij) =: w_ij / g_i, so
    dq_i = scale sum_j w_ij k_j, dk_j = scale sum_i w_ij q_i, dscale = sum w_ij q_i.k_j, dbias = sum w_ij.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, scale: Tensor, bias: Tensor, offset: int, tile_size: int) -> Tensor:
        dtype = _compute_dtype(queries)
        q, k, s, b = queries.to(dtype), keys.to(dtype), scale.to(dtype), bias.to(dtype)
        rows_sum = torch.zeros(q.shape[0], dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], tile_size):
                for cols in _tiles(k.shape[0], tile_size):
                    signs = _signs(rows, cols, offset, dtype, q.device)
                    rows_sum[rows] += F.logsigmoid(signs * (s * q[rows] @ k[cols].T + b)).sum(dim=1)
        ctx.save_for_backward(queries, keys, scale, bias)
        ctx.offset, ctx.tile_size = offset, tile_size
        return rows_sum

    @staticmethod
    def backward(ctx, grad_rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
        queries, keys, scale, bias = ctx.saved_tensors
        dtype = _compute_dtype(queries)
        q, k, s, b, g = queries.to(dtype), keys.to(dtype), scale.to(dtype), bias.to(dtype), grad_rows.to(dtype)
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        grad_s = torch.zeros((), dtype=dtype, device=q.device)
        grad_b = torch.zeros((), dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], ctx.tile_size):
                for cols in _tiles(k.shape[0], ctx.tile_size):
                    signs = _signs(rows, cols, ctx.offset, dtype, q.device)
                    dots = q[rows] @ k[cols].T
                    weights = torch.sigmoid(-signs * (s * dots + b)).mul_(signs).mul_(g[rows, None])
                    grad_q[rows] += weights @ k[cols]
                    grad_k[cols] += weights.T @ q[rows]
                    grad_s += (weights * dots).sum()
                    grad_b += weights.sum()
        return grad_q.mul_(s).to(queries.dtype), grad_k.mul_(s).to(keys.dtype), grad_s.to(scale.dtype), grad_b.to(bias.dtype), None, None


def _signs(rows: slice, cols: slice, offset: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """z for one tile: -1 everywhere, +1 where column index = row index + offset (the matched pair)."""
    row_index = torch.arange(rows.start, rows.stop, device=device)[:, None] + offset
    col_index = torch.arange(cols.start, cols.stop, device=device)[None, :]
    return torch.where(row_index == col_index, 1.0, -1.0).to(dtype)


def both_way_logsumexp(queries: Tensor, keys: Tensor, scale: Tensor, tile_size: int) -> tuple[Tensor, Tensor]:
    """log sum_j exp(scale q_i.k_j) for every row i and log sum_i exp(scale q_i.k_j) for every
    column j, without the (Q, K) matrix."""
    return _BothWayLogSumExp.apply(queries, keys, scale, tile_size)


def row_logsigmoid_sum(queries: Tensor, keys: Tensor, scale: Tensor, bias: Tensor, offset: int, tile_size: int) -> Tensor:
    """sum_j log sigmoid(z_ij (scale q_i.k_j + bias)) for every row i, positives at j = i + offset."""
    return _RowLogSigmoidSum.apply(queries, keys, scale, bias, offset, tile_size)


def _unit_rows(embeddings: Tensor) -> Tensor:
    """L2-normalised rows in the compute dtype (bf16 features are upcast; gradients flow back)."""
    return F.normalize(embeddings.to(_compute_dtype(embeddings)), dim=-1)


def tiled_infonce_loss(
    image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor, tile_size: int = 4096,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """``infonce_loss`` with tiles: per pair, (lse_i2t + lse_t2i) / 2 - scale x_i.y_i, global batch.

    Each rank scores its images against every rank's texts once: rows give its images'
    image-to-text log-sum-exps, columns give every text's partial text-to-image
    log-sum-exp over this rank's images; ranks combine the partials (a gather of N
    numbers each, with gradients) and keep their own texts'. So a rank computes
    B_local x N logits, half of what scoring each direction separately would.
    """
    images, texts = _unit_rows(image_embeddings), _unit_rows(text_embeddings)
    image_to_text, partial_text_to_image = both_way_logsumexp(images, all_gather_with_grad(texts), logit_scale, tile_size)
    offset = batch_offset(texts.shape[0], texts.device)
    every_rank = all_gather_with_grad(partial_text_to_image[None])  # (world size, N)
    text_to_image = torch.logsumexp(every_rank, dim=0)[offset : offset + texts.shape[0]]
    positives = logit_scale * (images * texts).sum(dim=1)
    per_pair = (image_to_text + text_to_image) / 2 - positives
    return weighted_mean(per_pair, sample_weight)


def tiled_sigmoid_loss(
    image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor, logit_bias: Tensor, tile_size: int = 4096,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """``sigmoid_loss`` with tiles: this rank's images against every rank's texts, one tile at a time."""
    images, texts = _unit_rows(image_embeddings), _unit_rows(text_embeddings)
    offset = batch_offset(images.shape[0], images.device)
    rows = row_logsigmoid_sum(images, all_gather_with_grad(texts), logit_scale, logit_bias, offset, tile_size)
    return -weighted_mean(rows, sample_weight)
