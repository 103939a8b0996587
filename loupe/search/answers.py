"""Answers users can trust, as the faces (CLI, server, page) ask for them.

The stages themselves are ordinary rerankers (`cutoff`, `collapse`, `mmr`, in
loupe.search.stages). This module is what the faces share on top of them:

- `face_chain`: the stages a face runs after the user's own rerankers. By default
  the `answers` setting, "cutoff,collapse": results below the calibrated
  confidence are dropped ("no confident match" when none is left) and
  near-duplicates fold into their best member ("+3 similar"). `show_all` turns
  both off and only labels the confidence; `diverse` adds MMR at that lambda.
- `with_feedback`: relevance feedback (Rocchio) on a built query: more like the
  liked images, fewer like the unliked; the judged images are left out of the results.
- `hit_meta`: the per-hit fields a face shows: `confidence` and `group`.
- `summary`: what a face says about the answer as a whole ("no confident match").

`Library.search` itself adds nothing: evaluation protocols and scripts get the
plain ranking unless they ask for these stages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from loupe.core.config import default
from loupe.core.errors import QueryError
from loupe.core.types import Candidates, Query, SearchRequest, Store


def answer_stages(spec: str | None = None) -> list[Any]:
    """The answer stages of a spec (default: the `answers` setting), checked."""
    from loupe.search import stages

    spec = default("answers") if spec is None else spec
    try:
        chain = stages.get(spec)
    except ValueError as exc:
        raise QueryError(f"answers setting {spec!r}: {exc}") from None
    return chain


def face_chain(rerank: Sequence[Any] | None = None, *, show_all: bool = False,
               diverse: float | None = None, answers: str | None = None) -> list[Any]:
    """The user's rerankers, then the answer stages (collapse, cut-off), then MMR.

    Collapse comes first, so a group counts every copy of a shown result, even those that
    would not clear the cut-off on their own; the cut-off then judges each group by its
    best member (scores and boxes pass through collapse, so what the spatial reranker
    verified still counts as evidence); MMR (`diverse`) spreads what is left. With
    `show_all` nothing is dropped or folded: the cut-off only labels each result with its
    confidence."""
    from loupe.search.stages import MMR, Collapse, Cutoff

    if diverse is not None and not 0.0 <= diverse <= 1.0:
        raise QueryError(f"--diverse {diverse!r}: lambda is in [0, 1] (1 = plain relevance, "
                         "lower = more varied)")
    chain = list(rerank or [])
    asked = {type(s) for s in chain}     # a stage the user chained already is not added twice
    extra = [s for s in answer_stages(answers) if type(s) not in asked]
    extra.sort(key=lambda s: not isinstance(s, Collapse))       # collapse, then the rest
    if show_all:
        extra = [dataclasses.replace(s, keep=True) for s in extra if isinstance(s, Cutoff)]
    chain += extra
    if diverse is not None:
        chain.append(MMR(lam=diverse))
    return chain


def cutoff_of(chain: Sequence[Any]) -> Any | None:
    """The chain's dropping cut-off stage, if any (None when absent or only labelling)."""
    from loupe.search.stages import Cutoff

    return next((s for s in chain if isinstance(s, Cutoff) and not s.keep), None)


def with_feedback(request: SearchRequest, build: Callable[[SearchRequest], Query], store: Store,
                  resolve: Callable[[Any], int]) -> Query:
    """The query of `request` moved by its relevance feedback (Rocchio: `liked`, `unliked`).

    Without other query terms the liked images alone make the query. The judged images
    are left out of the results: the user has seen them."""
    from loupe.search.stages.feedback import feedback_query

    liked = [resolve(r) for r in request.liked or ()]
    unliked = [resolve(r) for r in request.unliked or ()]
    both = set(liked) & set(unliked)
    if both:
        raise QueryError(f"image {min(both)} is both liked and unliked")
    has_terms = any(t is not None and (not isinstance(t, str) or t.strip())
                    for t in (request.text, request.image, request.like, request.expr))
    if not has_terms and not liked:
        raise QueryError("feedback needs a query or at least one liked image: add text, "
                         "--image, or --like")
    base = build(request) if has_terms else Query(np.zeros(0, np.float32), filters=request.filters)
    try:
        vector = feedback_query(store, base.vector if has_terms else None, liked, unliked)
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    return dataclasses.replace(base, vector=vector,
                               exclude_ids=frozenset(base.exclude_ids) | set(liked) | set(unliked))


