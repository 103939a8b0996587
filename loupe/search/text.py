"""The first stage of a text query with the full-text channel: text only, or hybrid.

`loupe.search.pipeline.run(..., channels=...)` calls `first_stage` when a channel other than the
vectors alone is asked for; the stages after it see one ranked list, as always.

* "vector": the vectors alone (the pipeline's own first stage; not handled here).
* "text": the full-text index alone (BM25 over OCR words, file and folder names, camera, date);
  needs no model.
* "hybrid": both, fused by reciprocal rank fusion with the text channel weighted first
  (`loupe.text.fusion.hybrid`): every image the text channel finds in the first n outranks the
  images only the vectors found, and the vectors order the text hits among themselves. A quoted
  phrase must appear: then only text hits are kept. When the text channel finds nothing the
  vector ranking comes back unchanged, its scores (cosine similarities) included.

The ids the text channel matched go on `query.text_matches`: the calibrated cut-off (an answer
stage) keeps them whatever their vector similarity, as it keeps a spatially verified match.

Scores: "text" gives BM25 (higher is better), "hybrid" with text hits the fused RRF score; a
score floor (`threshold`) applies to the vector channel's similarities before fusion, so it never
drops a text hit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loupe.core.errors import QueryError
from loupe.core.types import Candidates, Query
from loupe.text.fusion import hybrid, parse_text_query

CHANNELS = ("hybrid", "text", "vector")


def first_stage(query: Query, store: Any, n: int, channels: str,
                threshold: float | None = None) -> Candidates:
    if channels not in ("hybrid", "text"):
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    search_text = getattr(store, "search_text", None)
    if search_text is None:
        raise QueryError("this collection has no full-text index: search it by vectors only")
    if not query.text:
        raise QueryError("the text channel needs a text query")
    hits = search_text(query.text, n, query.filters, exclude=query.exclude_ids,
                       searchable=channels == "hybrid")
    # A text match is evidence the stages after this one respect (the cut-off keeps it).
    query.text_matches = frozenset(int(h[0]) for h in hits)
    if channels == "text":
        return Candidates(np.array([h[0] for h in hits], np.int64),
                          np.array([h[1] for h in hits], np.float32))
    vec = store.search_vector(query.vector, n, query.filters, exclude=query.exclude_ids)
    if threshold is not None:
        vec = vec.take(np.flatnonzero(vec.scores >= threshold))
    _, phrases = parse_text_query(query.text)
    if not hits:   # nothing to fuse: the vector ranking as it is, unless a phrase must appear
        return vec.head(0) if phrases else vec
    fused = hybrid(vec.ids.tolist(), hits, n, require_text=bool(phrases))
    return Candidates(np.array([f.image_id for f in fused], np.int64),
                      np.array([f.score for f in fused], np.float32))


def vector_text(text: str) -> str:
    """What the vector channel encodes for a hybrid query: its words without the quotes."""
    free, phrases = parse_text_query(text)
    return " ".join([*phrases, free]).strip() or text
