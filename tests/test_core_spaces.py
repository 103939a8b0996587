"""The engine core: embedding spaces, named migrations, the index chosen and recorded,
one writer per library, and a no-op index that loads no model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TEST_DATA, TINY, make_folder

from loupe import Filters, IndexOptions, Library, LibraryError

FIXTURE = TEST_DATA / "library-0.1.0"


@pytest.fixture
def old_library(tmp_path):
    """A library written by Loupe 0.1.0 (kept in tests/data), copied so it can be migrated."""
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_0_1_0_library_migrates_in_place_with_the_same_results(old_library):
    expected = json.loads((old_library / "expected.json").read_text())
    assert expected["loupe_version"] == "0.1.0"
    lib = Library.open(old_library / ".loupe", device="cpu")
    assert lib.catalog.migrated == ["m001_initial", "m002_embedding_spaces", "m003_epoch", "m004_path_bytes",
                                    "m005_text_fts"]
    (space,) = lib.catalog.spaces()
    assert (space["name"], space["vectors"], space["active"]) == ("loupe-tiny:random", 10, True)
    assert space["identity"]["pipeline"]["decode"] == "jpeg-draft>=image_size"
    for case in expected["queries"]:
        terms = dict(case["query"])
        filters = terms.pop("filters", None)
        hits = lib.search(**terms, k=5, filters=Filters(**filters) if filters else None)
        assert [h.meta["rel_path"] for h in hits] == [p for p, _ in case["hits"]], case["query"]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in case["hits"]], atol=1e-6)
    for f in old_library.rglob("*.*"):          # every file re-read and hashed, as after a fresh clone
        if ".loupe" not in f.parts:
            os.utime(f, (f.stat().st_mtime + 10, f.stat().st_mtime + 10))
    report = lib.index()
    assert (report.embedded, report.added, report.unchanged, report.errors) == (0, 0, 11, 1)
    assert lib.counts() == {"files": 12, "indexed": 11, "errors": 1, "vectors": 10}
    lib.close()
    again = Library.open(old_library / ".loupe", device="cpu")
    assert again.catalog.migrated == []          # recorded: a migration runs once
    assert [r[0] for r in again.catalog.db.execute("SELECT name FROM _migrations ORDER BY name")] \
        == ["m001_initial", "m002_embedding_spaces", "m003_epoch", "m004_path_bytes", "m005_text_fts"]


def test_vectors_are_keyed_by_space_and_content(old_library):
    lib = Library.open(old_library / ".loupe", device="cpu")
    identity = dict(lib.identity)
    other = {**identity, "source": "another-checkpoint"}
    second = lib.catalog.add_space("other-model", other)
    assert second != lib.catalog.active_space()
    assert lib.catalog.add_space("other-model", other) == second      # same identity, same space
    sha = lib.record(lib.resolve("a/img01.png"))["sha256"]
    with lib.catalog.transaction() as db:
        lib.catalog.put_vector(db, second, sha, np.ones(32, np.float32))
    spaces = {s["id"]: s for s in lib.catalog.spaces()}
    assert spaces[second]["vectors"] == 1 and not spaces[second]["active"]
    # the active space is untouched: same vector for that content, still searchable
    hit = lib.search(like="a/img01.png", k=1)
    assert hit and hit[0].meta["rel_path"] != "a/img01.png"   # itself excluded, others found
    assert lib.stats()["spaces"][0]["active"] and len(lib.stats()["spaces"]) == 2


def test_a_no_op_index_loads_no_model(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 8)
    Library.open(root / ".loupe", model=TINY, device="cpu").index()
    lib = Library.open(root / ".loupe", device="cpu")
    report = lib.index()
    assert (report.unchanged, report.embedded, report.model_loaded) == (8, 0, False)
    assert lib._encoders == {}
    make_folder(root, 1, start=50)
    report = lib.index()
    assert (report.added, report.model_loaded) == (1, True)


def test_one_writer_per_library(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)
    first = Library.open(root / ".loupe", model=TINY, device="cpu")
    first.index()
    second = Library.open(root / ".loupe", device="cpu")
    with first.writing():
        with pytest.raises(LibraryError, match="another process is indexing"):
            second.index()
        assert len(second.search(like="img0000.png", k=5)) == 2     # readers are never blocked
    assert second.index().unchanged == 3                            # free again once released


def test_index_kind_is_chosen_recorded_and_overridable(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 40)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index()
    stats = lib.stats()
    assert stats["index"]["spec"] == "Exact" and stats["index"]["count"] == 40
    exact = {i: lib.search(like=f"img{i:04d}.png", k=5) for i in range(0, 40, 7)}
    lib.index(IndexOptions(index_spec="HNSW16"))
    stats = lib.stats()
    assert stats["index"]["spec"].startswith("HNSW") and stats["index"]["count"] == 40
    state = lib.catalog.space_state(lib.catalog.active_space())
    assert state["index_override"] == "HNSW16" and 0.0 <= state["index"]["recall_at_10"] <= 1.0
    for i, hits in exact.items():    # 40 vectors: HNSW is exact here
        assert [h.id for h in lib.search(like=f"img{i:04d}.png", k=5)] == [h.id for h in hits]
    fresh = Library.open(root / ".loupe", device="cpu")
    assert fresh.stats()["index"]["spec"].startswith("HNSW")        # reopened from the saved index
    lib.index(IndexOptions(index_spec="auto"))
    assert lib.stats()["index"]["spec"] == "Exact"


def test_filters_travel_into_the_index(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 20, sub="a")
    make_folder(root, 20, start=100, sub="b")
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index(IndexOptions(index_spec="HNSW16"))
    for k in (1, 5, 20, 30):
        hits = lib.search("anything", k=k, filters=Filters(folder="b"))
        assert len(hits) == min(k, 20)                                # k come back when k exist
        assert all(h.meta["rel_path"].startswith("b/") for h in hits)
    q = lib.make_query("anything").vector
    ids, matrix = lib.all_vectors()
    allowed = np.array([lib.resolve(f"b/img{i:04d}.png") for i in range(100, 120)])
    scores = matrix[np.isin(ids, allowed)] @ q
    want = ids[np.isin(ids, allowed)][np.argsort(-scores, kind="stable")][:5]
    assert [h.id for h in lib.search("anything", k=5, filters=Filters(folder="b"))] == want.tolist()


def test_a_hit_deleted_after_the_snapshot_is_skipped(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 6)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index()
    lib.auto_refresh = False                           # as the server: the snapshot lags the catalog
    assert len(lib.search(like="img0001.png", k=10)) == 5
    victim = lib.resolve("img0002.png")
    with lib.catalog.transaction() as db:
        lib.catalog.delete_paths(db, ["img0002.png"])
    hits = lib.search(like="img0001.png", k=10)
    assert len(hits) == 4 and victim not in [h.id for h in hits]


def test_a_text_query_loads_only_the_text_tower_and_no_torch(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOUPE_MODEL_CACHE": str(tmp_path / "models")}
    env.pop("LOUPE_BACKEND", None)
    index = subprocess.run([sys.executable, "-m", "loupe.cli", "index", str(root), "--model", TINY,
                            "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert index.returncode == 0, index.stderr
    code = ("import sys, json; from loupe import Library\n"
            "lib = Library.open(sys.argv[1], device='cpu')\n"
            "hits = lib.search('a red bicycle', k=3)\n"
            "enc = next(iter(lib._encoders.values()))\n"
            "print(json.dumps([len(hits), 'torch' in sys.modules, 'open_clip' in sys.modules,\n"
            "                  sorted(enc.towers), enc.backend,\n"
            "                  'faiss.swigfaiss' in sys.modules, 'ftfy' in sys.modules,\n"
            "                  enc.text_tower.session._model_path.split('/')[-3]]))")
    runs = [subprocess.run([sys.executable, "-c", code, str(root / ".loupe")], env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    # the first text query exports the text tower once (torch); every later one needs none,
    # nor faiss (an exact index) nor ftfy (plain ASCII), and starts from ONNX Runtime's saved
    # optimised graph (loupe/models/ortcache.py)
    assert json.loads(runs[1].stdout) == [3, False, False, ["text"], "onnxruntime", False, False,
                                          "ort-optimized"]


def test_catch_up_follows_deletes_failures_and_rewrites(tmp_path):
    # A second process's snapshot catches up row by row (no rebuild): it must end holding
    # exactly the catalog's searchable rows after deletions, a file that now fails to
    # decode, a file whose content changed, and a new file.
    root = tmp_path / "photos"
    make_folder(root, 8)
    writer = Library.open(root / ".loupe", model=TINY, device="cpu")
    writer.index()
    reader = Library.open(root / ".loupe", device="cpu")
    before = reader.vectors_of_space.snapshot()
    assert sorted(before.index.ids.tolist()) == sorted(writer.resolve(f"img{i:04d}.png")
                                                          for i in range(8))
    changed = writer.resolve("img0003.png")
    (root / "img0001.png").unlink()                                      # deleted
    (root / "img0002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # now fails
    make_folder(root, 1, start=50)[0].replace(root / "img0003.png")     # new content, same path
    make_folder(root, 1, start=9)                                        # a new file
    writer.index(IndexOptions(prune=True))
    reader.refresh()
    snap = reader.vectors_of_space.snapshot()
    assert snap.index is before.index                   # caught up in place, not rebuilt
    want = writer.catalog.searchable_ids(writer.catalog.active_space())
    assert sorted(snap.index.ids.tolist()) == want.tolist()
    assert writer.resolve("img0002.png") not in want and changed in want
    got = reader.search(like="img0003.png", k=1)
    assert got == [] or got[0].id != changed            # itself excluded, its new vector used
    v = snap.index.vectors(np.array([changed]))[0]
    assert np.allclose(v, writer.vectors(np.array([changed]))[0], atol=1e-6)
