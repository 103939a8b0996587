"""SuperGlobal refinement (Shao et al., ICCV 2023): global features only, no training.

Definition (shared/methods.md): for a shortlist c_1..c_M of the query q,
1. each c_i is replaced by d'_i = sum_j w_j c_j / sum_j w_j over its K+1 nearest
   neighbours inside the shortlist (itself included), w = 1 for itself and
   beta * s(c_i, c_j) for the others (not re-normalised);
2. s1_i = q . d'_i;
3. q' = element-wise max of the K+1 best d' by s1 (q itself not included);
   s2_i = q' . d'_i;
4. final score (s1_i + s2_i) / 2.
Cost O(M^2 D) per query, done as a few batched tensor operations on the CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from loupe.core.types import Candidates, Query
from loupe.models.device import resolve_device
from loupe.search.stages.base import Reranker, Store, check_positive


@dataclass
class SuperGlobal(Reranker):
    """Refine shortlist vectors by their neighbours and expand the query (fast, global only)."""

    name: ClassVar[str] = "superglobal"
    depth: int = 400
    k: int = 9
    beta: float = 0.15
    device: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, k=self.k)
        if self.beta < 0:
            raise ValueError(f"SuperGlobal: beta must be >= 0, got {self.beta!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        if len(candidates) < 2:
            return candidates
        scores = refine_scores(
            query.vector, store.vectors(candidates.ids), k=self.k, beta=self.beta, device=self.device
        )
        order = np.argsort(-scores, kind="stable")
        return Candidates(
            candidates.ids[order], scores[order], [candidates.boxes[i] for i in order]
        )


def refine_scores(
    query: np.ndarray, shortlist: np.ndarray, k: int = 9, beta: float = 0.15, device: str = "auto"
) -> np.ndarray:
    """SuperGlobal scores (s1 + s2) / 2 of each shortlist row, in the shortlist's order."""
    import torch

    with torch.inference_mode():
        return _refine(query, shortlist, k, beta, resolve_device(device))


def _refine(query: np.ndarray, shortlist: np.ndarray, k: int, beta: float, dev: Any) -> np.ndarray:
    import torch

    x = torch.as_tensor(np.ascontiguousarray(shortlist, dtype=np.float32), device=dev)
    q = torch.as_tensor(np.asarray(query, dtype=np.float32).reshape(-1), device=dev)
    if x.ndim != 2 or x.shape[1] != q.shape[0]:
        raise ValueError(f"shortlist {tuple(x.shape)} does not match a query of dim {q.shape[0]}")
    n = min(k + 1, x.shape[0])

    sim = x @ x.T
    # Rank each row's own entry first whatever its value, so an exact duplicate
    # cannot take the place of "itself" (whose weight is 1, not beta * s).
    ranked = sim.clone()
    ranked.fill_diagonal_(float("inf"))
    neighbours = ranked.topk(n, dim=1).indices                      # (M, n), column 0 = itself
    weights = beta * sim.gather(1, neighbours)
    weights[:, 0] = 1.0
    refined = torch.einsum("mn,mnd->md", weights, x[neighbours]) / weights.sum(1, keepdim=True)

    s1 = refined @ q
    expanded = refined[s1.topk(n).indices].amax(dim=0)
    s2 = refined @ expanded
    return ((s1 + s2) / 2).float().cpu().numpy()
