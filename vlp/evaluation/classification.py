"""Classification metrics shared by zero-shot, kNN and linear-probe evaluations."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1).sum().item() / labels.shape[0]


def mean_per_class_recall(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Recall of each class present in ``labels``, averaged over those classes (balanced accuracy).

    On imbalanced sets top-1 rewards the majority classes; this weighs every class equally.
    Classes absent from ``labels`` are left out, as scikit-learn's ``balanced_accuracy_score`` does.
    """
    labels = labels.to(predictions.device)
    present = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes)
    seen = present > 0
    return (correct[seen].double() / present[seen].double()).mean().item()


def classification_metrics(logits: Tensor, labels: Tensor, prefix: str, ks: list[int]) -> dict[str, float]:
    """Top-k for each k below the number of classes (and top-1), plus mean per-class recall."""
    num_classes = logits.shape[1]
    labels = torch.as_tensor(labels, device=logits.device)
    results = {f"{prefix}/top{k}": topk_accuracy(logits, labels, k) for k in ks if k == 1 or k < num_classes}
    results[f"{prefix}/mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), labels, num_classes)
    return results
