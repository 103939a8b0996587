"""The text layer in a library: `index --ocr` with the real RapidOCR models on rendered cards,
documents kept in step with the catalog (adds, changes, moves, copies, deletes, kill -9), the
migration of an old library, the backfill and its resume, and the hybrid / text / vector
channels of search with the words and boxes behind each text hit."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA, TINY, cli, kill_9_when_ready, make_image
from PIL import Image, ImageDraw, ImageFont

from loupe import Filters, IndexOptions, Library
from loupe.core.errors import LibraryError, QueryError
from loupe.core.types import SearchRequest
from loupe.ingest.ocr import load_engine, run_ocr
from loupe.text import fts, testset
from loupe.text import store as text_store

pytest.importorskip("rapidocr_onnxruntime", reason='needs the extra: pip install "loupe-search[ocr]"')

CARDS = {   # relative path -> the words drawn on it
    "scans/receipt.png": "INVOICE 2023",
    "scans/shop.png": "fresh bread",
    "trips/entrance.png": "north gate",
    "trips/dinner.png": "pizza menu",
}


@pytest.fixture(scope="module")
def font() -> Path:
    return testset.find_fonts(limit=1)[0]


def card(path: Path, text: str, font: Path, size: tuple[int, int] = (360, 110)) -> tuple:
    """A small card with `text` drawn at 40 px; returns the ink's box (x0, y0, x1, y1)."""
    im = Image.new("RGB", size, (236, 234, 224))
    draw = ImageDraw.Draw(im)
    face = ImageFont.truetype(str(font), 40)
    draw.text((18, 30), text, fill=(25, 25, 25), font=face)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return draw.textbbox((18, 30), text, font=face)


