"""Search: text, composed queries, query arithmetic, filters, threshold, FAISS path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_folder, make_image
from PIL import Image

from loupe import Filters, Library, QueryError
from loupe.search.query import fuse, parse_expr


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Library:
    root = tmp_path_factory.mktemp("search") / "photos"
    make_folder(root, 6, sub="2023/summer")
    make_folder(root, 6, start=50, sub="2024")
    for i in range(3):
        make_image(root / "wide" / f"w{i}.jpg", seed=200 + i, size=(400, 100), fmt="JPEG")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:03:04 05:06:07"
    make_image(root / "dated.jpg", seed=300, fmt="JPEG", exif=exif)
    old = root / "2023" / "summer" / "img0000.png"
    os.utime(old, (1_600_000_000, 1_600_000_000))  # 2020-09-13: a file without EXIF dates by mtime
    library = Library.open(root / ".loupe", model=TINY, device="cpu")
    library.index()
    return library


def test_text_search_ranks_by_encoder_similarity(lib):
    hits = lib.search("a red bicycle at night", k=5)
    assert len(hits) == 5
    expected = lib.encoder.encode_text(["a red bicycle at night"])[0]
    ids, matrix = lib.all_vectors()
    best = ids[np.argsort(-(matrix @ expected), kind="stable")[:5]]
    assert [h.id for h in hits] == best.tolist()
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_composed_query_is_the_weighted_fusion(lib):
    img = lib.root / "2024" / "img0050.png"
    q = lib.make_query("in green", image=img, weight=0.3)
    img_vec = lib.search(image=img, k=1)[0]
    v_img = lib.vectors([img_vec.id])[0]
    v_txt = lib.encoder.encode_text(["in green"])[0]
    want = 0.3 * v_img + 0.7 * v_txt
    assert np.allclose(q.vector, want / np.linalg.norm(want), atol=1e-5)
    assert np.allclose(fuse(v_img, v_txt, 1.0), v_img, atol=1e-6)
    with pytest.raises(QueryError, match="weight"):
        lib.search("x", image=img, weight=1.5)


def test_query_arithmetic(lib):
    img = lib.root / "2024" / "img0051.png"
    expr = f'"2:golden retriever" + {img} - fruit'
    terms = parse_expr(expr)
    assert [(t.weight, t.is_image) for t in terms] == [(2.0, False), (1.0, True), (-1.0, False)]
    q = lib.make_query(expr=expr)
    t = lib.encoder.encode_text(["golden retriever", "fruit"])
    v = 2 * t[0] + lib.encoder.encode_images([Image.open(img)])[0] - t[1]
    assert np.allclose(q.vector, v / np.linalg.norm(v), atol=1e-5)
    with pytest.raises(QueryError, match="no such file"):
        lib.search(expr="dog + missing.jpg")
    with pytest.raises(QueryError, match="operator"):
        lib.search(expr="dog + ")


def test_like_excludes_itself_and_accepts_id_or_path(lib):
    target = lib.root / "2024" / "img0052.png"
    by_path = lib.search(like=target, k=3)
    assert target not in [h.path for h in by_path]
    image_id = lib.catalog.id_of_path("2024/img0052.png")
    assert [h.id for h in lib.search(like=image_id, k=3)] == [h.id for h in by_path]
    with pytest.raises(QueryError, match="not an indexed image"):
        lib.search(like=Path("/nowhere/else.jpg"))


def _rels(hits) -> set[str]:
    return {h.meta["rel_path"] for h in hits}


def test_filters(lib):
    q = "anything"
    assert _rels(lib.search(q, k=50, filters=Filters(folder="2023"))) == {
        f"2023/summer/img{i:04d}.png" for i in range(6)}
    assert _rels(lib.search(q, k=50, filters=Filters(glob="*.jpg"))) == {
        "wide/w0.jpg", "wide/w1.jpg", "wide/w2.jpg", "dated.jpg"}
    assert _rels(lib.search(q, k=50, filters=Filters(types=("JPEG",)))) == _rels(
        lib.search(q, k=50, filters=Filters(glob="*.jpg")))
    assert _rels(lib.search(q, k=50, filters=Filters(min_width=300))) == {
        "wide/w0.jpg", "wide/w1.jpg", "wide/w2.jpg"}
    assert _rels(lib.search(q, k=50, filters=Filters(min_height=90))) == {
        "wide/w0.jpg", "wide/w1.jpg", "wide/w2.jpg"}  # 400x100; the others are 96x80
    assert len(lib.search(q, k=50, filters=Filters(min_height=80))) == 16
    # EXIF capture date wins over mtime; mtime stands in when there is none.
    assert _rels(lib.search(q, k=50, filters=Filters(since="2019-03-04", until="2019-03-04"))) == {"dated.jpg"}
    assert _rels(lib.search(q, k=50, filters=Filters(until="2020-12-31"))) == {
        "dated.jpg", "2023/summer/img0000.png"}
    assert lib.search(q, k=50, filters=Filters(folder="nope")) == []


def test_threshold_and_k(lib):
    img = lib.root / "2024" / "img0053.png"
    all_hits = lib.search(image=img, k=50)
    cut = all_hits[3].score
    kept = lib.search(image=img, k=50, threshold=cut)
    assert kept and all(h.score >= cut for h in kept)
    assert len(kept) == sum(h.score >= cut for h in all_hits)
    assert lib.search(image=img, k=50, threshold=1.01) == []
    with pytest.raises(QueryError):
        lib.search("x", k=0)
    with pytest.raises(QueryError, match="empty query"):
        lib.search("   ")


def test_box_crops_the_query(lib, tmp_path):
    # A query made of one indexed image pasted into a larger noisy canvas: the box finds it.
    src = Image.open(lib.root / "2024" / "img0054.png").convert("RGB")
    canvas = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    canvas.paste(src, (150, 100))
    q = tmp_path / "canvas.png"
    canvas.save(q)
    box = (150, 100, 150 + src.width, 100 + src.height)
    hit = lib.search(image=q, box=box, k=1)[0]
    assert hit.meta["rel_path"] == "2024/img0054.png"
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(QueryError, match="outside"):
        lib.search(image=q, box=(500, 500, 600, 600))



def test_unknown_ids_are_user_errors_and_key_errors(lib):
    from loupe import LibraryError, UnknownImage

    with pytest.raises(UnknownImage, match="no image with id 999999") as caught:
        lib.record(999999)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, LibraryError)
    with pytest.raises(UnknownImage, match="no searchable image"):
        lib.vectors([999999])
