"""Memory-bounded exact contrastive losses: the B x N logits exist one tile at a time.

The dense losses keep the whole B x N logit matrix (and its softmax) for the backward
pass, so memory grows with the square of the global batch (~17 GB at 65,536). Here the
forward reduces each row over column tiles (log-sum-exp for InfoNCE, sum of log-sigmoids
for SigLIP) and the backward recomputes every tile from the saved features, as in Inf-CL
(Cheng et al., 2024). Peak extra memory is a few tile x tile blocks; the price is one
more matrix product per tile in the backward. Values and gradients (features, logit
scale, bias, sample weights) equal ``vlp.functional.infonce_loss`` / ``sigmoid_loss``.
"""

from __future__ import annotations

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


class _RowLogSumExp(torch.autograd.Function):
    """lse_i = log sum_j exp(scale * q_i . k_j), one (tile x tile) block of logits at a time.

    Backward: with p_ij = exp(scale q_i.k_j - lse_i) and upstream g_i, dq_i = scale sum_j
    g_i p_ij k_j, dk_j = scale sum_i g_i p_ij q_i, dscale = sum_ij g_i p_ij q_i.k_j.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, scale: Tensor, tile_size: int) -> Tensor:
        dtype = _compute_dtype(queries)
        q, k, s = queries.to(dtype), keys.to(dtype), scale.to(dtype)
        lse = torch.empty(q.shape[0], dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], tile_size):
                parts = [torch.logsumexp(s * q[rows] @ k[cols].T, dim=1) for cols in _tiles(k.shape[0], tile_size)]
                lse[rows] = torch.logsumexp(torch.stack(parts, dim=1), dim=1)
        ctx.save_for_backward(queries, keys, scale, lse)
        ctx.tile_size = tile_size
        return lse

    @staticmethod
    def backward(ctx, grad_lse: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        queries, keys, scale, lse = ctx.saved_tensors
        dtype = lse.dtype
        q, k, s, g = queries.to(dtype), keys.to(dtype), scale.to(dtype), grad_lse.to(dtype)
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        grad_s = torch.zeros((), dtype=dtype, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            for rows in _tiles(q.shape[0], ctx.tile_size):
                for cols in _tiles(k.shape[0], ctx.tile_size):
                    dots = q[rows] @ k[cols].T
                    weights = torch.exp(s * dots - lse[rows, None]).mul_(g[rows, None])  # g_i p_ij
                    grad_q[rows] += weights @ k[cols]
                    grad_k[cols] += weights.T @ q[rows]
                    grad_s += (weights * dots).sum()
        return (s * grad_q).to(queries.dtype), (s * grad_k).to(keys.dtype), grad_s.to(scale.dtype), None


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
        return (s * grad_q).to(queries.dtype), (s * grad_k).to(keys.dtype), grad_s.to(scale.dtype), grad_b.to(bias.dtype), None, None


def _signs(rows: slice, cols: slice, offset: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """z for one tile: -1 everywhere, +1 where column index = row index + offset (the matched pair)."""
    row_index = torch.arange(rows.start, rows.stop, device=device)[:, None] + offset
    col_index = torch.arange(cols.start, cols.stop, device=device)[None, :]
    return torch.where(row_index == col_index, 1.0, -1.0).to(dtype)


def row_logsumexp(queries: Tensor, keys: Tensor, scale: Tensor, tile_size: int) -> Tensor:
    """log sum_j exp(scale q_i.k_j) for every row i, without the (Q, K) matrix."""
    return _RowLogSumExp.apply(queries, keys, scale, tile_size)


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

    Each rank's rows meet every rank's (gathered) columns, as in the dense version.
    """
    images, texts = _unit_rows(image_embeddings), _unit_rows(text_embeddings)
    image_to_text = row_logsumexp(images, all_gather_with_grad(texts), logit_scale, tile_size)
    text_to_image = row_logsumexp(texts, all_gather_with_grad(images), logit_scale, tile_size)
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