def make_cards(root: Path, font: Path) -> dict[str, tuple]:
    boxes = {rel: card(root / rel, text, font) for rel, text in CARDS.items()}
    for i in range(3):   # photos without text (random colour blocks)
        make_image(root / "plain" / f"blank{i}.png", seed=i, size=(120, 90))
    return boxes


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, font):
    """A library of the cards, indexed once with OCR, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("ocr-library") / "photos"
    boxes = make_cards(root, font)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    report = lib.index(IndexOptions(ocr=True))
    lib.close()
    return root, boxes, report


@pytest.fixture
def lib_copy(indexed, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(indexed[0], root)
    lib = Library.open(root / ".loupe", device="cpu")
    yield lib
    lib.close()


def paths(hits) -> list[str]:
    return [h.meta["rel_path"] for h in hits]


def consistent(lib: Library) -> bool:
    ok_ids = [r[0] for r in lib.catalog.db.execute("SELECT id FROM images WHERE status = 'ok'")]
    return fts.check(lib.catalog.db, ok_ids).ok


def overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]))


# --- OCR in the index run ------------------------------------------------------------------------

def test_index_ocr_reads_each_content_once_and_finds_its_words(indexed):
    root, boxes, report = indexed
    o = report.ocr
    assert (o["contents"], o["todo"], o["read"], o["with_text"]) == (7, 7, 7, 4)
    assert o["skipped"] == []
    lib = Library.open(root / ".loupe", device="cpu")
    for rel, text in CARDS.items():
        for word in text.split():
            hits = lib.search(word.lower(), k=3, channels="text")
            assert paths(hits) == [rel], word
            why = hits[0].meta["why"]
            assert why["fields"] == {"ocr": [word.lower()]}
            (found,) = why["words"]
            assert found["text"].lower() == word.lower() and found["confidence"] >= 0.8
    # the box of "INVOICE" lies on the ink drawn for it (the left part of the line)
    (word,) = lib.search("invoice", k=1, channels="text")[0].meta["why"]["words"]
    ink = boxes["scans/receipt.png"]
    assert overlap(word["box"], ink) > 0.9 and word["box"][2] < ink[2]
    assert lib.text_status() == {"ocr": True, "engine": o["engine"], "contents": 7, "read": 7,
                                 "with_text": 4}
    assert consistent(lib)
    lib.close()


def test_moves_and_copies_reuse_the_words_and_a_later_run_keeps_reading(lib_copy, font):
    root = lib_copy.root
    (root / "archive").mkdir()
    os.rename(root / "scans/receipt.png", root / "archive/moved.png")
    shutil.copy(root / "trips/entrance.png", root / "archive/copied.png")
    report = lib_copy.index()            # no --ocr: the library remembers it is on
    assert (report.moved, report.copies) == (1, 1)
    assert report.ocr["todo"] == 0 and report.ocr["read"] == 0      # nothing read again
    assert paths(lib_copy.search("invoice", channels="text")) == ["archive/moved.png"]
    assert sorted(paths(lib_copy.search("gate", channels="text"))) == \
        ["archive/copied.png", "trips/entrance.png"]
    card(root / "scans/new.png", "harbour", font)
    report = lib_copy.index()
    assert (report.added, report.ocr["read"]) == (1, 1)
    assert paths(lib_copy.search("harbour", channels="text")) == ["scans/new.png"]
    assert consistent(lib_copy)

    report = lib_copy.index(IndexOptions(ocr=False))   # off: new images are not read any more
    card(root / "scans/later.png", "museum", font)
    report = lib_copy.index()
    assert report.added == 1 and report.ocr is None
    assert lib_copy.search("museum", channels="text") == []
    assert lib_copy.text_status()["ocr"] is False


def test_changes_and_deletes_keep_the_index_consistent(lib_copy, font):
    root = lib_copy.root
    old_sha = lib_copy.record(lib_copy.id_of_path("trips/dinner.png"))["sha256"]
    card(root / "trips/dinner.png", "hotel", font)          # same path, new content
    os.remove(root / "scans/shop.png")
    report = lib_copy.index()
    assert (report.updated, report.removed, report.ocr["read"]) == (1, 1, 1)
    assert lib_copy.search("pizza", channels="text") == []
    assert paths(lib_copy.search("hotel", channels="text")) == ["trips/dinner.png"]
    assert lib_copy.search("bread", channels="text") == []
    assert lib_copy.search("shop", channels="text") == []          # its file name left too
    db = lib_copy.catalog.db
    assert db.execute("SELECT COUNT(*) FROM ocr WHERE sha256 = ?", (old_sha,)).fetchone()[0] == 0
    assert consistent(lib_copy)


# --- names and metadata, the migration, the backfill -----------------------------------------------

def test_names_are_searchable_without_ocr_and_a_backfill_resumes(tmp_path, font):
    root = tmp_path / "photos"
    make_cards(root, font)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    assert lib.index().ocr is None
    assert sorted(paths(lib.search("scans", channels="text"))) == \
        ["scans/receipt.png", "scans/shop.png"]                    # the folder's name
    assert paths(lib.search("shop", channels="text")) == ["scans/shop.png"]
    assert lib.search("bread", channels="text") == []                # not read yet

    engine = load_engine("rapidocr", threads=2)
    seen: list[tuple[int, int]] = []

    def stop_after_two(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ocr(lib.catalog, lib.root, engine, progress=stop_after_two, batch_size=1)
    assert seen == [(0, 7), (1, 7), (2, 7)]
    assert lib.text_status()["read"] == 2                             # both batches committed
    report = run_ocr(lib.catalog, lib.root, engine, batch_size=4)
    assert (report.todo, report.read) == (5, 5)                       # only what was left
    assert paths(lib.search("bread", channels="text")) == ["scans/shop.png"]
    assert consistent(lib)
    lib.close()


def test_the_migration_indexes_names_of_an_old_library(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(TEST_DATA / "library-0.1.0", root)
    lib = Library.open(root / ".loupe", device="cpu")
    assert "m005_text_fts" in lib.catalog.migrated
    assert consistent(lib)
    ok = lib.catalog.db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok'").fetchone()[0]
    assert len(fts.document_ids(lib.catalog.db)) == ok == 11          # the broken file has none
    assert paths(lib.search("copy_of_img00.png", channels="text")) == ["b/copy_of_img00.png"]
    assert sorted(paths(lib.search("img03", channels="text"))) == ["a/img03.png"]
    lib.close()


# --- kill -9 in the middle of the OCR pass ---------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from loupe.ingest.ocr import load_engine, run_ocr
    from loupe.storage.catalog import Catalog
    catalog = Catalog(Path(sys.argv[1]) / ".loupe" / "catalog.db")
    def progress(done, total):
        if done >= 3:
            print("ready", flush=True)
            time.sleep(600)
    run_ocr(catalog, Path(sys.argv[1]), load_engine("rapidocr", 2), progress=progress, batch_size=3)
""")


def test_kill_9_during_the_ocr_pass_keeps_text_and_catalog_consistent(tmp_path, font):
    root = tmp_path / "photos"
    make_cards(root, font)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index()
    lib.close()
    kill_9_when_ready(CHILD, str(root))
    lib = Library.open(root / ".loupe", device="cpu")
    assert consistent(lib)
    assert lib.text_status()["read"] == 3                             # the committed batch
    report = lib.index(IndexOptions(ocr=True))
    assert (report.ocr["todo"], report.ocr["read"]) == (4, 4)
    assert all(paths(lib.search(text.split()[1], channels="text")) == [rel]
               for rel, text in CARDS.items())
    assert consistent(lib)
    lib.close()


# --- the channels ---------------------------------------------------------------------------------

