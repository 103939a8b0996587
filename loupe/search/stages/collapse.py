"""Near-duplicate groups in a result list, collapsed to their best member ("+N similar").

Two results are linked when the cosine of their stored vectors is at least
`threshold` (identical files share one vector, so exact duplicates always are);
groups are the connected components of the links among the head. Each group is
shown once, by its best-ranked member (the representative), at the
representative's place; `group_size` counts its members (itself included), so
a face writes "+{group_size - 1} similar", and `members` lists the others' ids
(best-ranked first). `groups` labels every result with its representative's id.

With `keep=True` nothing leaves the list: each representative is followed by
its other members (incoming order), labelled with the same group.
Offline duplicate finding over a whole library (hashes, perceptual hashes,
spatial verification) is `loupe.dups`; this stage is the cheap, in-search part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive
from loupe.search.stages.cutoff import columns_of, take, with_columns


@dataclass
class Collapse(Reranker):
    """Collapse near-duplicate results (cosine >= threshold, connected) to their best member."""

    name: ClassVar[str] = "collapse"
    may_group: ClassVar[bool] = True
    may_drop: ClassVar[bool] = True     # the members leave the list, counted by their group
    depth: int = 100
    threshold: float = 0.95
    keep: bool = False                  # keep the members, right after their representative

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth)
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"Collapse: threshold is a cosine in [-1, 1], got {self.threshold!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Representatives in incoming order (members after them with `keep`), with `groups`
        (the representative's id) and `group_size`."""
        n = len(candidates)
        if n == 0:
            return with_columns(Candidates(candidates.ids, candidates.scores, [], np.zeros(0)),
                                group_size=np.zeros(0, np.int64), members=[])
        vecs = store.vectors(candidates.ids)
        component = components(n, linked_pairs(vecs, self.threshold))
        # Components are numbered in order of their first (best-ranked) member, the
        # representative: first[c] is component c's.
        first = np.unique(component, return_index=True)[1]
        size = np.bincount(component)
        rep_of = candidates.ids[first][component]                # representative id per row
        if self.keep:
            rows = np.argsort(component, kind="stable")          # groups in order, members after
        else:
            rows = first
        out = take(candidates, rows)
        ids = candidates.ids.tolist()
        in_group: dict[int, list[int]] = {}
        for row, c in enumerate(component.tolist()):
            in_group.setdefault(c, []).append(ids[row])
        members = [tuple(i for i in in_group[component[r]] if i != ids[r]) for r in rows.tolist()]
        return with_columns(
            Candidates(out.ids, out.scores, list(out.boxes), rep_of[rows]),
            **{**columns_of(out), "group_size": size[component[rows]], "members": members},
        )


def linked_pairs(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """(n, 2) row pairs i < j whose cosine (dot product of unit rows) is >= threshold."""
    vectors = np.asarray(vectors, np.float32)
    sim = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sim >= threshold, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of n nodes linked by `pairs`, numbered 0, 1, ... in order of each
    component's smallest node (union-find with path halving)."""
    parent = np.arange(n, dtype=np.int64)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for a, b in np.asarray(pairs, np.int64).reshape(-1, 2):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)       # the smallest node is the root
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    _, labels = np.unique(roots, return_inverse=True)    # roots sorted = smallest node order
    return labels.astype(np.int64).reshape(-1)
