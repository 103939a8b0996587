"""alpha-QE (Radenovic et al., TPAMI 2019): expand the query with its best results, search again.

q' = normalise(sum over i = 0..n of s(q, d_i)^alpha * d_i), d_0 = q (weight 1),
d_1..d_n the top n of the incoming ranking. Similarities below zero weigh
nothing: a result that points away from the query must not pull it (and a
fractional alpha stays defined).

The second search goes through `store.search_vector` with the first stage's
filters (`Query.filters`), so it never shows an image they exclude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive


@dataclass
class AlphaQE(Reranker):
    """alpha-QE: query + its top-n results weighted by similarity^alpha, then search again."""

    name: ClassVar[str] = "qe"
    searches_again: ClassVar[bool] = True
    depth: int = 100
    n: int = 2
    alpha: float = 3.0

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, n=self.n)
        if self.alpha < 0:
            raise ValueError(f"AlphaQE: alpha must be >= 0, got {self.alpha!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Search again with the expanded query (the ids may differ from the incoming ones)."""
        if not len(candidates):
            return candidates
        expanded = expand_query(query.vector, store.vectors(candidates.ids[: self.n]), self.alpha)
        return store.search_vector(
            expanded, len(candidates), filters=query.filters, exclude=tuple(query.exclude_ids)
        )

def expand_query(query: np.ndarray, top: np.ndarray, alpha: float = 3.0) -> np.ndarray:
    """The alpha-QE query: normalise(q + sum_i max(s(q, d_i), 0)^alpha * d_i)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    top = np.asarray(top, dtype=np.float32).reshape(-1, q.shape[0])
    weights = np.maximum(top @ q, 0.0) ** alpha
    expanded = q + weights @ top
    return (expanded / max(float(np.linalg.norm(expanded)), 1e-12)).astype(np.float32)
