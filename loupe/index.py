"""First-stage search over the stored vectors.

Exact by construction today: one matrix product in numpy for small or filtered
sets, FAISS's flat inner-product index above EXACT_SEARCH_MAX. An ANN index
(HNSW, IVF-PQ) slots in behind `VectorIndex.search` without touching callers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from loupe.config import EXACT_SEARCH_MAX
from loupe.types import Candidates


class VectorIndex:
    def __init__(self, ids: np.ndarray, matrix: np.ndarray, exact_max: int = EXACT_SEARCH_MAX):
        if len(ids) != len(matrix):
            raise ValueError("ids and matrix differ in length")
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, matrix = ids[order], matrix[order]
        self.ids = np.ascontiguousarray(ids)
        # No copy for a memory-mapped float32 matrix already in order: pages load on use.
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self._faiss = None
        if len(self.ids) > exact_max:
            import faiss

            self._faiss = faiss.IndexFlatIP(self.matrix.shape[1])
            self._faiss.add(self.matrix)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        return "faiss:Flat" if self._faiss is not None else "numpy:exact"

    def positions(self, ids: Iterable[int]) -> np.ndarray:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        ok = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == ids)
        return pos[ok]

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: Iterable[int] = ()) -> Candidates:
        """Top-k by inner product. `allowed` restricts to those ids; `exclude` drops ids."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        exclude = np.asarray(sorted(exclude), dtype=np.int64)
        if allowed is not None:
            pos = self.positions(np.setdiff1d(allowed, exclude))
            return self._top(self.matrix[pos] @ q, self.ids[pos], k)
        want = min(k + len(exclude), len(self.ids))
        if self._faiss is not None and want > 0:
            scores, pos = self._faiss.search(q[None, :], want)
            keep = pos[0] >= 0
            found = self.ids[pos[0][keep]]
            mask = ~np.isin(found, exclude)
            return Candidates(found[mask][:k], scores[0][keep][mask][:k])
        scores = self.matrix @ q
        if len(exclude):
            keep = ~np.isin(self.ids, exclude)
            return self._top(scores[keep], self.ids[keep], k)
        return self._top(scores, self.ids, k)

    @staticmethod
    def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> Candidates:
        k = min(k, len(scores))
        if k <= 0:
            return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32))
        part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        # Ties break by id so the same query always gives the same list.
        order = part[np.lexsort((ids[part], -scores[part]))]
        return Candidates(ids[order], scores[order])
