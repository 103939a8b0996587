"""Database-side augmentation (DBA), an index option computed offline.

Each database vector becomes normalise(sum over its k nearest neighbours,
itself included, of w_i * d_i) with w_i = max(s, 0)^alpha (alpha-DBA;
alpha = 0 gives the plain average). The core calls `augment` on its whole
searchable matrix each time it rebuilds that matrix, so adding or removing
images keeps every neighbour list current.
"""

from __future__ import annotations

import faiss
import numpy as np

DEFAULT_K = 10
DEFAULT_ALPHA = 3.0

# Above this many vectors an exact all-pairs kNN (O(N^2 D)) costs minutes;
# an HNSW graph gives the neighbour lists in O(N log N) with ~99% recall,
# which is all DBA needs (a missed far neighbour carries a tiny weight).
EXACT_KNN_MAX = 100_000
_CHUNK_ROWS = 16_384


def augment(matrix: np.ndarray, k: int = DEFAULT_K, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Return the DBA-augmented, L2-normalised copy of `matrix` (rows are L2-normalised vectors)."""
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {x.shape}")
    if k < 1 or alpha < 0:
        raise ValueError(f"DBA needs k >= 1 and alpha >= 0, got k={k}, alpha={alpha}")
    n = x.shape[0]
    if n == 0:
        return x.copy()
    k = min(k, n)
    sims, nbrs = _knn(x, k)
    valid = nbrs >= 0                      # HNSW may come back short for a few rows
    rows = np.arange(n)
    nbrs = np.where(valid, nbrs, rows[:, None])

    # "Itself included" is part of the definition, but a row's own index can be
    # missing: an exact duplicate can take its place, and HNSW can miss it.
    missing = ~((nbrs == rows[:, None]) & valid).any(axis=1)
    nbrs[missing, -1] = rows[missing]
    sims[missing, -1] = np.einsum("ij,ij->i", x[missing], x[missing])
    valid[missing, -1] = True

    weights = np.where(valid, np.maximum(sims, 0.0) ** alpha, 0.0).astype(np.float32)
    out = np.empty_like(x)
    # Chunks keep the gathered (rows, k, D) block small for a large library.
    for start in range(0, n, _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        out[start:stop] = np.einsum("nk,nkd->nd", weights[start:stop], x[nbrs[start:stop]])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] <= EXACT_KNN_MAX:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * k)
    index.add(x)
    sims, nbrs = index.search(x, k)
    return sims, nbrs