def hit_meta(cands: Candidates, row: int, records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The answer fields of one result: `confidence` (the calibrated score, when the cut-off
    ran) and `group` (id of its representative, size, and the other members' ids and
    paths, when collapse ran)."""
    out: dict[str, Any] = {}
    if cands.confidence is not None:
        c = float(cands.confidence[row])
        out["confidence"] = None if math.isnan(c) else round(c, 4)
    if cands.group_size is not None:
        members = cands.members[row] if cands.members is not None else ()
        out["group"] = {
            "id": int(cands.groups[row]) if cands.groups is not None else int(cands.ids[row]),
            "size": int(cands.group_size[row]),
            "members": [{"id": int(m), "rel_path": (records.get(int(m)) or {}).get("path")}
                        for m in members],
        }
    return out


def member_ids(cands: Candidates) -> list[int]:
    """Every id the results stand for but do not show (collapsed group members)."""
    return sorted({int(m) for ms in cands.members or () for m in ms})


def summary(chain: Sequence[Any], n_results: int, k: int) -> dict[str, Any]:
    """What to say about an answer: `confident` False when the cut-off left nothing, and how
    many results it (and collapse) kept out of the k asked for."""
    cut = cutoff_of(chain)
    out: dict[str, Any] = {"cutoff": None if cut is None else cut.threshold}
    if cut is None:
        out["confident"] = None          # not asked: every result is shown
        return out
    out["confident"] = n_results > 0
    if n_results == 0:
        out["message"] = ("no confident match: nothing in the library is a clear answer to this "
                          f"query (calibrated confidence below {cut.threshold:g} for every "
                          "candidate)")
    elif n_results < k:
        out["message"] = (f"only {n_results} confident result{'s' if n_results != 1 else ''}: "
                          "the cut-off hides results that are not clear answers")
    return out


def text_bank(encode_text: Callable[[list[str]], np.ndarray], store: Any, space: int,
              hubs: bool = False) -> Any:
    """The generic-caption bank of a space's text tower (what the cut-off and hubness calibrate
    a text query against), its vectors kept in the library's cache: encoding the 1000
    captions costs seconds on a CPU, which every `loupe search "text"` would otherwise pay.
    `hubs`: also the activation set (for hubness modes that need it; a search per caption)."""
    import hashlib

    from loupe.core.files import atomic_write
    from loupe.search.stages.hubness import CAPTIONS, QueryBank, activation_set

    digest = hashlib.sha256("\n".join(CAPTIONS).encode()).hexdigest()[:16]
    vectors, path = None, None
    try:
        path = store.cache_dir("hubness") / f"text-bank-space{space}-{digest}.npy"
        vectors = np.load(path)
        if len(vectors) != len(CAPTIONS):
            vectors = None
    except (OSError, ValueError):
        pass
    if vectors is None:
        vectors = np.concatenate([np.asarray(encode_text(list(CAPTIONS[i:i + 256])), np.float32)
                                  for i in range(0, len(CAPTIONS), 256)])
        if path is not None:
            try:
                atomic_write(path, lambda fh: np.save(fh, vectors))
            except OSError:             # a read-only library: encoded again next time
                pass
    bank = QueryBank(vectors, np.full(len(vectors), -1, np.int64))
    if hubs:
        bank.hubs = activation_set(store, bank)
    return bank
