"""The Milvus backend (`loupe.index.milvus`) on Milvus Lite: the VectorIndex protocol, checked
against exact search (top-k, filters, ties, padding), add/remove/replace, save and reopen, and a
library searching through it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, cli, make_folder

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from loupe import IndexOptions  # noqa: E402
from loupe import index as ann  # noqa: E402
from loupe.core.errors import LibraryError  # noqa: E402
from loupe.index import milvus as mv  # noqa: E402
from loupe.index.milvus import MilvusIndex, parse_spec  # noqa: E402

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One Milvus Lite database for the module (Lite runs in this process, one per file)."""
    return str(tmp_path_factory.mktemp("milvus") / "test.db")


@pytest.fixture(scope="module")
def data():
    """2000 vectors in clusters, ids with gaps. The last 40 are copies of the first 40 (same
    vector, another id), as copies of one picture are; the queries are not those vectors,
    whose order against their copy is float noise (in numpy as in Milvus)."""
    rng = np.random.default_rng(7)
    centres = unit(rng, 20)
    x = centres[rng.integers(0, 20, 2000)] + 0.35 * rng.standard_normal((2000, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64) * 3 + 5
    x[1960:] = x[:40]                       # ids 5 + 3*1960.. are copies of the first 40
    queries = np.concatenate([x[40:50], unit(rng, 10)])
    return ids, x, queries


@pytest.fixture
def flat(lite, data):
    ids, x, _ = data
    index = ann.build("Exact", DIM, ids, x)
    m = mv.build(f"milvus:{lite}?index=FLAT", DIM, ids, x)
    yield index, m
    m.drop()


def same(got, want, exact, queries, tol=1e-5):
    """`got` is an exact top-k: the scores of `want` (exact search) at every place, each id
    really scoring that, no id twice. Ids may differ from `want` only among rows tied within
    float noise (copies share a vector; which copy reaches the k-th place is noise)."""
    gi, gs = got
    wi, ws = want
    finite = np.isfinite(ws)
    np.testing.assert_array_equal(gi >= 0, finite)
    np.testing.assert_allclose(gs[finite], ws[finite], atol=tol)
    for r in range(len(gi)):
        row = gi[r][gi[r] >= 0]
        assert len(set(row.tolist())) == len(row)
        np.testing.assert_allclose(exact.vectors(row) @ queries[r], gs[r][: len(row)], atol=tol)
    return int((gi != wi).sum())


def test_spec_parsing():
    uri, opts = parse_spec("milvus:/data/x.db?index=hnsw&ef=128&collection=photos")
    assert uri == "/data/x.db" and opts["index"] == "HNSW" and opts["ef"] == 128
    assert opts["collection"] == "photos" and opts["M"] == 32
    assert parse_spec("milvus:http://milvus:19530")[0] == "http://milvus:19530"
    assert mv.absolute_spec("milvus:x/y.db?ef=3", "/base") == "milvus:/base/x/y.db?ef=3"
    assert mv.absolute_spec("milvus:/a/y.db", "/base") == "milvus:/a/y.db"
    assert mv.absolute_spec("milvus:http://h:19530?ef=3", "/b") == "milvus:http://h:19530?ef=3"
    for bad, why in [("milvus:", "give a Milvus Lite"), ("milvus:/x/data", "ending in .db"),
                     ("milvus:/x.db?index=PQ", "index must be"), ("milvus:/x.db?ef=0", "positive"),
                     ("milvus:/x.db?efs=3", "unknown option"), ("Flat", "not a Milvus spec"),
                     ("milvus:/x.db?collection=a-b", "letters")]:
        with pytest.raises(ValueError, match=why):
            parse_spec(bad)


def test_flat_equals_exact_topk_and_copies(flat, data):
    exact, m = flat
    _, _, queries = data
    assert len(m) == len(exact) == 2000
    np.testing.assert_array_equal(m.ids, exact.ids)
    for k in (1, 10, 50):
        same(m.search(queries, k), exact.search(queries, k), exact, queries)
    # A stored vector with a copy: the two come first, both scoring 1.
    ids, sc = m.search(data[1][:3], 2)
    assert [sorted(r) for r in ids.tolist()] == [[5 + 3 * i, 5 + 3 * (1960 + i)] for i in range(3)]
    np.testing.assert_allclose(sc, 1.0, atol=1e-5)


def test_filtered_search_equals_exact_filtered(flat, data, monkeypatch):
    exact, m = flat
    all_ids, _, queries = data
    rng = np.random.default_rng(3)
    subsets = [rng.choice(all_ids, n, replace=False) for n in (3, 40, 700)]
    subsets.append(np.concatenate([subsets[1], [10**9, 2, 4]]))   # unknown ids are ignored
    excl = all_ids[:15]
    for allowed in subsets:
        allowed = np.sort(allowed)
        for k in (5, 10):
            same(m.search(queries, k, allowed=allowed), exact.search(queries, k, allowed=allowed),
                 exact, queries)
            got = m.search(queries, k, allowed=allowed, exclude=excl)
            same(got, exact.search(queries, k, allowed=allowed, exclude=excl), exact, queries)
            assert np.isin(got[0][got[0] >= 0], np.setdiff1d(allowed, excl)).all()
    got = m.search(queries, 10, exclude=excl)
    same(got, exact.search(queries, 10, exclude=excl), exact, queries)
    assert not np.isin(got[0], excl).any()
    # Fewer allowed rows than k: all of them, then padding.
    ids, sc = m.search(queries[:1], 10, allowed=np.sort(subsets[0]))
    assert sorted(ids[0][:3].tolist()) == sorted(subsets[0].tolist())
    assert (ids[0][3:] == -1).all() and np.isneginf(sc[0][3:]).all()
    ids, _ = m.search(queries[:1], 10, allowed=np.array([10**9], np.int64))
    assert (ids == -1).all()
    # An allowed set larger than one expression holds: searched in parts, merged exactly.
    monkeypatch.setattr(mv, "MAX_IN_LIST", 64)
    big = np.sort(subsets[2])
    got = m.search(queries, 10, allowed=big)
    same(got, exact.search(queries, 10, allowed=big), exact, queries)
    assert np.isin(got[0], big).all()


def test_add_remove_replace_vectors(flat, data):
    exact, m = flat
    all_ids, x, queries = data
    gone = all_ids[100:400]
    m.remove(np.concatenate([gone, [10**9]]))
    exact.remove(gone)
    assert len(m) == len(exact) == 1700 and not np.isin(gone, m.ids).any()
    rng = np.random.default_rng(11)
    new = unit(rng, 5)
    fresh_ids = np.array([10**6, 10**6 + 1, 10**6 + 2], np.int64)
    replaced = all_ids[:2]
    m.add(np.concatenate([fresh_ids, replaced]), new)
    exact.add(np.concatenate([fresh_ids, replaced]), new)
    assert len(m) == len(exact) == 1703
    np.testing.assert_array_equal(m.ids, exact.ids)
    np.testing.assert_array_equal(m.vectors(replaced[::-1]), new[3:][::-1])
    same(m.search(queries, 10), exact.search(queries, 10), exact, queries)
    same(m.search(new, 3), exact.search(new, 3), exact, new)
    with pytest.raises(KeyError, match="not in the index"):
        m.vectors(gone[:2])


def test_save_reopen_and_rebuild_drops_the_old_collection(lite, data, tmp_path):
    ids, x, queries = data
    m = mv.build(f"milvus:{lite}?index=HNSW&M=16&ef=64", DIM, ids, x)
    m.save(tmp_path / "index")
    want = m.search(queries, 10)
    m.close()
    again = MilvusIndex.load(tmp_path / "index")
    assert again.collection == m.collection and again.spec == m.spec and len(again) == 2000
    got = again.search(queries, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    again.remove(ids[:10])
    again.save(tmp_path / "index")
    third = MilvusIndex.load(tmp_path / "index")
    assert len(third) == 1990 and not np.isin(ids[:10], third.ids).any()
    assert third.stats()["kind"] == "milvus" and third.stats()["params"]["index_type"] == "HNSW"
    # A rebuilt index (a new collection) saved over it: the collection it replaces is dropped.
    rebuilt = mv.build(m.spec, DIM, ids, x)
    rebuilt.save(tmp_path / "index")
    assert not rebuilt.client.has_collection(m.collection)
    assert MilvusIndex.load(tmp_path / "index").collection == rebuilt.collection
    rebuilt.drop()


def test_hnsw_recall_and_selective_filters_keep_k(lite, data):
    ids, x, queries = data
    exact = ann.build("Exact", DIM, ids, x)
    m = mv.build(f"milvus:{lite}?index=HNSW&M=16&ef=32", DIM, ids, x)
    m.flush()          # sealed: searched through its HNSW graph, not by brute force
    try:
        assert m._disk() > 0
        ann.measure_recall(m, sample=200)
        assert m.recall_at_10 is not None and m.recall_at_10 >= 0.9
        assert ann.measure_recall(m, sample=200, reference=(ids, x)) == pytest.approx(m.recall_at_10)
        allowed = np.sort(np.random.default_rng(5).choice(ids, 30, replace=False))
        got, _ = m.search(queries, 20, allowed=allowed)
        assert ((got >= 0).sum(axis=1) == 20).all()
        assert np.isin(got, allowed).all()
        want, _ = exact.search(queries, 20, allowed=allowed)
        hit = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(got, want, strict=True)])
        assert hit >= 0.9
    finally:
        m.drop()


