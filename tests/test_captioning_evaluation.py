"""Caption scores (pycocoevalcap) against BLEU's and CIDEr-D's definitions on cases worked by hand."""

from __future__ import annotations

import math

import pytest

from vlp.evaluation.captioning import caption_scores, captioning_objective
from vlp.registry import ConfigError

REFERENCE = "a small red circle at the top left"


def test_bleu4_is_the_brevity_penalty_times_the_geometric_mean_of_ngram_precisions():
    # Same length, one word wrong: n-gram precisions 7/8, 5/7, 4/6, 3/5 (Papineni et al., 2002).
    scores = caption_scores(["a large red circle at the top left"], [[REFERENCE]])
    assert math.isclose(scores["bleu4"], (7 / 8 * 5 / 7 * 4 / 6 * 3 / 5) ** 0.25, rel_tol=1e-6)
    # Seven of eight words, all n-grams right: only the brevity penalty exp(1 - r/c) remains.
    scores = caption_scores(["a small red circle at the top"], [[REFERENCE]])
    assert math.isclose(scores["bleu4"], math.exp(1 - 8 / 7), rel_tol=1e-6)


def test_perfect_captions_score_bleu4_one_cider_ten_and_match_after_normalisation():
    references = [[REFERENCE], ["a large blue square"], ["a cross and a circle"]]
    candidates = ["A small red circle at the top left.", "a large blue square", "a cross and a circle"]
    scores = caption_scores(candidates, references)
    assert math.isclose(scores["bleu4"], 1.0, rel_tol=1e-6)
    # CIDEr-D: mean over references and n = 1..4 of tf-idf cosine similarity (1 for an exact match), times 10.
    assert math.isclose(scores["cider"], 10.0, rel_tol=1e-6)
    assert scores["exact_match"] == 1.0
    scores = caption_scores([REFERENCE, "a small blue square", "a cross"], references)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["cider"] < 10.0 and scores["bleu4"] < 1.0


def test_captioning_without_a_caption_decoder_says_what_to_add():
    with pytest.raises(ConfigError, match="add coca"):
        captioning_objective({"clip": object()})
