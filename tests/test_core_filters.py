"""Filters as SQL: the folder filter is a range on the path index (not a scan), and the search
path skips the status check that the index makes redundant."""

from __future__ import annotations

import numpy as np

from loupe.core.types import Filters
from loupe.library import Library
from loupe.storage.catalog import Catalog

TINY = "loupe-tiny:random"
PATHS = ["a/1.jpg", "a/b/2.jpg", "ab/3.jpg", "a0/4.jpg", "A/5.jpg", "a.jpg", "b/a/6.jpg",
         "a%_/7.jpg", "a%_x/8.jpg"]


def _lib(tmp_path) -> Library:
    lib = Library.open(tmp_path / ".loupe", model=TINY, device="cpu")
    dim = lib.encoder.dim
    rng = np.random.default_rng(0)
    rows = []
    for i, rel in enumerate(PATHS):
        v = rng.normal(size=dim).astype(np.float32)
        rows.append((rel, f"{i:064x}", v / np.linalg.norm(v), {"size": 10, "format": "JPEG"}))
    lib.add_embedded(rows)
    with lib.catalog.transaction() as db:                     # a file that failed to decode
        Catalog.put_image(db, "a/broken.jpg", 5, 0.0, sha=None, error="truncated")
    return lib


def test_folder_filter_is_an_exact_prefix_on_the_path_index(tmp_path):
    lib = _lib(tmp_path)
    cat = lib.catalog

    def rels(f, **kw):
        ids = cat.filter_ids(f, **kw)
        return sorted(cat.record(int(i))["path"] for i in ids)

    assert rels(Filters(folder="a")) == ["a/1.jpg", "a/b/2.jpg"]       # not ab/, a0/, A/, a.jpg
    assert rels(Filters(folder="/a/")) == ["a/1.jpg", "a/b/2.jpg"]
    assert rels(Filters(folder="a/b")) == ["a/b/2.jpg"]
    assert rels(Filters(folder="a%_")) == ["a%_/7.jpg"]                 # no LIKE wildcards
    assert rels(Filters(folder="a"), searchable=False) == ["a/1.jpg", "a/b/2.jpg", "a/broken.jpg"]
    assert rels(Filters(folder="a", glob="*/b/*")) == ["a/b/2.jpg"]
    plan = [tuple(r) for r in cat.db.execute("EXPLAIN QUERY PLAN SELECT id FROM images WHERE +status = 'ok' AND "
                          "path >= ? AND path < ?", ("a/", "a0"))]
    assert "USING" in str(plan) and "path>" in str(plan).replace(" ", "")   # the path index
    assert lib.count_matching(Filters(folder="a")) == 2                 # searchable only


def test_filtered_search_returns_the_folder_only(tmp_path):
    lib = _lib(tmp_path)
    q = lib.all_vectors()[1][0]
    got = lib.search_vector(q, 10, Filters(folder="a"))
    assert sorted(lib.record(int(i))["path"] for i in got.ids) == ["a/1.jpg", "a/b/2.jpg"]
