"""The one search pipeline: first stage -> stages -> the final list.

The CLI, the Python API, the server and every evaluation protocol call `run`, so
the numbers eval reports are the numbers users get. A stage (a reranker, and later
the answer stages) re-scores the head of the ranking; `apply` is the one merge rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from loupe.core.types import Candidates, Query, Store

if TYPE_CHECKING:  # the stages pull in torch and OpenCV: imported only when a chain is asked for
    from loupe.search.stages.base import Reranker


def first_stage_depth(k: int, stages: Sequence[Reranker], depth: int | None = None) -> int:
    """How many first-stage candidates the chain needs: k, or the longest head a stage sees."""
    return max([k] + [depth or int(s.depth) for s in stages])


def run(query: Query, store: Store, k: int, stages: Sequence[Reranker] = (),
        depth: int | None = None, threshold: float | None = None) -> Candidates:
    """Top-k for a built query: the store's first stage (filters inside it, `query.filters`;
    `query.exclude_ids` never returned), then each stage over its head, then the cut to k
    and the score floor."""
    stages = list(stages)
    cands = store.search_vector(query.vector, first_stage_depth(k, stages, depth),
                                query.filters, exclude=query.exclude_ids)
    cands = apply(stages, query, cands, store, depth).head(k)
    if threshold is not None:
        cands = cands.take(np.flatnonzero(cands.scores >= threshold))
    return cands


def apply(stages: Sequence[Reranker], query: Query, candidates: Candidates, store: Store,
          depth: int | None = None) -> Candidates:
    """Run a chain: each stage re-scores the head (length `depth` or its own default M).

    Everything not in the re-scored head follows it in incoming order: the tail, and
    (after a stage that searched again, like alpha-QE) head ids that the new search
    did not return. No id appears twice and none is lost, except those a stage that
    declares `may_drop` removed from its head.
    """
    for stage in stages:
        m = min(depth or stage.depth, len(candidates))
        head = stage.rerank(query, candidates.head(m), store)
        in_head = set(head.ids.tolist())
        dropped = (set(candidates.ids[:m].tolist()) - in_head) if stage.may_drop else set()
        rest = candidates.take(np.array(
            [i for i, id_ in enumerate(candidates.ids.tolist())
             if id_ not in in_head and id_ not in dropped], dtype=np.int64))
        candidates = Candidates(
            np.concatenate([head.ids, rest.ids]),
            np.concatenate([head.scores, rest.scores]),
            list(head.boxes) + list(rest.boxes),
        )
    return candidates
