"""loupe.index: every kind behind one protocol, against exact numpy search.

Data: clustered unit vectors (a mixture of Gaussians in a 16-d subspace of 64-d, a shared offset
direction, small isotropic noise); queries come from the same distribution, not from the set.
10,000 vectors: the smallest set where a 0.1% filter still leaves k = 10 ids. The same checks on
a 100k x 128 set are marked slow (`pytest -m slow`).
"""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from loupe.index import (
    COMPACT_SHARE,
    EXACT_MAX_SCAN,
    ExactIndex,
    FaissIndex,
    VectorIndex,
    build,
    choose_spec,
    ivf_nlist,
    load,
    measure_recall,
)
from loupe.index import base as index_base

DIM = 64
N = 10_000
K = 10
IDS = np.arange(N, dtype=np.int64) * 7 + 3     # ids are not positions
IVF = f"IVF{ivf_nlist(N)},PQ16x4fs,Refine"
EXACT_KINDS = ["Exact", "Flat"]
ANN_KINDS = ["HNSW32", "HNSW32,SQ8,Refine", IVF]
ALL_KINDS = EXACT_KINDS + ANN_KINDS


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    space = np.random.default_rng(0)
    intr, clusters = 16, 200
    basis, _ = np.linalg.qr(space.normal(size=(dim, intr + 1)))
    centers = space.normal(size=(clusters, intr)) / np.sqrt(intr)
    rng = np.random.default_rng(seed)
    lat = centers[rng.integers(clusters, size=n)] + 0.7 * rng.normal(size=(n, intr)) / np.sqrt(intr)
    x = lat @ basis[:, :intr].T + 0.8 * basis[:, intr] + 0.03 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = clustered(N, seed=1)
Q = clustered(60, seed=2)


def numpy_topk(q, x, ids, k=K):
    """Reference: full sort by (-score, id)."""
    sc = q @ x.T
    order = np.lexsort((np.broadcast_to(ids, sc.shape), -sc), axis=1)[:, :k]
    return ids[order], np.take_along_axis(sc, order, axis=1)


def recall(got, want) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max((b >= 0).sum(), 1)
                          for a, b in zip(got, want, strict=True)]))


def assert_same_topk(ids, scores, ref_ids, ref_scores):
    """Equal to the reference; a swap is tolerated only between scores equal within 1e-6."""
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    differ = ids != ref_ids
    for r, c in zip(*np.nonzero(differ), strict=True):
        tied = np.abs(ref_scores[r] - ref_scores[r, c]) <= 1e-6
        assert ids[r, c] in ref_ids[r][tied], (r, c, ids[r], ref_ids[r])


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads wait on each other at every barrier: on a busy shared machine its
    k-means took 35 s of wall time for 6 s of CPU. These tests check results, not speed."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def built():
    return {spec: build(spec, DIM, IDS, X) for spec in ALL_KINDS}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_KINDS)
def test_every_kind_implements_the_protocol(built, spec):
    index = built[spec]
    assert isinstance(index, VectorIndex)
    assert index.spec == spec and index.dim == DIM and len(index) == N
    assert index.ids.dtype == np.int64 and np.array_equal(index.ids, IDS)
    ids, scores = index.search(Q[0], K)
    assert ids.shape == (K,) and ids.dtype == np.int64 and scores.dtype == np.float32
    ids, scores = index.search(Q, K)
    assert ids.shape == (len(Q), K) and scores.shape == (len(Q), K)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("spec", EXACT_KINDS)
def test_exact_kinds_equal_numpy(built, spec):
    ids, scores = built[spec].search(Q, K)
    assert_same_topk(ids, scores, *numpy_topk(Q, X, IDS))


