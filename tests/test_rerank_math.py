"""SuperGlobal, alpha-QE and DBA against direct, loop-by-loop readings of their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.core.types import Candidates, Query
from loupe.index import dba
from loupe.search.stages.qe import AlphaQE, expand_query
from loupe.search.stages.superglobal import SuperGlobal, refine_scores


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, clusters: int, per: int, d: int, noise: float) -> tuple:
    centres = unit_rows(rng, clusters, d)
    x = np.repeat(centres, per, axis=0) + noise * rng.standard_normal((clusters * per, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.repeat(np.arange(clusters), per)


class VectorStore:
    """The vector half of the store protocol (loupe.search.stages.base.Store), in memory."""

    def __init__(self, matrix: np.ndarray):
        self.ids = np.arange(100, 100 + len(matrix), dtype=np.int64)  # ids are not row numbers
        self.matrix = matrix
        self.searches = 0

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.matrix[np.asarray(ids) - 100]

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids, self.matrix

    def search_vector(self, vec, k, filters=None, exclude=()) -> Candidates:
        self.searches += 1
        scores = self.matrix @ vec
        scores[np.isin(self.ids, list(exclude))] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return Candidates(self.ids[top], scores[top])


def first_stage(store: VectorStore, q: np.ndarray, k: int) -> Candidates:
    return store.search_vector(q, k)


# -- SuperGlobal ----------------------------------------------------------------

def superglobal_by_definition(q: np.ndarray, c: np.ndarray, k: int, beta: float) -> np.ndarray:
    """shared/methods.md, step by step, one candidate at a time, in float64."""
    q, c = q.astype(np.float64), c.astype(np.float64)
    m = len(c)
    refined = []
    for i in range(m):
        others = sorted((j for j in range(m) if j != i), key=lambda j: -float(c[i] @ c[j]))[:k]
        total, weight_sum = c[i].copy(), 1.0                       # itself, weight 1
        for j in others:
            w = beta * float(c[i] @ c[j])
            total += w * c[j]
            weight_sum += w
        refined.append(total / weight_sum)                          # not re-normalised
    s1 = [float(q @ d) for d in refined]
    best = sorted(range(m), key=lambda i: -s1[i])[: k + 1]
    expanded = np.array([max(refined[i][t] for i in best) for t in range(c.shape[1])])
    s2 = [float(expanded @ d) for d in refined]
    return np.array([(a + b) / 2 for a, b in zip(s1, s2, strict=True)])


@pytest.mark.parametrize(("m", "k", "beta"), [(60, 9, 0.15), (25, 4, 0.5), (7, 9, 0.15)])
def test_superglobal_matches_definition(m: int, k: int, beta: float) -> None:
    rng = np.random.default_rng(m)
    c = unit_rows(rng, m, 32)
    q = unit_rows(rng, 1, 32)[0]
    got = refine_scores(q, c, k=k, beta=beta, device="cpu")
    np.testing.assert_allclose(got, superglobal_by_definition(q, c, k, beta), atol=1e-5)


def test_superglobal_reranker_orders_by_refined_score() -> None:
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 200, 32)
    store = VectorStore(x)
    q = unit_rows(rng, 1, 32)[0]
    head = first_stage(store, q, 50)
    out = SuperGlobal(device="cpu").rerank(Query(vector=q), head, store)

    expected = superglobal_by_definition(q, store.vectors(head.ids), 9, 0.15)
    assert sorted(out.ids.tolist()) == sorted(head.ids.tolist())
    np.testing.assert_allclose(out.scores, np.sort(expected)[::-1], atol=1e-5)
    assert out.ids[0] == head.ids[int(np.argmax(expected))]


def test_superglobal_improves_a_clustered_ranking() -> None:
    # Queries far from their cluster's members but near its centre: neighbour
    # averaging should pull true members up (the reason the method exists).
    rng = np.random.default_rng(7)
    x, labels = clustered(rng, clusters=40, per=10, d=64, noise=0.15)
    store = VectorStore(x)
    before, after = [], []
    for cluster in range(40):
        centre = x[labels == cluster].mean(axis=0)
        q = centre + 0.15 * rng.standard_normal(64)
        q = (q / np.linalg.norm(q)).astype(np.float32)
        head = first_stage(store, q, 60)
        out = SuperGlobal(depth=60, device="cpu").rerank(Query(vector=q), head, store)
        before.append(average_precision(head.ids, labels, cluster))
        after.append(average_precision(out.ids, labels, cluster))
    assert np.mean(after) > np.mean(before) + 0.03


def average_precision(ids: np.ndarray, labels: np.ndarray, cluster: int) -> float:
    hits = labels[ids - 100] == cluster
    ranks = np.nonzero(hits)[0]
    return float(np.mean((np.arange(len(ranks)) + 1) / (ranks + 1))) if len(ranks) else 0.0


def test_superglobal_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="k must be > 0"):
        SuperGlobal(k=0)
    with pytest.raises(ValueError, match="beta"):
        SuperGlobal(beta=-1)


# -- alpha-QE ---------------------------------------------------------------------

def alpha_qe_by_definition(q: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    total = q.astype(np.float64).copy()                             # d_0 = q, weight 1
    for d in top.astype(np.float64):
        total += max(float(q @ d), 0.0) ** alpha * d
    return total / np.sqrt(sum(v * v for v in total))


@pytest.mark.parametrize(("n", "alpha"), [(1, 3.0), (5, 3.0), (10, 0.5)])
def test_alpha_qe_matches_definition(n: int, alpha: float) -> None:
    rng = np.random.default_rng(n)
    x, _ = clustered(rng, clusters=1, per=n, d=32, noise=0.3)     # all similar to q: weights > 0
    q = x.mean(axis=0) / np.linalg.norm(x.mean(axis=0))
    np.testing.assert_allclose(expand_query(q, x, alpha), alpha_qe_by_definition(q, x, alpha), atol=1e-5)


def test_alpha_qe_ignores_results_that_point_away() -> None:
    q = np.array([1.0, 0.0, 0.0], np.float32)
    away = np.array([[-0.6, 0.8, 0.0]], np.float32)
    np.testing.assert_allclose(expand_query(q, away, 3.0), q)


class FilteringStore(VectorStore):
    """A store whose filter is a set of allowed ids."""

    def search_vector(self, vec, k, filters=None, exclude=()) -> Candidates:
        self.searches += 1
        scores = self.matrix.astype(np.float64) @ vec
        allowed = self.ids if filters is None else np.array(sorted(filters))
        blocked = ~np.isin(self.ids, allowed) | np.isin(self.ids, list(exclude))
        scores[blocked] = -np.inf
        top = np.argsort(-scores, kind="stable")[: min(k, int((~blocked).sum()))]
        return Candidates(self.ids[top], scores[top])


def query_with_filters(vector: np.ndarray, filters, exclude=frozenset()) -> Query:
    # The fake store's filters are a set of allowed ids, not a loupe.Filters.
    return Query(vector=vector, exclude_ids=exclude, filters=filters)


def test_alpha_qe_searches_again_with_the_expanded_query() -> None:
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 300, 32)
    store = FilteringStore(x)
    q = unit_rows(rng, 1, 32)[0]
    excluded = frozenset({int(store.ids[5])})
    head = store.search_vector(q, 40, exclude=excluded)
    out = AlphaQE(n=3).rerank(query_with_filters(q, None, excluded), head, store)

    expanded = alpha_qe_by_definition(q, store.vectors(head.ids[:3]), 3.0)
    expected = np.argsort(-(x.astype(np.float64) @ expanded), kind="stable")
    expected = [int(store.ids[i]) for i in expected if int(store.ids[i]) not in excluded][:40]
    assert out.ids.tolist() == expected
    assert not set(out.ids.tolist()) <= set(head.ids.tolist())   # it found new ones
    assert store.searches == 2
    np.testing.assert_allclose(out.scores, store.vectors(out.ids) @ expanded, atol=1e-5)


def test_alpha_qe_second_search_keeps_the_first_stage_filters() -> None:
    rng = np.random.default_rng(4)
    store = FilteringStore(unit_rows(rng, 200, 16))
    q = unit_rows(rng, 1, 16)[0]
    allowed = set(store.ids[::3].tolist())
    head = store.search_vector(q, 20, filters=allowed)
    out = AlphaQE().rerank(query_with_filters(q, allowed), head, store)
    assert len(out) == 20 and set(out.ids.tolist()) <= allowed


# -- DBA --------------------------------------------------------------------------

def dba_by_definition(x: np.ndarray, k: int, alpha: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    out = np.zeros_like(x64)
    for i in range(len(x)):
        sims = [float(x64[i] @ x64[j]) for j in range(len(x))]
        nearest = [i] + sorted((j for j in range(len(x)) if j != i), key=lambda j: -sims[j])[: k - 1]
        total = sum(max(sims[j], 0.0) ** alpha * x64[j] for j in nearest)
        out[i] = total / np.linalg.norm(total)
    return out


@pytest.mark.parametrize(("k", "alpha"), [(1, 3.0), (5, 3.0), (8, 0.0)])
def test_dba_matches_definition(k: int, alpha: float) -> None:
    rng = np.random.default_rng(k)
    x, _ = clustered(rng, clusters=6, per=8, d=32, noise=0.4)
    got = dba.augment(x, k=k, alpha=alpha)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, dba_by_definition(x, k, alpha), atol=1e-5)


def test_dba_with_duplicate_rows_matches_definition() -> None:
    rng = np.random.default_rng(0)
    base = unit_rows(rng, 3, 16)
    x = np.vstack([base[0]] * 4 + [base[1], base[2]]).astype(np.float32)
    np.testing.assert_allclose(dba.augment(x, k=3, alpha=3.0), dba_by_definition(x, 3, 3.0), atol=1e-5)


def test_dba_approximate_knn_agrees_with_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x, _ = clustered(rng, clusters=50, per=40, d=32, noise=0.3)
    exact = dba.augment(x, k=10, alpha=3.0)
    monkeypatch.setattr(dba, "EXACT_KNN_MAX", 0)                    # force the HNSW path
    approx = dba.augment(x, k=10, alpha=3.0)
    agreement = np.einsum("ij,ij->i", exact, approx)
    assert np.median(agreement) > 0.9999 and agreement.min() > 0.98


def test_dba_edge_cases() -> None:
    assert dba.augment(np.zeros((0, 8), np.float32), k=5, alpha=3.0).shape == (0, 8)
    x = unit_rows(np.random.default_rng(0), 3, 8)
    np.testing.assert_allclose(dba.augment(x, k=50, alpha=0.0), dba_by_definition(x, 3, 0.0), atol=1e-5)
    with pytest.raises(ValueError):
        dba.augment(x, k=0, alpha=3.0)
