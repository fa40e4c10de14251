"""Retrieval recall by the per-instance protocol (the default) and the merged variant, on captions that repeat.

The references below rank with numpy's stable argsort over the full score matrix, with
every caption instance embedded on its own, and share no code with vlp's blocked top-K.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_evaluation import TableEncoder
from vlp.evaluation.base import RetrievalSet
from vlp.evaluation.retrieval import Retrieval
from vlp.registry import ConfigError

KS = (1, 2, 5)


def repeated_caption_set(seed: int = 0):
    """14 images, each with 1-3 captions drawn from 6 strings, so most strings describe several images."""
    rng = np.random.default_rng(seed)
    pool = [f"caption {c}" for c in range(6)]
    captions = [sorted(set(rng.choice(pool, size=rng.integers(1, 4)).tolist())) for _ in range(14)]
    generator = torch.Generator().manual_seed(seed)
    image_table = torch.randn(14, 5, generator=generator)
    text_table = {t: torch.randn(5, generator=generator) for t in pool}
    # Images lean towards their first caption, so rankings are informative but imperfect.
    image_table += torch.stack([2 * text_table[c[0]] for c in captions])
    texts = sorted({t for c in captions for t in c})
    image_to_texts = [[texts.index(t) for t in c] for c in captions]
    return captions, TableEncoder(image_table, text_table), RetrievalSet("rep", torch.arange(14), texts, image_to_texts)


def stable_hits(scores: np.ndarray, relevant: list[set[int]], k: int) -> float:
    """Fraction of query rows whose top-k (descending, ties to the lower column) holds a relevant column."""
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([bool(set(row.tolist()) & rel) for row, rel in zip(ranked, relevant)]))


def per_instance_reference(captions, encoder) -> dict[str, float]:
    instance_text = [t for c in captions for t in c]
    instance_image = [i for i, c in enumerate(captions) for _ in c]
    images = encoder.encode_image(torch.arange(len(captions))).double().numpy()
    texts = torch.cat([encoder.encode_text([t]) for t in instance_text]).double().numpy()
    scores = images @ texts.T
    results = {}
    for k in KS:
        own = [{j for j, owner in enumerate(instance_image) if owner == i} for i in range(len(captions))]
        results[f"retrieval/rep/per_instance/image_to_text_R@{k}"] = stable_hits(scores, own, k)
        results[f"retrieval/rep/per_instance/text_to_image_R@{k}"] = stable_hits(scores.T, [{i} for i in instance_image], k)
    return results


def merged_reference(captions, encoder) -> dict[str, float]:
    unique = list(dict.fromkeys(t for c in captions for t in c))
    images = encoder.encode_image(torch.arange(len(captions))).double().numpy()
    texts = torch.cat([encoder.encode_text([t]) for t in unique]).double().numpy()
    scores = images @ texts.T
    results = {}
    for k in KS:
        described = [{unique.index(t) for t in c} for c in captions]
        results[f"retrieval/rep/merged/image_to_text_R@{k}"] = stable_hits(scores, described, k)
        describes = [{i for i, c in enumerate(captions) if t in c} for t in unique]
        results[f"retrieval/rep/merged/text_to_image_R@{k}"] = stable_hits(scores.T, describes, k)
    return results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_instance_recall_equals_direct_definition_on_repeated_captions(seed):
    captions, encoder, retrieval_set = repeated_caption_set(seed)
    got = Retrieval(ks=list(KS), batch_size=4, chunk_size=3).evaluate_set(encoder, retrieval_set)
    expected = per_instance_reference(captions, encoder)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_merged_protocol_is_an_explicit_option_with_its_own_names_and_differs():
    captions, encoder, retrieval_set = repeated_caption_set(0)
    got = Retrieval(ks=list(KS), chunk_size=3, protocols=["per_instance", "merged"]).evaluate_set(encoder, retrieval_set)
    expected = per_instance_reference(captions, encoder) | merged_reference(captions, encoder)
    assert got == pytest.approx(expected, abs=1e-12)
    # Merging credits a shared caption to every image it describes: never lower, here higher.
    assert got["retrieval/rep/merged/text_to_image_R@1"] > got["retrieval/rep/per_instance/text_to_image_R@1"]


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="per_instance"):
        Retrieval(protocols=["mergd"])