@pytest.mark.parametrize("spec", ANN_KINDS)
def test_ann_recall_on_unseen_queries(built, spec):
    ids, scores = built[spec].search(Q, K)
    ref, _ = numpy_topk(Q, X, IDS)
    assert recall(ids, ref) >= 0.95
    # whatever came back is scored by the true inner product
    rows = np.stack([X[(r - 3) // 7] for r in ids.ravel()]).reshape(len(Q), K, DIM)
    np.testing.assert_allclose(scores, np.einsum("nkd,nd->nk", rows, Q), atol=1e-5)


@pytest.mark.parametrize("spec", ["Exact", "Flat", "HNSW32"])
def test_ties_break_to_the_lower_id(spec):
    x = clustered(200, seed=5)
    ids = np.arange(200, dtype=np.int64) + 100
    dup = x[10].copy()
    x[[50, 20, 90]] = dup                           # ids 150, 120, 190 tie with id 110
    index = build(spec, DIM, ids, x)
    got, scores = index.search(dup, 4)
    assert got.tolist() == [110, 120, 150, 190]
    assert np.all(scores == scores[0])


# -- add / remove / compaction -------------------------------------------------------------------


def small(spec, n=3000, seed=7):
    x = clustered(n, seed=seed)
    ids = np.arange(n, dtype=np.int64) * 2
    if spec.startswith("IVF"):
        spec = f"IVF{ivf_nlist(n)},PQ16x4fs,Refine"
    return build(spec, DIM, ids, x), ids, x


@pytest.mark.parametrize("spec", ALL_KINDS)
def test_add_and_remove_without_rebuild(spec):
    index, ids, x = small(spec)
    structure = getattr(index, "faiss_index", None)
    gone = ids[:300:3]
    index.remove(gone)
    index.remove(np.array([-5, 10**9]))                       # unknown ids are ignored
    assert len(index) == len(ids) - len(gone) and index.stats()["tombstones"] == len(gone)
    got, _ = index.search(x[:300:3], K)
    assert not np.isin(got, gone).any()
    got, _ = index.search(x[:300:3], K, allowed=ids[:600])   # filters too
    assert not np.isin(got, gone).any()
    with pytest.raises(KeyError, match=str(gone[1])):
        index.vectors(gone[:2])
    new = clustered(50, seed=8)
    new_ids = np.arange(50, dtype=np.int64) * 2 + 1
    index.add(new_ids, new)
    got, _ = index.search(new, 1)
    assert np.array_equal(got[:, 0], new_ids)
    # an id already present is replaced: same count, new vector, old vector no longer under it
    other = clustered(1, seed=11)
    index.add(ids[1:2], other)
    assert len(index) == len(ids) - len(gone) + 50
    np.testing.assert_array_equal(index.vectors(ids[1:2]), other)
    got, _ = index.search(other[0], 1)
    assert got[0] == ids[1]
    got, _ = index.search(x[1], K)
    assert ids[1] not in got
    assert index.stats()["rebuilds"] == 0
    assert getattr(index, "faiss_index", None) is structure


@pytest.mark.parametrize("spec", ["Exact", "Flat", "HNSW32,SQ8,Refine", "IVF"])
def test_compaction_keeps_results(spec):
    index, ids, x = small(spec)
    gone = ids[: int(len(ids) * (COMPACT_SHARE + 0.05))]
    index.remove(gone[:10])
    assert index.stats()["rebuilds"] == 0
    q = clustered(40, seed=9)
    index.remove(gone)
    st = index.stats()
    assert st["rebuilds"] == 1 and st["tombstones"] == 0 and st["count"] == len(ids) - len(gone)
    live = ~np.isin(ids, gone)
    got, scores = index.search(q, K)
    ref_ids, ref_scores = numpy_topk(q, x[live], ids[live])
    if index.kind in ("exact", "flat"):
        assert_same_topk(got, scores, ref_ids, ref_scores)
    else:
        assert recall(got, ref_ids) >= 0.95
    assert not np.isin(got, gone).any()
    np.testing.assert_array_equal(index.vectors(ids[live][:5]), x[live][:5])


def test_ivf_searches_exactly_until_it_can_train():
    index = build("IVF16,PQ16x4fs,Refine", DIM)
    assert index.train_min() == 16 * 39
    index.add(IDS[:600], X[:600])
    assert not index.faiss_index.is_trained
    got, scores = index.search(Q, K)
    assert_same_topk(got, scores, *numpy_topk(Q, X[:600], IDS[:600]))
    index.add(IDS[600:3000], X[600:3000])
    assert index.faiss_index.is_trained and index.faiss_index.ntotal == 3000
    assert recall(index.search(Q, K)[0], numpy_topk(Q, X[:3000], IDS[:3000])[0]) >= 0.95


# -- persistence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_KINDS)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_then_load_gives_identical_results(built, spec, mmap, tmp_path):
    index = built[spec]
    allowed = IDS[::5]
    before = index.search(Q, K), index.search(Q, K, allowed=allowed, exclude=IDS[:50])
    index.save(tmp_path / "ix")
    again = load(tmp_path / "ix", mmap=mmap)
    assert type(again) is type(index) and again.spec == spec and len(again) == N
    after = again.search(Q, K), again.search(Q, K, allowed=allowed, exclude=IDS[:50])
    for (a_ids, a_sc), (b_ids, b_sc) in zip(before, after, strict=True):
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_sc, b_sc)
    rows = again._rows.base
    assert isinstance(rows, np.memmap) == mmap
    np.testing.assert_array_equal(again.vectors(IDS[[5, 0, 9]]), X[[5, 0, 9]])
    assert again.stats()["disk_bytes"] > X.nbytes


def test_loaded_mmap_index_accepts_changes_and_saves_over_itself(built, tmp_path):
    built["HNSW32,SQ8,Refine"].save(tmp_path / "ix")
    index = load(tmp_path / "ix", mmap=True)
    index.remove(IDS[:10])
    index.add(np.array([1]), X[:1])
    index.save(tmp_path / "ix")                        # reads its own mapped rows while writing
    again = load(tmp_path / "ix")
    assert len(again) == N - 9 and again.search(X[0], 1)[0][0] == 1
    assert sorted(p.name for p in (tmp_path / "ix").iterdir() if not p.name.startswith("gen-")) \
        == ["CURRENT"]


def test_interrupted_save_keeps_the_previous_one(built, tmp_path, monkeypatch):
    folder = tmp_path / "ix"
    built["Flat"].save(folder)
    expect = built["Flat"].search(Q, K)
    # a crash halfway through writing: a temp folder with a partial file, CURRENT not switched
    (folder / ".tmp-crashed").mkdir()
    (folder / ".tmp-crashed" / "vectors.npy").write_bytes(b"partial")
    # and a crash after the new generation was renamed in, before CURRENT was replaced
    other = build("Exact", DIM, IDS[:10], X[:10])
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(index_base.os, "replace", crash)
    with pytest.raises(OSError):
        other.save(folder)
    monkeypatch.setattr(index_base.os, "replace", real_replace)
    again = load(folder)
    assert again.spec == "Flat" and len(again) == N
    np.testing.assert_array_equal(again.search(Q, K)[0], expect[0])
    other.save(folder)                                # the next save cleans the leftovers up
    assert len(load(folder)) == 10
    assert [p.name for p in folder.iterdir() if p.name != "CURRENT"] \
        == [(folder / "CURRENT").read_text().strip()]


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, path", [(s, "planner") for s in ALL_KINDS]
                         + [(s, "ann") for s in ALL_KINDS if s != "Exact"])   # Exact has no ANN path
@pytest.mark.parametrize("selectivity", [0.001, 0.01, 0.1, 0.5])
def test_filtered_search_matches_exact_filtered_topk(built, spec, selectivity, path, monkeypatch):
    index = built[spec]
    if path == "ann":
        monkeypatch.setattr(index, "filter_exact_max", lambda: 0)
    rng = np.random.default_rng(int(selectivity * 1000))
    allowed = np.sort(rng.choice(IDS, int(N * selectivity), replace=False))
    got, scores = index.search(Q, K, allowed=allowed)
    pos = (allowed - 3) // 7
    ref_ids, ref_scores = numpy_topk(Q, X[pos], allowed)
    assert (got >= 0).all()                                   # always k when k exist
    assert np.isin(got, allowed).all()
    if index.kind in ("exact", "flat") or path == "planner" and len(allowed) <= \
            index.filter_exact_max():
        assert_same_topk(got, scores, ref_ids, ref_scores)
    else:
        assert recall(got, ref_ids) >= 0.95


class ANNCalled(Exception):
    pass


def test_planner_scores_small_filters_exactly(built, monkeypatch):
    index = built["HNSW32,SQ8,Refine"]

    def ann(*args):
        raise ANNCalled

    monkeypatch.setattr(index, "_ann_search", ann)
    index.search(Q, K, allowed=IDS[: min(N, index.filter_exact_max())])
    monkeypatch.setattr(index, "filter_exact_max", lambda: 100)
    index.search(Q, K, allowed=IDS[:100])
    with pytest.raises(ANNCalled):
        index.search(Q, K, allowed=IDS[:101])


def test_hnsw_planner_scores_low_shares_exactly(built, monkeypatch):
    """Under HNSW_FILTER_MIN_SHARE of the rows the graph's filtered recall falls: such filters
    are scored exactly even when they hold more rows than the row threshold; IVF keeps the row
    threshold alone."""
    from loupe.index import base, faiss_index

    monkeypatch.setattr(faiss_index, "FILTER_EXACT_MAX_ROWS_SQ8", 10)
    monkeypatch.setattr(base, "FILTER_EXACT_MAX_ROWS", 10)
    hnsw = built["HNSW32,SQ8,Refine"]
    share = int(faiss_index.HNSW_FILTER_MIN_SHARE * len(hnsw))
    assert hnsw.filter_exact_max() == share

    def ann(*args):
        raise ANNCalled

    monkeypatch.setattr(hnsw, "_ann_search", ann)
    got, scores = hnsw.search(Q, K, allowed=IDS[:share])          # exact, and equal to numpy
    assert_same_topk(got, scores, *numpy_topk(Q, X[:share], IDS[:share]))
    with pytest.raises(ANNCalled):
        hnsw.search(Q, K, allowed=IDS[: share + 1])
    assert built[IVF].filter_exact_max() < share


def test_ann_short_of_k_falls_back_to_exact(built, monkeypatch):
    index = built[IVF]
    monkeypatch.setattr(index, "nprobe", 1)
    monkeypatch.setattr(index, "k_factor", 1)
    monkeypatch.setattr(index, "filter_exact_max", lambda: 0)
    redone = []
    exact_pos = index._exact_pos

    def spy(q, k, pos):
        redone.append(len(q))
        return exact_pos(q, k, pos)

    monkeypatch.setattr(index, "_exact_pos", spy)
    allowed = IDS[::400]          # 50 ids over 512 lists: the probed lists hold fewer than k
    got, scores = index.search(Q, K, allowed=allowed)
    assert sum(redone) > 0
    assert (got >= 0).all()
    pos = (allowed - 3) // 7
    assert_same_topk(got, scores, *numpy_topk(Q, X[pos], allowed))


@pytest.mark.parametrize("spec", ALL_KINDS)
def test_exclude_and_padding(built, spec):
    index = built[spec]
    top, _ = index.search(Q[:5], K)
    got, _ = index.search(Q[:5], K, exclude=top[:, 0])
    assert not np.isin(got, top[:, 0]).any() and (got >= 0).all()
    if index.kind in ("exact", "flat"):
        np.testing.assert_array_equal(got[:, : K - 1], top[:, 1:])
    few = np.array([IDS[3], IDS[10], IDS[77], 999_999_999])  # one unknown id
    got, scores = index.search(Q[:2], K, allowed=few, exclude=IDS[10:11])
    assert sorted(got[0, :2].tolist()) == [IDS[3], IDS[77]]
    assert (got[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
    got, scores = index.search(Q[:2], K, allowed=np.zeros(0, np.int64))
    assert (got == -1).all() and np.isneginf(scores).all()


def test_empty_index_and_k_larger_than_n():
    index = build("HNSW32", DIM)
    got, scores = index.search(Q[:3], 5)
    assert (got == -1).all() and np.isneginf(scores).all()
    index.add(IDS[:3], X[:3])
    got, _ = index.search(Q[:3], 5)
    assert (np.sort(got[:, :3], axis=1) == IDS[:3]).all() and (got[:, 3:] == -1).all()


# -- choose_spec / measure_recall ------------------------------------------------------------


def test_choose_spec_by_size_and_budget():
    edge = EXACT_MAX_SCAN // 512
    assert choose_spec(edge, 512) == "Exact"
    assert choose_spec(edge + 1, 512).startswith("HNSW32,SQ8")
    assert choose_spec(1_000_000, 512) == "HNSW32,SQ8,Refine"
    low = choose_spec(1_000_000, 512, memory_budget_bytes=200 * 2**20)
    assert low == f"IVF{ivf_nlist(1_000_000)},PQ128x4fs,Refine"
    assert choose_spec(1_000_000, 512, memory_budget_bytes=2**30) == "HNSW32,SQ8,Refine"
    with pytest.raises(ValueError):
        choose_spec(1_000_000, 512, memory_budget_bytes=10 * 2**20)
    for n in (1000, 50_000):
        spec = choose_spec(n, DIM, memory_budget_bytes=n * 20)
        index = build(spec, DIM, IDS[:n] if n <= N else None, X[:n] if n <= N else None)
        assert index.spec == spec


def test_measure_recall_is_stored_and_saved(built, tmp_path, monkeypatch):
    exact = build("Exact", DIM, IDS[:2000], X[:2000])
    assert "recall_at_10" not in exact.stats()
    assert measure_recall(exact, sample=200) == 1.0
    assert exact.stats()["recall_at_10"] == 1.0
    poor = built[IVF]                     # made poor: one list probed, no re-scoring margin
    monkeypatch.setattr(poor, "nprobe", 1)
    monkeypatch.setattr(poor, "k_factor", 1)
    monkeypatch.setattr(poor, "recall_at_10", None)
    r = measure_recall(poor, sample=300, seed=1)
    # by hand: the same sample, top-10 id sets against numpy
    pick = np.sort(np.random.default_rng(1).choice(poor.ids, 300, replace=False))
    got, _ = poor.search(poor.vectors(pick), K)
    want, _ = numpy_topk(X[(pick - 3) // 7], X, IDS)
    assert r == pytest.approx(recall(got, want)) and r < 0.95
    poor.save(tmp_path / "p")
    assert load(tmp_path / "p").stats()["recall_at_10"] == pytest.approx(r)


def test_stats_report_sizes(built, tmp_path):
    for spec, index in built.items():
        st = index.stats()
        assert st["spec"] == spec and st["count"] == N and st["tombstones"] == 0
        assert st["ram_bytes"] > 0 and st["disk_bytes"] >= 0
    hnsw = built["HNSW32,SQ8,Refine"].stats()["ram_bytes"]
    ivf = built[IVF].stats()["ram_bytes"]
    assert ivf < hnsw


def test_kinds_and_bad_input():
    assert isinstance(build("Exact", DIM), ExactIndex)
    assert isinstance(build("Flat", DIM), FaissIndex)
    with pytest.raises(ValueError):
        build("IDMap,Flat", DIM)
    index = build("Flat", DIM)
    with pytest.raises(ValueError):
        index.add(IDS[:2], X[:2, :10])
    with pytest.raises(ValueError):
        index.add(IDS[:3], X[:2])


# -- filtered exact search on SQ8 codes, rows read with pread -------------------------------------


def _spy_rows(index, monkeypatch) -> list[int]:
    """Record how many full-precision rows each read takes."""
    reads: list[int] = []
    take = index._rows.take

    def spy(pos):
        reads.append(len(pos))
        return take(pos)

    monkeypatch.setattr(index._rows, "take", spy)
    return reads


def test_sq8_filtered_search_is_exact_and_reads_only_a_short_list(built, monkeypatch):
    index = built["HNSW32,SQ8,Refine"]
    reads = _spy_rows(index, monkeypatch)
    allowed = IDS[::2]                                        # 5000 allowed rows
    assert len(allowed) <= index.filter_exact_max()           # the planner scores them exactly
    got, scores = index.search(Q, K, allowed=allowed)
    pos = (allowed - 3) // 7
    assert_same_topk(got, scores, *numpy_topk(Q, X[pos], allowed))
    assert len(reads) >= len(Q) and max(reads) < len(allowed) // 10   # codes first, few rows


def test_sq8_short_list_grows_until_nothing_left_out_can_win(monkeypatch):
    # 400 near-copies of one vector: their code scores all lie within the error bound of each
    # other, so the first short list (64) cannot prove itself and must grow.
    base = clustered(3000, seed=21)
    x = base.copy()
    x[:400] = base[0] + 0.002 * np.random.default_rng(3).normal(size=(400, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 3
    index = build("HNSW32,SQ8,Refine", DIM, ids, x)
    reads = _spy_rows(index, monkeypatch)
    q = base[:1] + 0.01 * np.random.default_rng(4).normal(size=(1, DIM)).astype(np.float32)
    got, scores = index.search(q, K, allowed=ids[::1])
    assert_same_topk(got, scores, *numpy_topk(q, x, ids))
    assert len(reads) > 1 and reads[-1] > 64                  # the short list grew


def test_sq8_error_bounds_are_saved_or_measured_again(built, tmp_path):
    index = built["HNSW32,SQ8,Refine"]
    resid = index._residuals()
    decoded = index.faiss_index.storage.sa_decode(index.faiss_index.storage.sa_encode(X))
    np.testing.assert_allclose(resid, np.linalg.norm(X - decoded, axis=1), rtol=1e-4, atol=1e-6)
    assert (resid >= np.linalg.norm(X - decoded, axis=1) - 1e-6).all()
    index.save(tmp_path / "ix")
    gen = index_base.current_generation(tmp_path / "ix")
    np.testing.assert_array_equal(load(tmp_path / "ix")._resid, resid)
    (gen / "sq_residuals.npy").unlink()                       # a save from before they existed
    again = load(tmp_path / "ix")
    assert again._resid is None
    allowed = IDS[1::3]
    got, scores = again.search(Q, K, allowed=allowed)
    np.testing.assert_array_equal(again._resid, resid)
    assert_same_topk(got, scores, *numpy_topk(Q, X[(allowed - 3) // 7], allowed))


def test_loaded_rows_are_read_with_pread_or_released(built, tmp_path, monkeypatch):
    built["Exact"].save(tmp_path / "ix")
    index = load(tmp_path / "ix", mmap=True)
    rows = index._rows
    assert rows._fd is not None
    np.testing.assert_array_equal(index.vectors(IDS[[9, 2, 7]]), X[[9, 2, 7]])   # pread
    monkeypatch.setattr(index_base, "PREAD_MAX_ROWS", 0)          # every read through the map,
    monkeypatch.setattr(index_base, "ROWS_MAPPED_MAX", 0)         # its pages dropped after it
    np.testing.assert_array_equal(index.vectors(IDS[[9, 2, 7]]), X[[9, 2, 7]])
    assert_same_topk(*index.search(Q, K), *numpy_topk(Q, X, IDS))
    index.add(np.array([1]), X[:1])                               # base + in-RAM tail
    np.testing.assert_array_equal(index.vectors(np.array([1, IDS[4]])), X[[0, 4]])


def test_sparse_and_dense_ids_find_the_same_rows():
    dense = build("Exact", DIM, np.arange(2000, dtype=np.int64), X[:2000])
    sparse = build("Exact", DIM, np.arange(2000, dtype=np.int64) * 10**9, X[:2000])
    assert dense._table() is not None and sparse._table() is None
    pick = np.sort(np.random.default_rng(5).choice(2000, 300, replace=False))
    for index, ids in ((dense, pick), (sparse, pick * 10**9)):
        asked = np.concatenate([ids, [-1, 2001 * 10**9, 5000]])    # unknown ids are ignored
        got, scores = index.search(Q, K, allowed=asked)
        assert_same_topk(got // (10**9 if index is sparse else 1), scores,
                         *numpy_topk(Q, X[pick], pick))
    dense.remove(pick[:10])
    assert not np.isin(dense.search(Q, K, allowed=pick)[0], pick[:10]).any()


# -- the same checks at a larger scale -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["HNSW32,SQ8,Refine", "IVF"])
def test_filtered_and_recall_at_100k(spec):
    n, dim = 100_000, 128
    x, q, ids = clustered(n, seed=31, dim=dim), clustered(40, seed=32, dim=dim), np.arange(n) * 3
    spec = f"IVF{ivf_nlist(n)},PQ32x4fs,Refine" if spec == "IVF" else spec
    index = build(spec, dim, ids, x)
    assert recall(index.search(q, K)[0], numpy_topk(q, x, ids)[0]) >= 0.95
    assert measure_recall(index, sample=300) >= 0.95
    for selectivity in (0.001, 0.01, 0.1, 0.5):
        allowed = np.sort(np.random.default_rng(7).choice(ids, int(n * selectivity), replace=False))
        got, scores = index.search(q, K, allowed=allowed)
        ref = numpy_topk(q, x[allowed // 3], allowed)
        assert (got >= 0).all() and np.isin(got, allowed).all()
        if len(allowed) <= index.filter_exact_max():
            assert_same_topk(got, scores, *ref)
        else:
            assert recall(got, ref[0]) >= 0.95


@pytest.mark.parametrize("spec", ["HNSW32,SQ8,Refine", "Flat"])
def test_changes_to_a_mapped_index_stay_outside_it_until_saved(built, spec, tmp_path):
    built[spec].save(tmp_path / "ix")
    index = load(tmp_path / "ix", mmap=True)
    structure = index.faiss_index
    new = clustered(40, seed=41)
    new_ids = np.arange(40, dtype=np.int64) * 7 + 5              # not among IDS
    index.add(new_ids, new)
    index.add(IDS[3:4], new[:1] * -1)                            # a replaced id
    index.remove(IDS[10:20])
    assert index.faiss_index is structure and structure.ntotal == N   # nothing re-read
    live_ids = np.concatenate([np.delete(IDS, np.r_[3, 10:20]), new_ids, IDS[3:4]])
    live_x = np.concatenate([np.delete(X, np.r_[3, 10:20], axis=0), new, -new[:1]])
    got, _ = index.search(new, 1)
    assert np.array_equal(got[:, 0], new_ids)
    allowed = np.sort(np.concatenate([IDS[::3], new_ids[::2]]))
    got, scores = index.search(Q, K, allowed=allowed)
    keep = np.isin(live_ids, allowed)
    assert_same_topk(got, scores, *numpy_topk(Q, live_x[keep], live_ids[keep]))
    if spec == "Flat":
        assert_same_topk(*index.search(Q, K), *numpy_topk(Q, live_x, live_ids))
    index.save(tmp_path / "ix")                                   # the save takes them in
    assert index.faiss_index.ntotal == N + 41
    again = load(tmp_path / "ix")
    np.testing.assert_array_equal(again.search(Q, K, allowed=allowed)[0], got)
