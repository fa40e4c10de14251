"""Zero-shot classification with prompt ensembles (CLIP, section 3.1.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.evaluation.base import Evaluation, EvaluationSource, ZeroShotTask, embed_images, embed_texts, is_main_rank
from vlp.registry import EVALUATIONS


def class_embeddings(encoder, class_names: list[str], templates: list[str], batch_size: int) -> Tensor:
    """One embedding per class: the renormalised mean of its normalised prompt embeddings."""
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = embed_texts(encoder, prompts, batch_size).view(len(class_names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1).sum().item() / labels.shape[0]


@EVALUATIONS.register("zero_shot")
class ZeroShotClassification(Evaluation):
    """Top-k accuracy per task; top-k is reported only for k below the number of classes."""

    def __init__(self, ks: list[int] = (1, 5), batch_size: int = 256) -> None:
        self.ks = list(ks)
        self.batch_size = batch_size

    def evaluate_task(self, encoder, task: ZeroShotTask) -> dict[str, float]:
        classes = class_embeddings(encoder, task.class_names, task.templates, self.batch_size)
        images = embed_images(encoder, task.images, self.batch_size)
        if not is_main_rank():
            return {}
        logits = images @ classes.T
        labels = torch.as_tensor(task.labels, device=logits.device)
        return {
            f"zeroshot/{task.name}/top{k}": topk_accuracy(logits, labels, k)
            for k in self.ks
            if k == 1 or k < len(task.class_names)
        }

    def __call__(self, encoder, source: EvaluationSource) -> dict[str, float]:
        results: dict[str, float] = {}
        for task in source.zero_shot_tasks():
            results.update(self.evaluate_task(encoder, task))
        return results
