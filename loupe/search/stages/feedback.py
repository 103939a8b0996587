"""Relevance feedback (Rocchio, 1971): move the query toward what the user liked.

    q' = normalise(a * q + b * mean(liked) - c * mean(unliked)),  a = 1, b = 0.75, c = 0.25

A term whose set is empty is left out; without a query (a = 0, or no query
vector) the liked images alone make the query. The result is an ordinary query
vector: search with it as with any other (`store.search_vector`), leaving the
judged images out or not as the face prefers. Not a reranker: it runs before
the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loupe.core.types import Store

A, B, C = 1.0, 0.75, 0.25


def rocchio(query: np.ndarray | None, liked: np.ndarray | Sequence[np.ndarray] = (),
            unliked: np.ndarray | Sequence[np.ndarray] = (), a: float = A, b: float = B,
            c: float = C) -> np.ndarray:
    """The feedback query: normalise(a*q + b*mean(liked) - c*mean(unliked)), float32."""
    if query is None and np.asarray(liked).size == 0:
        raise ValueError("relevance feedback needs a query or at least one liked image")
    parts: list[np.ndarray] = []
    dim = None
    if query is not None:
        q = np.asarray(query, np.float64).reshape(-1)
        dim = len(q)
        parts.append(a * q)
    for weight, rows in ((b, liked), (-c, unliked)):
        rows = np.asarray(rows, np.float64)
        if rows.size == 0:
            continue
        rows = rows.reshape(-1, dim or rows.shape[-1])
        dim = rows.shape[1]
        parts.append(weight * rows.mean(axis=0))
    total = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-12:
        raise ValueError("relevance feedback cancelled out: the feedback query is zero")
    return (total / norm).astype(np.float32)


def feedback_query(store: Store, query: np.ndarray | None, liked: Sequence[int] = (),
                   unliked: Sequence[int] = (), a: float = A, b: float = B,
                   c: float = C) -> np.ndarray:
    """`rocchio` with the liked and unliked images given by id (their stored vectors)."""
    def rows(ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(list(ids), np.int64)
        return store.vectors(ids) if len(ids) else np.zeros((0, 0), np.float32)

    return rocchio(query, rows(liked), rows(unliked), a=a, b=b, c=c)
