"""Image-text retrieval recall@K with the standard (COCO/Flickr) definition.

A query counts as a hit at K when any of its relevant items is among the K
highest-scoring gallery items. (torchmetrics' ``RetrievalRecall`` instead measures the
fraction of relevant items retrieved, a different number when an image has several
captions.) Scores are computed in blocks with a running top-K, so a 100k x 500k
retrieval never holds the full score matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, RetrievalSet, embed_images, embed_texts, is_main_rank
from vlp.registry import EVALUATIONS


def chunked_topk(queries: Tensor, gallery: Tensor, k: int, chunk_size: int = 4096) -> Tensor:
    """Indices (Q, k) of the k gallery items with the highest dot product, by blocks."""
    k = min(k, gallery.shape[0])
    results = []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        best_scores = torch.full((block.shape[0], 0), float("-inf"), device=block.device)
        best_index = torch.zeros((block.shape[0], 0), dtype=torch.long, device=block.device)
        for g_start in range(0, gallery.shape[0], chunk_size):
            scores = block @ gallery[g_start : g_start + chunk_size].T
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            best_scores = torch.cat([best_scores, top.values], dim=1)
            best_index = torch.cat([best_index, top.indices + g_start], dim=1)
            keep = best_scores.topk(min(k, best_scores.shape[1]), dim=1)
            best_scores = keep.values
            best_index = best_index.gather(1, keep.indices)
        results.append(best_index)
    return torch.cat(results)


def recall_at_k(retrieved: Tensor, relevant_pairs: Tensor, gallery_size: int, ks: list[int]) -> dict[int, float]:
    """Fraction of queries with a relevant item in their top K.

    ``retrieved`` is (Q, K_max) gallery indices ranked best first; ``relevant_pairs`` is
    (P, 2) rows of (query, gallery item) that are relevant.
    """
    codes = relevant_pairs[:, 0] * gallery_size + relevant_pairs[:, 1]
    query = torch.arange(retrieved.shape[0], device=retrieved.device).unsqueeze(1)
    hits = torch.isin(query * gallery_size + retrieved, codes.to(retrieved.device))
    return {k: hits[:, :k].any(dim=1).sum().item() / retrieved.shape[0] for k in ks}


@EVALUATIONS.register("retrieval")
class Retrieval(Evaluation):
    """Image-to-text and text-to-image recall@K for every retrieval set of the datamodule."""

    def __init__(self, ks: list[int] = (1, 5, 10), batch_size: int = 256, chunk_size: int = 4096) -> None:
        self.ks = list(ks)
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    def evaluate_set(self, encoder, retrieval_set: RetrievalSet) -> dict[str, float]:
        images = embed_images(encoder, retrieval_set.images, self.batch_size)
        texts = embed_texts(encoder, retrieval_set.texts, self.batch_size).to(images.device)
        if not is_main_rank():
            return {}
        pairs = torch.tensor(
            [(i, t) for i, text_ids in enumerate(retrieval_set.image_to_texts) for t in text_ids], dtype=torch.long
        )
        k_max = max(self.ks)
        image_to_text = recall_at_k(chunked_topk(images, texts, k_max, self.chunk_size), pairs, len(texts), self.ks)
        text_to_image = recall_at_k(chunked_topk(texts, images, k_max, self.chunk_size), pairs.flip(1), len(images), self.ks)
        name = retrieval_set.name
        results = {f"retrieval/{name}/image_to_text_R@{k}": v for k, v in image_to_text.items()}
        results.update({f"retrieval/{name}/text_to_image_R@{k}": v for k, v in text_to_image.items()})
        return results

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for retrieval_set in source.retrieval_sets():
            results.update(self.evaluate_set(encoder, retrieval_set))
        return results
