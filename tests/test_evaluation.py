"""Zero-shot and retrieval metrics against direct computations of their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlp.evaluation.base import RetrievalSet, ZeroShotTask
from vlp.evaluation.retrieval import Retrieval, chunked_topk
from vlp.evaluation.zero_shot import ZeroShotClassification


class TableEncoder(nn.Module):
    """Embeds image i as row i of a table and text s as a fixed vector per string."""

    def __init__(self, image_table: torch.Tensor, text_table: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.image_table, self.text_table = image_table, text_table

    def encode_image(self, index: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_table[index.long().flatten()], dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.stack([self.text_table[t] for t in texts]), dim=-1)


def test_chunked_topk_equals_full_matrix_topk():
    torch.manual_seed(0)
    queries, gallery = torch.randn(37, 8), torch.randn(53, 8)
    expected = (queries @ gallery.T).topk(10, dim=1).indices
    torch.testing.assert_close(chunked_topk(queries, gallery, 10, chunk_size=7), expected)


def test_recall_at_k_with_several_captions_per_image_matches_definition():
    torch.manual_seed(1)
    n_images, captions_per_image = 12, 3
    texts = [f"caption {i}-{c}" for i in range(n_images) for c in range(captions_per_image)]
    image_to_texts = [[i * captions_per_image + c for c in range(captions_per_image)] for i in range(n_images)]
    image_table = torch.randn(n_images, 6)
    # Texts are noisy copies of their image, so rankings are informative but imperfect.
    text_table = {t: image_table[j // captions_per_image] + 1.5 * torch.randn(6) for j, t in enumerate(texts)}
    encoder = TableEncoder(image_table, text_table)
    retrieval_set = RetrievalSet("toy", torch.arange(n_images), texts, image_to_texts)
    got = Retrieval(ks=[1, 5, 10], batch_size=5, chunk_size=4).evaluate_set(encoder, retrieval_set)

    scores = F.normalize(image_table, dim=-1) @ encoder.encode_text(texts).T
    for k in (1, 5, 10):
        i2t = sum(bool(set(scores[i].topk(k).indices.tolist()) & set(image_to_texts[i])) for i in range(n_images)) / n_images
        t2i = sum(j // captions_per_image in scores[:, j].topk(k).indices.tolist() for j in range(len(texts))) / len(texts)
        assert got[f"retrieval/toy/per_instance/image_to_text_R@{k}"] == i2t
        assert got[f"retrieval/toy/per_instance/text_to_image_R@{k}"] == t2i
    assert 0 < got["retrieval/toy/per_instance/image_to_text_R@1"] < 1


def test_zero_shot_uses_renormalised_mean_of_normalised_prompt_embeddings():
    torch.manual_seed(2)
    classes, templates = ["cat", "dog", "eel"], ["a {}", "the {}"]
    text_table = {t.format(c): torch.randn(4) for c in classes for t in templates}
    image_table = torch.randn(20, 4)
    labels = torch.randint(0, 3, (20,))
    encoder = TableEncoder(image_table, text_table)
    task = ZeroShotTask("toy", classes, templates, torch.arange(20), labels)
    got = ZeroShotClassification(ks=[1, 2, 5]).evaluate_task(encoder, task)

    class_vectors = []
    for c in classes:
        prompts = torch.stack([F.normalize(text_table[t.format(c)], dim=0) for t in templates])
        class_vectors.append(F.normalize(prompts.mean(0), dim=0))
    logits = F.normalize(image_table, dim=-1) @ torch.stack(class_vectors).T
    top1 = (logits.argmax(1) == labels).sum().item() / 20
    top2 = (logits.topk(2, dim=1).indices == labels[:, None]).any(1).sum().item() / 20
    predictions = logits.argmax(1)
    recall = sum((predictions[labels == k] == k).double().mean().item() for k in range(3)) / 3
    expected = {"zeroshot/toy/top1": top1, "zeroshot/toy/top2": top2, "zeroshot/toy/mean_per_class_recall": recall}
    assert got == pytest.approx(expected, abs=1e-12)  # top5 omitted: only 3 classes
