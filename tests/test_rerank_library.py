"""Rerankers through the real `loupe.Library` (model loupe-tiny:random) on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import loupe
import loupe.search.stages as rerank
from loupe.index import dba
from loupe.search import pipeline
from loupe.search.stages.qe import expand_query
from loupe.search.stages.superglobal import refine_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRECHA = DATA / "strecha" / "scenes"
ORIGINAL = DATA / "sacre_coeur" / "mapping" / "02928139_3448003521.jpg"
SCALED = DATA / "sacre_coeur" / "mapping_scale" / "02928139_3448003521_scale0.5.jpg"
INDEXED = [
    *(STRECHA / "fountain-P11" / f"000{i}.jpg" for i in (0, 1, 2)),
    *(STRECHA / "entry-P10" / f"000{i}.jpg" for i in (0, 1)),
    *(STRECHA / "castle-P19" / f"000{i}.jpg" for i in (0, 1)),
    SCALED,
]


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> loupe.Library:
    root = tmp_path_factory.mktemp("photos")
    for src in INDEXED:
        with Image.open(src) as im:
            im.thumbnail((640, 640))                                # small: a fast test
            im.save(root / f"{src.parent.name}_{src.stem}.jpg", quality=92)
    library = loupe.Library.open(root / ".loupe", model="loupe-tiny:random")
    library.index()
    return library


def names(hits: list[loupe.Hit]) -> list[str]:
    return [h.meta["rel_path"] for h in hits]


def test_superglobal_through_the_library_orders_by_its_scores(lib: loupe.Library) -> None:
    query = STRECHA / "fountain-P11" / "0004.jpg"                   # not in the library
    hits = lib.search(image=query, k=8, rerank="superglobal")
    q = lib.make_query(image=query)
    head = lib.search_vector(q.vector, 8)
    expected = refine_scores(q.vector, lib.vectors(head.ids), device="cpu")
    assert [h.id for h in hits] == head.ids[np.argsort(-expected, kind="stable")].tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(expected)[::-1], atol=1e-5)


def test_spatial_through_the_library_puts_the_scene_first_with_boxes(lib: loupe.Library) -> None:
    hits = lib.search(image=STRECHA / "fountain-P11" / "0004.jpg", k=8,
                      rerank=["superglobal", rerank.Spatial(max_side=640)])
    verified = [h for h in hits if h.box is not None]
    assert {f"fountain-P11_000{i}.jpg" for i in (0, 1, 2)} <= {h.meta["rel_path"] for h in verified}
    # castle, entry and fountain are one courtyard: an entry or castle photo may share content
    # with the query and be verified; the other building (the Sacre Coeur copy) may not.
    assert all(name.startswith(("fountain", "entry", "castle")) for name in names(verified))
    assert names(hits)[:len(verified)] == names(verified)
    assert all(h.score >= 15 for h in verified)
    for h in verified:
        x0, y0, x1, y1 = h.box
        assert 0 <= x0 < x1 <= h.meta["width"] and 0 <= y0 < y1 <= h.meta["height"]
    assert list((lib.path / "cache" / "local-features").rglob("*.npz"))


def test_region_query_through_the_library(lib: loupe.Library) -> None:
    region = (150, 50, 650, 550)                                    # the domes, in the original
    hits = lib.search(image=ORIGINAL, box=region, k=3, rerank="spatial:max_side=640")
    assert hits[0].meta["rel_path"] == "mapping_scale_02928139_3448003521_scale0.5.jpg"
    # The copy is the original scaled by 0.5 about its centre, then thumbnailed to 640.
    w, h = hits[0].meta["width"], hits[0].meta["height"]
    factor = w / Image.open(SCALED).size[0]
    cx, cy = w / 2, h / 2
    ox, oy = Image.open(ORIGINAL).size[0] / 2, Image.open(ORIGINAL).size[1] / 2
    expected = [cx + (region[0] - ox) * 0.5 * factor, cy + (region[1] - oy) * 0.5 * factor,
                cx + (region[2] - ox) * 0.5 * factor, cy + (region[3] - oy) * 0.5 * factor]
    box = hits[0].box
    inter = max(0, min(box[2], expected[2]) - max(box[0], expected[0])) * max(
        0, min(box[3], expected[3]) - max(box[1], expected[1]))
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (expected[2] - expected[0]) * (expected[3] - expected[1]) - inter)
    assert inter / union > 0.6, (box, expected)


def test_alpha_qe_through_the_library(lib: loupe.Library) -> None:
    query = STRECHA / "entry-P10" / "0003.jpg"
    q = lib.make_query(image=query)
    first = lib.search_vector(q.vector, 8)
    hits = lib.search(image=query, k=8, rerank="qe:n=2")
    expanded = expand_query(q.vector, lib.vectors(first.ids[:2]), 3.0)
    ids, matrix = lib.all_vectors()
    assert [h.id for h in hits] == ids[np.argsort(-(matrix @ expanded), kind="stable")].tolist()

    # The first stage's filters hold for what QE returns (a castle photo, filtered
    # to the Sacre Coeur copy: a second search without the filter finds castles).
    only = loupe.Filters(glob="mapping*")
    castle = STRECHA / "castle-P19" / "0005.jpg"
    assert names(lib.search(image=castle, k=3, rerank="qe:n=1")) != names(
        lib.search(image=castle, k=3, filters=only, rerank="qe"))
    assert names(lib.search(image=castle, k=3, filters=only, rerank="qe")) == [
        "mapping_scale_02928139_3448003521_scale0.5.jpg"]

    # Reranking a short head: nothing is repeated or lost.
    out = pipeline.apply(rerank.get("qe"), q, first, lib, depth=3)
    assert sorted(out.ids.tolist()) == sorted(first.ids.tolist())


def test_dba_is_what_the_library_searches_when_switched_on(lib: loupe.Library) -> None:
    _, raw = lib.all_vectors()
    lib.set_dba(3)
    try:
        _, augmented = lib.all_vectors()
    finally:
        lib.set_dba(None)
    np.testing.assert_allclose(augmented, dba.augment(raw, 3, 3.0), atol=1e-6)
    assert np.abs(augmented - raw).max() > 1e-3
