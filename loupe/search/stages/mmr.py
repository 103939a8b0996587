"""Diversity by maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998).

Greedily pick, from the head, d = argmax lam * s(q, d) - (1 - lam) * max over picked p
of s(d, p), where s is the cosine of stored vectors (the first pick is the most
similar to the query). lam = 1 is the plain cosine order; lower values trade
relevance for results unlike those already shown. Only the order changes: each
result keeps the score it came with. Ties go to the earlier (better-ranked) result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive
from loupe.search.stages.cutoff import take


@dataclass
class MMR(Reranker):
    """Maximal marginal relevance: lam * s(q, d) - (1 - lam) * max s(d, picked), greedily."""

    name: ClassVar[str] = "mmr"
    depth: int = 100
    lam: float = 0.7

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth)
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"MMR: lam must be in [0, 1], got {self.lam!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        if len(candidates) < 2:
            return candidates
        vecs = store.vectors(candidates.ids)
        return take(candidates, mmr_order(query.vector, vecs, self.lam))


def mmr_order(query: np.ndarray, vectors: np.ndarray, lam: float) -> np.ndarray:
    """The MMR pick order of the rows of `vectors` (all of them)."""
    x = np.asarray(vectors, np.float64)
    relevance = x @ np.asarray(query, np.float64).reshape(-1)
    n = len(x)
    penalty = np.full(n, -np.inf)          # max similarity to a picked result; none yet
    picked = np.zeros(n, bool)
    order = np.empty(n, np.int64)
    for step in range(n):
        gain = lam * relevance - (1.0 - lam) * np.where(step == 0, 0.0, penalty)
        gain[picked] = -np.inf
        best = int(np.argmax(gain))         # first maximum: the better-ranked of ties
        order[step] = best
        picked[best] = True
        penalty = np.maximum(penalty, x @ x[best])
    return order
