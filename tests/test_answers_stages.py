"""Answer stages (cut-off, collapse, MMR, feedback, hubness) against hand computations of
their definitions in shared/methods.md."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.core.types import Candidates, Query
from loupe.search import pipeline
from loupe.search.stages.collapse import Collapse, components, linked_pairs
from loupe.search.stages.cutoff import Cutoff, gallery_ids, sample_ids
from loupe.search.stages.feedback import feedback_query, rocchio
from loupe.search.stages.hubness import (
    CAPTIONS,
    Hubness,
    QueryBank,
    activation_set,
    corrected_scores,
    image_bank,
    inverted_softmax,
    text_bank,
)
from loupe.search.stages.mmr import MMR, mmr_order


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class VectorStore:
    """The vector half of the store protocol, in memory; ids are not row numbers."""

    def __init__(self, matrix: np.ndarray, tmp=None):
        self.matrix = np.asarray(matrix, np.float32)
        self._ids = np.arange(100, 100 + len(matrix), dtype=np.int64)
        self.tmp = tmp

    def ids(self) -> np.ndarray:
        return self._ids

    def vectors(self, ids) -> np.ndarray:
        return self.matrix[np.asarray(ids, np.int64) - 100]

    def search_vector(self, vec, k, filters=None, exclude=()) -> Candidates:
        scores = self.matrix @ np.asarray(vec, np.float32)
        scores[np.isin(self._ids, list(exclude))] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        top = top[np.isfinite(scores[top])]
        return Candidates(self._ids[top], scores[top])

    def cache_dir(self, name: str):
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# --- cut-off -------------------------------------------------------------------------------

def hand_z(store: VectorStore, q: np.ndarray, ids: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """z = (s - mean) / std of the query's scores on the sample, one loop, float64."""
    sample_scores = [float(np.dot(store.vectors([i])[0], q)) for i in sample]
    mu = sum(sample_scores) / len(sample_scores)
    sigma = (sum((x - mu) ** 2 for x in sample_scores) / len(sample_scores)) ** 0.5
    return np.array([(float(np.dot(store.vectors([i])[0], q)) - mu) / sigma for i in ids])


def test_cutoff_confidence_is_z_over_the_gallery_sample() -> None:
    rng = np.random.default_rng(0)
    store = VectorStore(unit_rows(rng, 300, 16))
    q = unit_rows(rng, 1, 16)[0]
    first = store.search_vector(q, 50)
    stage = Cutoff(keep=True, sample=1000, side="query")          # sample larger than the gallery: all of it
    out = stage.rerank(Query(vector=q), first, store)
    np.testing.assert_array_equal(out.ids, first.ids)
    np.testing.assert_allclose(out.confidence, hand_z(store, q, first.ids, store.ids()), atol=1e-5)


def test_cutoff_sample_is_fixed_and_leaves_out_the_query_image() -> None:
    rng = np.random.default_rng(1)
    store = VectorStore(unit_rows(rng, 500, 8))
    ids = sample_ids(store, 100, seed=3)
    assert len(ids) == 100 and len(set(ids.tolist())) == 100
    assert set(ids.tolist()) <= set(store.ids().tolist())
    np.testing.assert_array_equal(ids, sample_ids(store, 100, seed=3))
    assert not np.array_equal(ids, sample_ids(store, 100, seed=4))
    own = int(ids[0])
    q = store.vectors([own])[0]
    first = store.search_vector(q, 20, exclude=(own,))
    out = Cutoff(keep=True, sample=100, seed=3, side="query").rerank(
        Query(vector=q, exclude_ids=frozenset({own})), first, store)
    expected = hand_z(store, q, first.ids, ids[ids != own])
    np.testing.assert_allclose(out.confidence, expected, atol=1e-5)


def test_cutoff_median_statistic() -> None:
    rng = np.random.default_rng(2)
    store = VectorStore(unit_rows(rng, 101, 8))
    q = unit_rows(rng, 1, 8)[0]
    first = store.search_vector(q, 10)
    out = Cutoff(keep=True, statistic="median", side="query").rerank(Query(vector=q), first, store)
    scores = np.sort(store.matrix.astype(np.float64) @ q)
    med = scores[50]                                          # 101 values: the 51st
    mad = np.sort(np.abs(scores - med))[50]
    expected = (store.vectors(first.ids).astype(np.float64) @ q - med) / (1.4826 * mad)
    np.testing.assert_allclose(out.confidence, expected, atol=1e-4)


