"""Hybrid ranking: reciprocal rank fusion of the vector and full-text channels, query parsing, and
the words behind a text match.

Reciprocal rank fusion (methods.md, "Fusion and answers"): for rankings r_c,

    score(d) = sum over channels c of  w_c / (k0 + rank_c(d)),   k0 = 60, ranks from 1,

and a document absent from a channel gets nothing from it (w_c = 1 unless weighted).

Queries: text in double quotes ("invoice 2023", also “…” and „…“) is a required phrase; the rest
is free text. A quote left open is ignored (its text stays free text).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loupe.text.ocr import Word
from loupe.text.terms import normalise_term, split_parts, tokens

K0 = 60
_QUOTES = {'"': '"', "\u201c": "\u201d", "\u201e": "\u201c", "\u00ab": "\u00bb"}


def parse_text_query(q: str) -> tuple[str, list[str]]:
    """(free_text, required_phrases): '"invoice 2023" paid' -> ('paid', ['invoice 2023'])."""
    free: list[str] = []
    phrases: list[str] = []
    i, n = 0, len(q)
    while i < n:
        ch = q[i]
        close = _QUOTES.get(ch)
        if close is not None:
            j = q.find(close, i + 1)
            if j < 0 and close != '"':
                j = q.find('"', i + 1)
            if j >= 0:
                phrase = " ".join(q[i + 1:j].split())
                if phrase:
                    phrases.append(phrase)
                free.append(" ")
                i = j + 1
                continue
            free.append(" ")     # an open quote with no close: drop the quote, keep the text
            i += 1
            continue
        free.append(ch)
        i += 1
    return " ".join("".join(free).split()), phrases


def rrf(rankings: Sequence[Sequence[Hashable]] | Mapping[str, Sequence[Hashable]],
        k0: float = K0, weights: Sequence[float] | Mapping[str, float] | None = None,
        ) -> list[tuple[Hashable, float]]:
    """Fuse rankings (best first; each a sequence of ids) into [(id, score)], best first.
    Ties keep the order of first appearance (channel order, then rank)."""
    if isinstance(rankings, Mapping):
        names = list(rankings)
        lists = [rankings[c] for c in names]
        if isinstance(weights, Mapping):
            ws = [float(weights.get(c, 1.0)) for c in names]
        else:
            ws = [1.0] * len(lists) if weights is None else [float(w) for w in weights]
    else:
        lists = list(rankings)
        if isinstance(weights, Mapping):
            raise TypeError("weights by name need rankings by name")
        ws = [1.0] * len(lists) if weights is None else [float(w) for w in weights]
    if len(ws) != len(lists):
        raise ValueError(f"{len(ws)} weights for {len(lists)} rankings")
    scores: dict[Hashable, float] = {}
    for ranking, w in zip(lists, ws, strict=True):
        seen = set()
        for rank, doc in enumerate(ranking, start=1):
            if doc in seen:          # a channel votes once per document, at its best rank
                continue
            seen.add(doc)
            scores[doc] = scores.get(doc, 0.0) + w / (k0 + rank)
    order = {doc: i for i, doc in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


@dataclass
class FusedHit:
    image_id: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)   # channel -> rank (from 1) where present
    matched_terms: tuple[str, ...] = ()                     # from the text channel


def hybrid(vector_ids: Sequence[int], text_hits: Sequence[Any], k: int, *, k0: float = K0,
           vector_weight: float = 1.0, text_weight: float | None = None,
           require_text: bool = False) -> list[FusedHit]:
    """Fuse the vector channel's ranking (ids, best first) with the text channel's hits
    ((image_id, score, matched_terms), best first, as `fts.search` returns them) by RRF; the
    best `k`. `require_text` keeps only images the text channel found (for queries whose
    quoted phrases must appear).

    With equal weights a text hit missing from the vector list ties with vector-only images of
    the same rank, so the top k can drop some of the text channel's top k. With
    text_weight > vector_weight * (k0 + k) / (k0 + 1) (about 1.15 for k = 10) every one of the
    text channel's top k outranks every image only the vector channel found, and the vector
    ranks still order the text hits among themselves.

    `text_weight=None` (the default) is that weight, `text_first_weight(k)`: the text channel
    matches every free word of the query (or its phrases), which is strong evidence, and with
    equal weights an uninformed vector channel pushed the text hits down the list (in
    benchmarks/ocr.py: hybrid mAP 0.595 against the text channel's 0.785, and 58 % of the text
    channel's top n in the hybrid's top n; text first: 0.803 and 100 %). Pass 1.0 for plain
    RRF."""
    if text_weight is None:
        text_weight = text_first_weight(k, k0, vector_weight)
    text_ids = [int(h[0]) for h in text_hits]
    terms = {int(h[0]): tuple(h[2]) for h in text_hits}
    fused = rrf({"vector": [int(i) for i in vector_ids], "text": text_ids}, k0,
                {"vector": vector_weight, "text": text_weight})
    vrank = _ranks(vector_ids)
    trank = _ranks(text_ids)
    out = []
    for doc, score in fused:
        if require_text and doc not in trank:
            continue
        ranks = {}
        if doc in vrank:
            ranks["vector"] = vrank[doc]
        if doc in trank:
            ranks["text"] = trank[doc]
        out.append(FusedHit(int(doc), score, ranks, terms.get(doc, ())))
        if len(out) >= k:
            break
    return out


def text_first_weight(k: int, k0: float = K0, vector_weight: float = 1.0) -> float:
    """The smallest text weight (plus a margin) that keeps the text channel's top k ahead of
    every vector-only image (see `hybrid`)."""
    return vector_weight * (k0 + k) / (k0 + 1) * 1.001


def _ranks(ids: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for rank, i in enumerate(ids, start=1):
        out.setdefault(int(i), rank)
    return out


def matching_words(words: Iterable[Word], terms: Iterable[str]) -> list[Word]:
    """The OCR words behind matched terms (each word whose tokens, or the parts of its glued
    tokens, include a term): what a hit's `why` shows, boxes included."""
    wanted = {normalise_term(t) for t in terms}
    if not wanted:
        return []
    out = []
    for w in words:
        forms = set(tokens(w.text)) | {normalise_term(p) for p in split_parts(w.text)}
        if forms & wanted:
            out.append(w)
    return out


def why(hit: FusedHit, words: Iterable[Word] | None) -> dict[str, Any]:
    """A hit's explanation: the rank it had in each channel, the matched terms and the OCR words
    (text, box, confidence) that carry them."""
    matched = matching_words(words or (), hit.matched_terms)
    return {
        "ranks": dict(hit.ranks),
        "terms": list(hit.matched_terms),
        "words": [{"text": w.text, "box": list(w.box), "confidence": w.confidence}
                  for w in matched],
    }
