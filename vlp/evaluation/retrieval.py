"""Image-text retrieval recall@K, by the standard per-instance protocol or the merged variant.

Per-instance (COCO/Flickr, as CLIP, open_clip and clip_benchmark score it): every caption
instance is its own text, correct only for the image it was written for. Image→text: a
hit at K when any of the image's own caption instances is among the K best texts.
Text→image: each caption instance is a query whose one correct answer is its image.
Identical captions of different images stay separate instances, so on sets with repeated
captions (UCM, Sydney, RSICD) the numbers are comparable with published ones.

Merged (an explicit option): identical caption strings become one text that is correct
for every image it describes, and text→image queries are the unique texts.

Ties (identical captions have identical embeddings) go to the lower gallery index, as a
stable sort ranks them, so results are deterministic. (torchmetrics' ``RetrievalRecall``
measures the fraction of relevant items retrieved, a different number.) Scores are
computed in blocks with a running top-K, so a 100k x 500k retrieval never holds the full
score matrix.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, RetrievalSet, embed_images, embed_texts, is_main_rank, progress
from vlp.registry import EVALUATIONS, ConfigError

Protocol = Literal["per_instance", "merged"]


def _stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k by descending score; among equal scores the earlier column comes first."""
    values, indices = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def chunked_topk(queries: Tensor, gallery: Tensor, k: int, chunk_size: int = 4096) -> Tensor:
    """Indices (Q, k) of the k gallery items with the highest dot product, by blocks; ties to the lower index."""
    k = min(k, gallery.shape[0])
    results = []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        best_scores = torch.full((block.shape[0], 0), float("-inf"), device=block.device)
        best_index = torch.zeros((block.shape[0], 0), dtype=torch.long, device=block.device)
        for g_start in range(0, gallery.shape[0], chunk_size):
            values, indices = _stable_topk(block @ gallery[g_start : g_start + chunk_size].T, k)
            # Earlier chunks come first in the concatenation, so the stable sort keeps lower indices ahead on ties.
            best_scores, keep = _stable_topk(torch.cat([best_scores, values], dim=1), k)
            best_index = torch.cat([best_index, indices + g_start], dim=1).gather(1, keep)
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


def caption_instances(retrieval_set: RetrievalSet) -> tuple[Tensor, Tensor]:
    """(image, text) index of every caption instance, in image order: one row per caption of each image."""
    rows = [(i, t) for i, text_ids in enumerate(retrieval_set.image_to_texts) for t in text_ids]
    pairs = torch.tensor(rows, dtype=torch.long).view(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def merge_identical(texts: list[str]) -> tuple[Tensor, Tensor]:
    """For each text, the index of its string among the unique strings; and the row of each unique string's first use."""
    first: dict[str, int] = {}
    merged_of = torch.tensor([first.setdefault(text, len(first)) for text in texts], dtype=torch.long)
    rows = {}
    for row, text in enumerate(texts):
        rows.setdefault(text, row)
    return merged_of, torch.tensor(list(rows.values()), dtype=torch.long)


@EVALUATIONS.register("retrieval")
class Retrieval(Evaluation):
    """Image-to-text and text-to-image recall@K for every retrieval set of the datamodule.

    Metrics are named ``retrieval/<set>/<protocol>/<direction>_R@<k>``; ``protocols``
    lists which to report (``per_instance``, the standard, and/or ``merged``).
    """

    def __init__(
        self, ks: list[int] = (1, 5, 10), batch_size: int = 256, chunk_size: int = 4096, protocols: list[Protocol] = ("per_instance",)
    ) -> None:
        unknown = [p for p in protocols if p not in ("per_instance", "merged")]
        if unknown or not protocols:
            raise ConfigError(f"Retrieval protocols {list(protocols)} are not known; use per_instance and/or merged.")
        self.ks = list(ks)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.protocols = list(protocols)

    def scores(self, images: Tensor, texts: Tensor, retrieval_set: RetrievalSet, protocol: Protocol) -> dict[str, float]:
        """Recall@K for embedded images and unique texts under one protocol."""
        image_of, text_of = caption_instances(retrieval_set)
        k_max = max(self.ks)
        if protocol == "per_instance":
            gallery = texts[text_of.to(texts.device)]  # one row per caption instance
            instance = torch.arange(len(image_of))
            to_text = torch.stack([image_of, instance], dim=1)
            to_image = torch.stack([instance, image_of], dim=1)
        else:
            merged_of, unique_rows = merge_identical(retrieval_set.texts)
            gallery = texts[unique_rows.to(texts.device)]
            to_text = torch.stack([image_of, merged_of[text_of]], dim=1)
            to_image = to_text.flip(1)
        image_to_text = recall_at_k(chunked_topk(images, gallery, k_max, self.chunk_size), to_text, len(gallery), self.ks)
        text_to_image = recall_at_k(chunked_topk(gallery, images, k_max, self.chunk_size), to_image, len(images), self.ks)
        prefix = f"retrieval/{retrieval_set.name}/{protocol}"
        results = {f"{prefix}/image_to_text_R@{k}": v for k, v in image_to_text.items()}
        results.update({f"{prefix}/text_to_image_R@{k}": v for k, v in text_to_image.items()})
        return results

    def evaluate_set(self, encoder, retrieval_set: RetrievalSet) -> dict[str, float]:
        images = embed_images(encoder, retrieval_set.images, self.batch_size)
        texts = embed_texts(encoder, retrieval_set.texts, self.batch_size).to(images.device)
        if not is_main_rank():
            return {}
        results: dict[str, float] = {}
        for protocol in self.protocols:
            results.update(self.scores(images, texts, retrieval_set, protocol))
        return results

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for retrieval_set in progress(source.retrieval_sets(), "retrieval"):
            results.update(self.evaluate_set(encoder, retrieval_set))
        return results