@pytest.mark.parametrize("threshold", [0.5, 1.5, 2.5, 3.0])
def test_cutoff_never_drops_a_result_that_clears_the_threshold(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 10))
    matrix = unit_rows(rng, 400, 64)
    matrix[:15] = matrix[0] + 0.5 * unit_rows(rng, 15, 64)   # a cluster: some results stand out
    store = VectorStore(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    q = store.matrix[0]
    z_all = hand_z(store, q, store.ids(), store.ids())
    cleared = set(store.ids()[z_all >= threshold].tolist())
    assert 0 < len(cleared) < 400
    result = pipeline.run(Query(vector=q), store, k=400,
                          stages=[Cutoff(threshold=threshold, depth=400, side="query")])
    assert set(result.ids.tolist()) == cleared       # all that clear it; none that do not
    kept = Cutoff(threshold=threshold, depth=400, side="query").rerank(
        Query(vector=q), store.search_vector(q, 400), store)
    assert np.all(kept.confidence >= threshold - 1e-6)


def test_cutoff_with_no_confident_match_returns_nothing() -> None:
    rng = np.random.default_rng(5)
    store = VectorStore(unit_rows(rng, 300, 64))
    q = unit_rows(rng, 1, 64)[0]                  # unrelated to every row
    first = store.search_vector(q, 100)
    z = hand_z(store, q, first.ids[:1], store.ids())[0]
    assert z < 4.0
    assert len(Cutoff(threshold=4.0, side="query").rerank(Query(vector=q), first, store)) == 0
    assert len(pipeline.run(Query(vector=q), store, k=10,
                            stages=[Cutoff(threshold=4.0, side="query")])) == 0


def test_cutoff_keeps_what_spatial_verified_and_keep_drops_nothing(tmp_path) -> None:
    rng = np.random.default_rng(6)
    store = VectorStore(unit_rows(rng, 200, 16), tmp_path)
    q = unit_rows(rng, 1, 16)[0]
    first = store.search_vector(q, 20)
    # As Spatial leaves it: verified candidates first, inlier counts as scores, with boxes.
    scores = first.scores.copy()
    scores[:2] = [40.0, 16.0]
    boxes = [(0.0, 0.0, 5.0, 5.0), (1.0, 1.0, 4.0, 4.0)] + [None] * 18
    verified = Candidates(first.ids, scores, boxes)
    out = Cutoff(threshold=50.0).rerank(Query(vector=q), verified, store)
    np.testing.assert_array_equal(out.ids, first.ids[:2])
    assert out.boxes == boxes[:2]
    np.testing.assert_array_equal(out.scores, [40.0, 16.0])      # scores are left as they came
    fewer = Cutoff(threshold=50.0, inliers=20).rerank(Query(vector=q), verified, store)
    np.testing.assert_array_equal(fewer.ids, first.ids[:1])
    unboxed = Candidates(first.ids, scores, [None] * 20)        # not spatial's mark: z decides
    assert len(Cutoff(threshold=50.0).rerank(Query(vector=q), unboxed, store)) == 0
    everything = Cutoff(threshold=50.0, keep=True).rerank(Query(vector=q), first, store)
    np.testing.assert_array_equal(everything.ids, first.ids)
    assert np.all(everything.confidence < 50.0)


def hand_gallery_z(store: VectorStore, q: np.ndarray, ids, bank_ids, exclude=()) -> np.ndarray:
    """z of s(q, d) among the scores the bank's queries give d (d itself and `exclude` left out)."""
    out = []
    for d in ids:
        v = store.vectors([d])[0]
        cohort = [float(np.dot(store.vectors([b])[0], v)) for b in bank_ids
                  if b != d and b not in exclude]
        mu = sum(cohort) / len(cohort)
        sigma = (sum((x - mu) ** 2 for x in cohort) / len(cohort)) ** 0.5
        out.append((float(np.dot(v, q)) - mu) / sigma)
    return np.array(out)


def test_cutoff_gallery_side_and_both_by_hand(tmp_path) -> None:
    rng = np.random.default_rng(18)
    store = VectorStore(unit_rows(rng, 150, 12), tmp_path)
    bank = sample_ids(store, 100, seed=2)
    own = int(bank[5])                   # a query by an indexed image that the bank holds
    q = store.vectors([own])[0]
    query = Query(vector=q, exclude_ids=frozenset({own}))
    first = store.search_vector(q, 30, exclude=(own,))
    gallery = Cutoff(keep=True, sample=100, seed=2, side="gallery").rerank(query, first, store)
    expected = hand_gallery_z(store, q, first.ids, bank, exclude={own})
    np.testing.assert_allclose(gallery.confidence, expected, atol=1e-4)
    both = Cutoff(keep=True, sample=100, seed=2, side="both").rerank(query, first, store)
    query_side = hand_z(store, q, first.ids, bank[bank != own])
    np.testing.assert_allclose(both.confidence, (expected + query_side) / 2, atol=1e-4)
    cut = Cutoff(threshold=1.0, sample=100, seed=2).rerank(query, first, store)
    np.testing.assert_array_equal(cut.ids, first.ids[expected >= 1.0])
    assert 0 < len(cut) < len(first)
    text = Query(vector=q, text="a cat")
    with pytest.raises(ValueError, match="text query bank"):
        Cutoff().rerank(text, first, store)
    captions = QueryBank(unit_rows(rng, 40, 12), np.full(40, -1))
    by_text = Cutoff(keep=True, text_bank=captions).rerank(text, first, store)
    sims = store.vectors(first.ids).astype(np.float64) @ captions.vectors.T.astype(np.float64)
    want = (store.vectors(first.ids) @ q - sims.mean(1)) / sims.std(1)
    np.testing.assert_allclose(by_text.confidence, want, atol=1e-4)


def test_gallery_ids_of_the_project_stores(tmp_path) -> None:
    from loupe.storage.memory import MemoryStore

    rng = np.random.default_rng(7)
    store = MemoryStore([tmp_path / f"{i}.png" for i in range(5)], unit_rows(rng, 5, 4), tmp_path)
    np.testing.assert_array_equal(np.sort(gallery_ids(store)), np.arange(5))
    with pytest.raises(TypeError):
        gallery_ids(object())


# --- collapse ------------------------------------------------------------------------------

def test_collapse_groups_are_connected_components_with_the_best_member_first() -> None:
    d = 8
    e = np.eye(d, dtype=np.float32)
    # a ~ b and b ~ c (cosine 0.96) but a !~ c (0.84): one group through b.
    t = np.arccos(0.96)
    a = e[0]
    b = np.cos(t) * e[0] + np.sin(t) * e[1]
    c = np.cos(2 * t) * e[0] + np.sin(2 * t) * e[1]
    assert float(a @ c) < 0.95 <= float(a @ b)
    x = e[2]
    y = np.cos(0.1) * e[3] + np.sin(0.1) * e[4]
    y2 = e[3]
    matrix = np.stack([a, b, c, x, y, y2]).astype(np.float32)
    store = VectorStore(matrix)
    ranked = Candidates(np.array([103, 102, 100, 105, 101, 104]),
                        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]))
    out = Collapse(threshold=0.95).rerank(Query(vector=e[0]), ranked, store)
    # groups: {x}=103, {c, a, b}: representative c=102 (ranked first of them), {y2, y}: 105
    np.testing.assert_array_equal(out.ids, [103, 102, 105])
    np.testing.assert_array_equal(out.groups, [103, 102, 105])
    np.testing.assert_array_equal(out.group_size, [1, 3, 2])
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.6])
    kept = Collapse(threshold=0.95, keep=True).rerank(Query(vector=e[0]), ranked, store)
    np.testing.assert_array_equal(kept.ids, [103, 102, 100, 101, 105, 104])
    np.testing.assert_array_equal(kept.groups, [103, 102, 102, 102, 105, 105])
    np.testing.assert_array_equal(kept.group_size, [1, 3, 3, 3, 2, 2])
    # Through the pipeline the members do not come back from the tail.
    merged = pipeline.apply([Collapse(threshold=0.95, depth=6)], Query(vector=e[0]), ranked,
                            store)
    np.testing.assert_array_equal(merged.ids, [103, 102, 105])


