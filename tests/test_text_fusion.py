"""Reciprocal rank fusion against its definition, query parsing, and a hit's why."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.text.fusion import (
    FusedHit,
    hybrid,
    matching_words,
    parse_text_query,
    rrf,
    text_first_weight,
    why,
)
from loupe.text.ocr import Word


def test_rrf_matches_the_definition_by_hand():
    # score(d) = sum_c 1 / (60 + rank_c(d)); absent from a channel: nothing from it
    fused = rrf([[1, 2, 3], [3, 1, 4]])
    expected = {
        1: 1 / 61 + 1 / 62,
        2: 1 / 62,
        3: 1 / 63 + 1 / 61,
        4: 1 / 63,
    }
    assert [d for d, _ in fused] == [1, 3, 2, 4]
    for doc, score in fused:
        assert score == pytest.approx(expected[doc], rel=1e-12)


def test_rrf_weights_and_k0():
    fused = dict(rrf({"vector": ["a", "b"], "text": ["b"]}, k0=10,
                     weights={"vector": 1.0, "text": 3.0}))
    assert fused["a"] == pytest.approx(1 / 11)
    assert fused["b"] == pytest.approx(1 / 12 + 3 / 11)
    assert dict(rrf([["a"], ["a"]], weights=[0.5, 2.0]))["a"] == pytest.approx(2.5 / 61)
    with pytest.raises(ValueError):
        rrf([["a"], ["b"]], weights=[1.0])


def test_rrf_counts_a_document_once_per_channel_and_breaks_ties_stably():
    assert dict(rrf([[7, 7, 8]]))[7] == pytest.approx(1 / 61)
    assert dict(rrf([[7, 7, 8]]))[8] == pytest.approx(1 / 63)
    # equal scores: first appearance wins (channel order, then rank)
    assert [d for d, _ in rrf([[5, 6], [6, 5]])] == [5, 6]


def test_hybrid_fuses_keeps_ranks_and_terms():
    text_hits = [(30, 9.0, ("invoice",)), (10, 5.0, ("invoice", "2023"))]
    fused = hybrid([10, 20, 30, 40], text_hits, k=3, text_weight=1.0)
    assert [h.image_id for h in fused] == [10, 30, 20]
    top = fused[0]
    assert top.ranks == {"vector": 1, "text": 2}
    assert top.score == pytest.approx(1 / 61 + 1 / 62)
    assert top.matched_terms == ("invoice", "2023")
    assert fused[2].ranks == {"vector": 2} and fused[2].matched_terms == ()


def test_hybrid_require_text_keeps_only_text_hits():
    fused = hybrid([1, 2, 3, 4], [(4, 1.0, ("x",)), (2, 0.5, ("x",))], k=10, require_text=True)
    assert [h.image_id for h in fused] == [2, 4]
    assert hybrid([1, 2], [], k=5, require_text=True) == []


def test_hybrid_text_weight_puts_text_hits_first():
    vector = list(range(100, 120))
    text = [(5, 1.0, ("a",)), (6, 0.9, ("a",))]
    plain = [h.image_id for h in hybrid(vector, text, k=4, text_weight=1.0)]
    assert plain == [100, 5, 101, 6]                      # 1/61 ties: vector came first
    weighted = [h.image_id for h in hybrid(vector, text, k=4, text_weight=1.2)]
    assert weighted == [5, 6, 100, 101]
    default = hybrid(vector, text, k=4)                   # text first unless told otherwise
    assert [h.image_id for h in default] == [5, 6, 100, 101]
    assert default[0].score == pytest.approx(text_first_weight(4) / 61)


@pytest.mark.parametrize("seed", range(20))
def test_text_first_weight_keeps_every_text_hit(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 15))
    pool = rng.permutation(500)
    vector = [int(i) for i in pool[:100]]
    # text hits: some also found by vectors (anywhere in their list), some not at all
    text_ids = [int(i) for i in rng.choice(pool[:300], size=k, replace=False)]
    text = [(i, 1.0 / (r + 1), ("w",)) for r, i in enumerate(text_ids)]
    fused = hybrid(vector, text, k=k, text_weight=text_first_weight(k))
    assert {h.image_id for h in fused} == set(text_ids)
    # just under the bound, a text hit found only by text (rank k) loses to vector rank 1
    vector_only = [i for i in vector if i not in text_ids]
    lone = [(int(pool[400 + r]), 1.0, ("w",)) for r in range(k)]
    fused = hybrid(vector_only, lone, k=k, text_weight=0.999 * (60 + k) / 61)
    assert lone[-1][0] not in {h.image_id for h in fused}


@pytest.mark.parametrize("query, free, phrases", [
    ('"invoice 2023"', "", ["invoice 2023"]),
    ('"invoice 2023" paid', "paid", ["invoice 2023"]),
    ('a "b c" d "e"', "a d", ["b c", "e"]),
    ("“north gate” open", "open", ["north gate"]),
    ("„Hauptbahnhof“", "", ["Hauptbahnhof"]),
    ('"  spaced   out  "', "", ["spaced out"]),
    ('"" x', "x", []),
    ('open "quote', "open quote", []),
    ("plain words", "plain words", []),
    ("", "", []),
])
def test_parse_text_query(query, free, phrases):
    assert parse_text_query(query) == (free, phrases)


def test_matching_words_and_why():
    words = [Word("ACME", (0, 0, 40, 10), 0.99), Word("INVOICE2023", (50, 0, 150, 10), 0.95),
             Word("Café", (0, 20, 30, 30), 0.9), Word("paid", (40, 20, 70, 30), 0.4)]
    assert matching_words(words, ["invoice"]) == [words[1]]     # a glued token's part
    assert matching_words(words, ["2023", "cafe"]) == [words[1], words[2]]
    assert matching_words(words, ["nothing"]) == []
    assert matching_words(words, []) == []
    hit = FusedHit(3, 0.03, {"text": 1, "vector": 4}, ("acme", "paid"))
    explained = why(hit, words)
    assert explained["ranks"] == {"text": 1, "vector": 4}
    assert explained["terms"] == ["acme", "paid"]
    assert explained["words"] == [
        {"text": "ACME", "box": [0, 0, 40, 10], "confidence": 0.99},
        {"text": "paid", "box": [40, 20, 70, 30], "confidence": 0.4},
    ]
    assert why(FusedHit(1, 0.1), None)["words"] == []