def test_hybrid_puts_text_hits_first_then_the_vector_ranking(indexed):
    lib = Library.open(indexed[0] / ".loupe", device="cpu")
    vector = paths(lib.search("pizza", k=7, channels="vector"))
    hybrid = lib.search("pizza", k=7)                                 # hybrid by default
    assert paths(hybrid)[0] == "trips/dinner.png"
    assert paths(hybrid)[1:] == [p for p in vector if p != "trips/dinner.png"]
    assert hybrid[0].meta["why"]["terms"] == ["pizza"]
    assert all(h.meta["why"] is None for h in hybrid[1:])
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    # a query the text channel finds nothing for gives the vector ranking, scores included
    plain = lib.search("a red square", k=7)
    assert paths(plain) == paths(lib.search("a red square", k=7, channels="vector"))
    np.testing.assert_allclose([h.score for h in plain],
                               [h.score for h in lib.search("a red square", k=7, channels="vector")])
    # a cut-off that no vector clears still keeps what the words matched
    strict = lib.search("pizza", k=7, rerank="cutoff:threshold=50")
    assert paths(strict) == ["trips/dinner.png"]
    assert lib.search("a red square", k=7, rerank="cutoff:threshold=50") == []
    # a quoted phrase must appear: only text hits, and the words must follow each other
    assert paths(lib.search('"north gate"', k=7)) == ["trips/entrance.png"]
    assert lib.search('"gate north"', k=7) == []
    assert lib.search('"fresh bread" pizza', k=7) == []
    lib.close()


def test_filters_apply_to_text_hits(lib_copy, font):
    card(lib_copy.root / "trips/other.png", "INVOICE 2023", font, (380, 120))
    lib_copy.index()
    assert sorted(paths(lib_copy.search("invoice", channels="text"))) == \
        ["scans/receipt.png", "trips/other.png"]
    for channels in ("text", "hybrid"):
        hits = lib_copy.search("invoice", channels=channels, filters=Filters(folder="trips"))
        assert paths(hits)[0] == "trips/other.png"
        assert all(p.startswith("trips/") for p in paths(hits))
    assert lib_copy.search("invoice", channels="text", filters=Filters(min_width=500)) == []


def test_text_only_loads_no_model_and_channels_are_checked(indexed):
    lib = Library.open(indexed[0] / ".loupe", device="cpu")
    assert paths(lib.search("gate", channels="text")) == ["trips/entrance.png"]
    assert lib._encoders == {}                                        # no model was loaded
    image = indexed[0] / "trips/entrance.png"
    for bad in (SearchRequest(image=image, channels="text"),
                SearchRequest(text="gate", channels="everything"),
                SearchRequest(text="gate", channels="text", threshold=0.5),
                SearchRequest(expr="gate + menu", channels="hybrid")):
        with pytest.raises(QueryError):
            lib.search(request=bad)
    assert "why" not in lib.search(image=image, k=2)[0].meta          # images: vectors only
    lib.close()


# --- the command line -----------------------------------------------------------------------------

def test_cli_index_ocr_and_search_channels(tmp_path, font):
    import json

    root = tmp_path / "photos"
    make_cards(root, font)
    out = cli("index", str(root), "--model", TINY, "--device", "cpu", "--ocr", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["ocr"]["read"] == 7 and report["ocr"]["with_text"] == 4
    out = cli("search", "pizza", "--text-only", "--format", "json", cwd=root)
    (hit,) = json.loads(out.stdout)["results"]
    assert hit["rel_path"] == "trips/dinner.png" and hit["why"]["words"][0]["text"] == "pizza"
    out = cli("search", "pizza", "--format", "json", cwd=root)   # hybrid, answer stages on
    first = json.loads(out.stdout)["results"][0]
    assert first["rel_path"] == "trips/dinner.png" and first["why"]["terms"] == ["pizza"]
    out = cli("search", '"north gate"', "--format", "tsv", cwd=root)
    assert out.exit_code == 0 and out.stdout.count("\n") == 2 and "trips/entrance.png" in out.stdout
    out = cli("search", "pizza", "--vector-only", "--format", "json", "-k", "7", cwd=root)
    assert all("why" not in h for h in json.loads(out.stdout)["results"])
    out = cli("search", "pizza", "--text-only", "--vector-only", cwd=root)
    assert out.exit_code == 2 and "--text-only and --vector-only" in out.stderr


def test_a_missing_engine_is_said_before_anything_changes(tmp_path, monkeypatch, font):
    from loupe.text import ocr

    def unavailable(**_: object) -> None:
        raise ocr.OcrUnavailable("the RapidOCR engine needs rapidocr-onnxruntime: "
                                 + ocr.EXTRA_HINT)

    monkeypatch.setitem(ocr.ENGINES, "rapidocr", unavailable)
    root = tmp_path / "photos"
    make_cards(root, font)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    with pytest.raises(LibraryError, match=r"loupe-search\[ocr\]"):
        lib.index(IndexOptions(ocr=True))
    assert lib.counts()["files"] == 0 and lib._encoders == {}
    assert text_store.ocr_setting(lib.catalog.db) == {}
    lib.close()