def test_components_match_a_graph_search() -> None:
    rng = np.random.default_rng(8)
    for n in (1, 7, 40):
        pairs = rng.integers(0, n, (n // 2, 2))
        labels = components(n, pairs)
        adj = {i: set() for i in range(n)}
        for a, b in pairs:
            adj[int(a)].add(int(b))
            adj[int(b)].add(int(a))
        seen: dict[int, int] = {}
        for start in range(n):                     # numbered by their smallest node
            if start in seen:
                continue
            label = len(set(seen.values()))
            stack = [start]
            while stack:
                v = stack.pop()
                if v not in seen:
                    seen[v] = label
                    stack.extend(adj[v])
        np.testing.assert_array_equal(labels, [seen[i] for i in range(n)])


def test_linked_pairs_by_threshold() -> None:
    rng = np.random.default_rng(9)
    x = unit_rows(rng, 30, 3)
    pairs = linked_pairs(x, 0.8)
    expected = {(i, j) for i in range(30) for j in range(i + 1, 30) if float(x[i] @ x[j]) >= 0.8}
    assert {tuple(p) for p in pairs.tolist()} == expected


# --- MMR -----------------------------------------------------------------------------------

def mmr_by_definition(q: np.ndarray, x: np.ndarray, lam: float) -> list[int]:
    picked: list[int] = []
    left = list(range(len(x)))
    while left:
        def gain(d: int) -> float:
            penalty = max((float(x[d] @ x[p]) for p in picked), default=0.0)
            return lam * float(q @ x[d]) - (1 - lam) * penalty
        best = max(left, key=lambda d: (gain(d), -d))       # ties: the earlier
        picked.append(best)
        left.remove(best)
    return picked


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_matches_its_definition(lam: float) -> None:
    rng = np.random.default_rng(int(lam * 10))
    x = unit_rows(rng, 25, 6).astype(np.float64)
    q = unit_rows(rng, 1, 6)[0].astype(np.float64)
    assert mmr_order(q, x, lam).tolist() == mmr_by_definition(q, x, lam)


def test_mmr_stage_reorders_and_keeps_scores() -> None:
    rng = np.random.default_rng(11)
    store = VectorStore(unit_rows(rng, 60, 8))
    q = unit_rows(rng, 1, 8)[0]
    first = store.search_vector(q, 30)
    out = MMR(lam=0.5, depth=30).rerank(Query(vector=q), first, store)
    order = mmr_by_definition(q.astype(np.float64), store.vectors(first.ids).astype(np.float64),
                              0.5)
    np.testing.assert_array_equal(out.ids, first.ids[order])
    np.testing.assert_array_equal(out.scores, first.scores[order])
    assert out.ids.tolist() != first.ids.tolist()
    with pytest.raises(ValueError):
        MMR(lam=1.5)


# --- feedback ------------------------------------------------------------------------------

def test_rocchio_by_hand() -> None:
    q = np.array([1.0, 0.0, 0.0])
    pos = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    neg = np.array([[1.0, 0.0, 0.0]])
    got = rocchio(q, pos, neg)               # 1*q + 0.75*(0, .5, .5) - 0.25*(1, 0, 0)
    expected = np.array([0.75, 0.375, 0.375])
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-6)
    np.testing.assert_allclose(rocchio(q, pos, (), a=2, b=1), np.array([2, .5, .5]) / np.sqrt(4.5),
                               atol=1e-6)
    np.testing.assert_allclose(rocchio(None, pos), np.array([0, 1, 1]) / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError):
        rocchio(None, (), neg)               # nothing to move toward
    with pytest.raises(ValueError):
        rocchio(q, (), [[4.0, 0.0, 0.0]])    # 1*q - 0.25*(4, 0, 0) = 0


def test_feedback_query_reads_the_judged_vectors() -> None:
    rng = np.random.default_rng(12)
    store = VectorStore(unit_rows(rng, 10, 5))
    q = unit_rows(rng, 1, 5)[0]
    got = feedback_query(store, q, liked=[101, 103], unliked=[107])
    np.testing.assert_allclose(got, rocchio(q, store.matrix[[1, 3]], store.matrix[[7]]), atol=1e-6)


# --- hubness -------------------------------------------------------------------------------

def test_inverted_softmax_scores_by_hand() -> None:
    rng = np.random.default_rng(13)
    results = unit_rows(rng, 6, 4)
    bank = QueryBank(unit_rows(rng, 9, 4), np.full(9, -1))
    q = unit_rows(rng, 1, 4)[0]
    s = results @ q
    t = 0.1
    got = corrected_scores(s, np.arange(6), results, bank, t, "full")
    literal = [np.exp(s[g] / t) / sum(np.exp(float(bank.vectors[b] @ results[g]) / t)
                                      for b in range(9)) for g in range(6)]
    np.testing.assert_allclose(got, t * np.log(literal), atol=1e-5)
    np.testing.assert_allclose(inverted_softmax(s, bank.vectors @ results.T, t), literal, rtol=1e-5)


def test_an_image_bank_leaves_the_result_itself_out() -> None:
    rng = np.random.default_rng(14)
    gallery = unit_rows(rng, 5, 4)
    bank = QueryBank(gallery, np.arange(100, 105))
    s = np.array([0.3, 0.2])
    got = corrected_scores(s, np.array([100, 102]), gallery[[0, 2]], bank, 0.5, "full")
    for row, (g, own) in enumerate(((0, 100), (2, 102))):
        others = [b for b in range(5) if 100 + b != own]
        denom = sum(np.exp(float(gallery[b] @ gallery[g]) / 0.5) for b in others)
        assert got[row] == pytest.approx(0.5 * np.log(np.exp(s[row] / 0.5) / denom), abs=1e-5)


def test_dynamic_modes_by_hand() -> None:
    rng = np.random.default_rng(15)
    results = unit_rows(rng, 4, 4)
    bank = QueryBank(unit_rows(rng, 5, 4), np.full(5, -1), hubs=np.array([1, 3]))
    s = np.array([0.5, 0.9, 0.1, 0.2])
    t = 0.2
    full = corrected_scores(s, np.arange(4), results, bank, t, "full")
    # top-1 by cosine is result 1, a hub: the whole query is normalised
    np.testing.assert_allclose(corrected_scores(s, np.arange(4), results, bank, t, "dynamic"), full)
    s2 = np.array([0.95, 0.9, 0.1, 0.2])            # top-1 is result 0, not a hub: cosine stands
    np.testing.assert_allclose(corrected_scores(s2, np.arange(4), results, bank, t, "dynamic"), s2)
    item = corrected_scores(s, np.arange(4), results, bank, t, "dynamic-item")
    for g in range(4):
        if g in (1, 3):
            mean_exp = np.mean([np.exp(float(v @ results[g]) / t) for v in bank.vectors])
            assert item[g] == pytest.approx(s[g] - t * np.log(mean_exp), abs=1e-5)
        else:
            assert item[g] == pytest.approx(s[g])


def test_activation_set_and_the_stage(tmp_path) -> None:
    rng = np.random.default_rng(16)
    store = VectorStore(unit_rows(rng, 80, 6), tmp_path)
    bank = image_bank(store, 30, seed=1, hubs=True)
    assert len(bank) == 30 and set(bank.ids.tolist()) <= set(store.ids().tolist())
    expected = set()
    for v, own in zip(bank.vectors, bank.ids, strict=True):
        scores = {int(i): float(store.vectors([i])[0] @ v) for i in store.ids() if i != own}
        expected.add(max(scores, key=scores.get))
    assert set(activation_set(store, bank).tolist()) == expected == set(bank.hubs.tolist())
    assert image_bank(store, 30, seed=1, hubs=True) is bank          # kept per gallery
    saved = list((tmp_path / "hubness").glob("image-bank-*.npy"))
    assert len(saved) == 1 and set(np.load(saved[0]).tolist()) == expected   # and on disk
    q = unit_rows(rng, 1, 6)[0]
    first = store.search_vector(q, 40)
    out = Hubness(temperature=0.1, mode="full", bank_size=30, seed=1).rerank(
        Query(vector=q, exclude_ids=frozenset({999})), first, store)
    want = corrected_scores(first.scores, first.ids, store.vectors(first.ids), bank, 0.1, "full")
    order = np.argsort(-want, kind="stable")
    np.testing.assert_array_equal(out.ids, first.ids[order])
    np.testing.assert_allclose(out.scores, want[order], atol=1e-5)


def test_text_queries_use_the_caption_bank(tmp_path) -> None:
    rng = np.random.default_rng(17)
    store = VectorStore(unit_rows(rng, 50, 6), tmp_path)
    table = {c: unit_rows(np.random.default_rng(i), 1, 6)[0] for i, c in enumerate(CAPTIONS)}
    bank = text_bank(lambda texts: np.stack([table[t] for t in texts]), store)
    assert len(bank) == len(CAPTIONS) >= 1000 and np.all(bank.ids == -1)
    assert bank.hubs is not None and len(bank.hubs) > 0
    q = unit_rows(rng, 1, 6)[0]
    first = store.search_vector(q, 20)
    text_query = Query(vector=q, text="a dog")
    with pytest.raises(ValueError, match="text query bank"):
        Hubness().rerank(text_query, first, store)
    out = Hubness(mode="full", temperature=0.05, text_bank=bank).rerank(text_query, first, store)
    want = corrected_scores(first.scores, first.ids, store.vectors(first.ids), bank, 0.05, "full")
    np.testing.assert_array_equal(out.ids, first.ids[np.argsort(-want, kind="stable")])
