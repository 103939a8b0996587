"""The one search pipeline: first stage -> stages -> the final list.

The CLI, the Python API, the server and every evaluation protocol call `run`, so
the numbers eval reports are the numbers users get. A stage (a reranker, and later
the answer stages) re-scores the head of the ranking; `apply` is the one merge rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loupe.core.types import Candidates, Query, Store

if TYPE_CHECKING:  # the stages pull in torch and OpenCV: imported only when a chain is asked for
    from loupe.search.stages.base import Reranker


def first_stage_depth(k: int, stages: Sequence[Reranker], depth: int | None = None) -> int:
    """How many first-stage candidates the chain needs: k, or the longest head a stage sees."""
    return max([k] + [depth or int(s.depth) for s in stages])


def run(query: Query, store: Store, k: int, stages: Sequence[Reranker] = (),
        depth: int | None = None, threshold: float | None = None,
        channels: str = "vector") -> Candidates:
    """Top-k for a built query: the store's first stage (filters inside it, `query.filters`;
    `query.exclude_ids` never returned), then each stage over its head, then the cut to k
    and the score floor. `channels` "text" or "hybrid" searches the full-text index too
    (`loupe.search.text`; the floor then applies to the vector channel before fusion)."""
    stages = list(stages)
    n = first_stage_depth(k, stages, depth)
    if channels == "vector":
        cands = store.search_vector(query.vector, n, query.filters, exclude=query.exclude_ids)
    else:
        from loupe.search.text import first_stage

        cands, threshold = first_stage(query, store, n, channels, threshold), None
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
    declares `may_drop` or `may_group` removed.

    A stage that drops (the cut-off) or groups (collapse) sees the whole incoming list, not
    only a head: an uncalibrated or ungrouped tail would otherwise fill the cut to k with
    what it would have dropped (a result below the cut-off, a copy of a shown result). What
    such a stage removed stays removed: no later stage (one that searches again) brings it
    back. The answer columns (`groups`, `confidence`, `group_size`, `members`) travel with
    their ids through later stages that do not set them.
    """
    removed: set[int] = set()
    for stage in stages:
        shapes = stage.may_drop or stage.may_group
        m = len(candidates) if shapes else min(depth or stage.depth, len(candidates))
        head = stage.rerank(query, candidates.head(m), store)
        if removed:
            head = head.take(np.flatnonzero(~np.isin(head.ids, np.fromiter(removed, np.int64))))
        in_head = set(head.ids.tolist())
        if shapes:
            removed |= set(candidates.ids[:m].tolist()) - in_head
        rest = candidates.take(np.array(
            [i for i, id_ in enumerate(candidates.ids.tolist())
             if id_ not in in_head and id_ not in removed], dtype=np.int64))
        candidates = _merge(head, rest, candidates)
    return candidates


# What a row that never met a column's stage gets: its own group of one, no calibration.
_MISSING = {"confidence": lambda id_: np.nan, "group_size": lambda id_: 1,
            "members": lambda id_: (), "groups": lambda id_: id_}


def _merge(head: Candidates, rest: Candidates, before: Candidates) -> Candidates:
    """head + rest as one list, each answer column carried: from the stage's output where it
    set it, else from the incoming list by id, else the missing value."""
    ids = np.concatenate([head.ids, rest.ids])
    columns: dict[str, Any] = {}
    for name, missing in _MISSING.items():
        if all(getattr(c, name) is None for c in (head, rest, before)):
            continue
        known = getattr(before, name)
        by_id = dict(zip(before.ids.tolist(), list(known), strict=True)) if known is not None else {}
        values: list[Any] = []
        for part in (head, rest):
            own = getattr(part, name)
            if own is not None:
                values.extend(list(own))
            else:
                values.extend(by_id.get(i, missing(i)) for i in part.ids.tolist())
        columns[name] = values
    members = columns.pop("members", None)
    return Candidates(ids, np.concatenate([head.scores, rest.scores]),
                      list(head.boxes) + list(rest.boxes), **columns, members=members)