def test_library_searches_through_milvus(tmp_path, lite):
    """`--index milvus:...` through the CLI, then a Library opened on it: the same top-k as
    exact search over the catalog's vectors, with and without filters; the snapshot saved as
    a connection and reopened; catch-up after a file is deleted and one is added; `auto` gives
    the local index back and the collection is dropped."""
    from loupe import Filters, Library
    from loupe.storage.vectors import SNAPSHOT_FILE

    root = tmp_path / "photos"
    files = make_folder(root, 7, sub="a") + make_folder(root, 5, start=7, sub="b")
    spec = f"milvus:{lite}?index=HNSW&collection=lib"
    res = cli("index", str(root), "--model", TINY, "--device", "cpu", "--index", spec, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] == 12

    lib = Library.open(root / ".loupe", device="cpu")
    index = lib.vectors_of_space.snapshot().index
    assert isinstance(index, MilvusIndex) and len(index) == 12
    saved = json.loads((lib.vectors_of_space.folder / SNAPSHOT_FILE).read_text())
    assert saved["spec"] == spec and lib.stats()["index"]["spec"] == spec
    gen = ann.base.current_generation(lib.vectors_of_space.folder / "index")
    assert sorted(f.name for f in gen.iterdir()) == ["ids.npy", "meta.json"]   # no vectors
    collection = index.collection

    def exact(vec, k, filters=None):
        ids, matrix = lib.catalog.load_matrix(lib.catalog.active_space(), len(vec))
        if filters is not None:
            keep = np.isin(ids, lib.catalog.filter_ids(filters))
            ids, matrix = ids[keep], matrix[keep]
        return ann.topk((matrix @ vec)[None], ids, k)

    only_b = Filters(folder="b")
    for f in files[:3] + files[9:10]:
        vec = lib.vectors([lib.id_of_path(f.relative_to(root).as_posix())])[0]
        for filters in (None, only_b):
            got = lib.search_vector(vec, 5, filters)
            want_ids, want_sc = exact(vec, 5, filters)
            assert got.ids.tolist() == want_ids[0].tolist()
            np.testing.assert_allclose(got.scores, want_sc[0], atol=1e-5)
    hit = lib.search(image=files[9], k=3, filters=only_b)          # the whole pipeline
    assert hit[0].path == files[9] and all(h.path.parent.name == "b" for h in hit)

    files[0].unlink()
    new = make_folder(root, 1, start=40, sub="b")[0]
    report = lib.index()
    assert (report.removed, report.added) == (1, 1) and lib.searchable() == 12
    index = lib.vectors_of_space.snapshot().index
    assert isinstance(index, MilvusIndex) and index.collection == collection   # caught up
    assert lib.search(image=new, k=1)[0].path == new
    assert all(h.path != files[0] for h in lib.search(image=files[1], k=12))

    lib.index(IndexOptions(index_spec="auto"))
    assert lib.stats()["index"]["spec"] == "Exact"
    assert not index.client.has_collection(collection)     # the replaced save's collection
    lib.close()


