"""k-nearest-neighbour classification on frozen image embeddings (DINO's weighted kNN; RemoteCLIP uses it too).

Each test image votes with its k most similar training images (cosine similarity of
normalised embeddings); neighbour j adds exp(s_j / T) to its class, and the class with
the largest total wins. DINO's defaults: k = 20, T = 0.07. Reported per linear-probe set
(train images as the memory bank, test images as queries), with mean per-class recall.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, embed_images, progress
from vlp.evaluation.classification import classification_metrics
from vlp.evaluation.retrieval import chunked_topk
from vlp.registry import EVALUATIONS


def knn_votes(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int, temperature: float, chunk_size: int = 4096) -> Tensor:
    """(N_test, classes) summed vote weights exp(similarity / T) of each test image's k nearest training images."""
    train_y = torch.as_tensor(train_y, device=train_x.device)
    neighbours = chunked_topk(test_x, train_x, k, chunk_size)
    similarity = (test_x.unsqueeze(1) * train_x[neighbours]).sum(dim=-1)
    votes = torch.zeros(test_x.shape[0], num_classes, dtype=similarity.dtype, device=similarity.device)
    return votes.scatter_add_(1, train_y[neighbours], (similarity / temperature).exp())


@EVALUATIONS.register("knn")
class KNNClassification(Evaluation):
    """Weighted kNN top-1 (and top-5 when there are more than 5 classes) and mean per-class recall, per set."""

    def __init__(self, k: int = 20, temperature: float = 0.07, ks: list[int] = (1, 5), batch_size: int = 256, chunk_size: int = 4096) -> None:
        self.k = k
        self.temperature = temperature
        self.ks = list(ks)
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for probe in progress(source.linear_probe_sets(), "kNN"):
            train_x = embed_images(encoder, probe.train_images, self.batch_size)
            test_x = embed_images(encoder, probe.test_images, self.batch_size).to(train_x.device)
            votes = knn_votes(train_x, probe.train_labels, test_x, len(probe.class_names), self.k, self.temperature, self.chunk_size)
            results.update(classification_metrics(votes, probe.test_labels, f"knn/{probe.name}", self.ks))
        return results