def test_bad_milvus_specs_are_refused_before_anything_changes(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_folder(root, 2)
    for spec, says in (("milvus:", "give a Milvus Lite file"),
                       ("milvus:photos.sqlite", "ending in .db"),
                       ("milvus:x.db?index=KD_TREE", "index must be one of"),
                       ("milvus:x.db?ef=many", "ef must be an integer"),
                       ("milvus:x.db?colour=red", "unknown option 'colour'")):
        res = cli("index", str(root), "--model", TINY, "--index", spec)
        assert res.exit_code == 2, res.output
        assert says in res.stderr and spec in res.stderr
        assert not (root / ".loupe").exists()      # the new library is not left behind

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pymilvus" else real(name, *a))
    res = cli("index", str(root), "--model", TINY, "--index", f"milvus:{tmp_path}/m.db")
    assert res.exit_code == 2
    assert "needs pymilvus" in res.stderr and "loupe-search[scale]" in res.stderr
    assert not (root / ".loupe").exists()


def test_missing_collection_is_an_error_the_library_rebuilds_from(lite, data, tmp_path):
    ids, x, _ = data
    m = mv.build(f"milvus:{lite}?index=FLAT", DIM, ids[:50], x[:50])
    m.save(tmp_path / "i")
    m.drop()
    with pytest.raises(FileNotFoundError, match="is gone"):
        MilvusIndex.load(tmp_path / "i")


def test_short_answers_are_redone_widened_then_exactly(flat, data, monkeypatch):
    """Milvus may return fewer than k rows under a very selective filter (an HNSW graph cut
    off): such rows are searched again with the search widened, and if still short, the
    allowed rows are scored exactly. Simulated here: Milvus answers with 2 hits at most."""
    exact, m = flat
    ids, _, queries = data
    m.opts["index"] = "HNSW"                       # FLAT is exact: never redone
    real = m._milvus_search
    calls = []

    def short(q, k, expr, widen, share=1.0):
        calls.append(widen)
        got_ids, got_sc = real(q, k, expr, widen, share)
        got_ids[:, 2:], got_sc[:, 2:] = -1, -np.inf
        return got_ids, got_sc

    monkeypatch.setattr(m, "_milvus_search", short)
    allowed = np.sort(ids[::7])
    got = m.search(queries, 10, allowed=allowed)
    assert calls == [False, True]
    same(got, exact.search(queries, 10, allowed=allowed), exact, queries)
    assert ((got[0] >= 0).sum(axis=1) == 10).all()


def test_a_lite_database_held_by_another_process_is_a_clear_error(tmp_path):
    """Milvus Lite locks its folder (flock on LOCK) for one process; a second one is told so."""
    import fcntl

    db = tmp_path / "held.db"
    db.mkdir()
    with open(db / "LOCK", "w") as held:        # what the other process's Milvus Lite holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(mv.MilvusUnavailable, match="one process per database file"):
            MilvusIndex(f"milvus:{db}", DIM).client.list_collections()


def test_a_milvus_failure_mid_search_is_one_clear_error(flat, data, monkeypatch):
    """A server error in the middle of a search (here: the collection dropped behind the
    index's back) reaches the faces as a LibraryError naming the URI and the collection,
    not a raw MilvusException."""
    _, m = flat
    _, _, queries = data
    m.client.drop_collection(m.collection)
    with pytest.raises(LibraryError, match=f"Milvus at .*search on collection {m.collection}"):
        m.search(queries[:1], 5)
    m._created = False
