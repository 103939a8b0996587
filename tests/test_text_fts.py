"""The full-text index: OCR by content hash, documents, search, removal, consistency."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest
from conftest import kill_9_when_ready

from loupe.text import fts
from loupe.text.ocr import Word
from loupe.text.terms import split_parts


@pytest.fixture
def db():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    fts.ensure_schema(conn)
    yield conn
    conn.close()


def ids(hits) -> list[int]:
    return [h[0] for h in hits]


def test_schema_is_idempotent_and_plain_statements(db):
    fts.ensure_schema(db)  # a second time changes nothing
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"ocr", fts.FTS_TABLE} <= tables
    assert all(s.lstrip().upper().startswith("CREATE") for s in fts.SCHEMA)
    assert "unicode61 remove_diacritics 2" in fts.SCHEMA[1]


def test_ocr_by_content_hash(db):
    words = [Word("Invoice", (10, 20, 90, 40), 0.97), Word("2023", (95, 20, 140, 40), 0.91)]
    assert fts.get_ocr(db, "aa" * 32, "rapidocr:x") is None          # never read
    fts.put_ocr(db, "aa" * 32, "rapidocr:x", words)
    assert fts.get_ocr(db, "aa" * 32, "rapidocr:x") == words
    assert fts.get_ocr(db, "aa" * 32, "rapidocr:y") is None          # another engine's cache
    fts.put_ocr(db, "bb" * 32, "rapidocr:x", [])                      # read, nothing found
    assert fts.get_ocr(db, "bb" * 32, "rapidocr:x") == []
    assert fts.ocr_shas(db, "rapidocr:x") == {"aa" * 32, "bb" * 32}
    text = db.execute("SELECT text FROM ocr WHERE sha256 = ?", ("aa" * 32,)).fetchone()[0]
    assert text == "Invoice 2023"
    fts.put_ocr(db, "aa" * 32, "rapidocr:x", words[:1])               # re-read replaces
    assert fts.get_ocr(db, "aa" * 32, "rapidocr:x") == words[:1]


@pytest.fixture
def library(db):
    docs = {
        1: ("Receipts/2023/InvoiceScan_0042.jpg", {"camera": "Canon EOS 5D",
                                                   "taken_at": "2023-05-14T10:22:01"},
            "ACME Ltd INVOICE2023 total paid"),
        2: ("Holidays/Café Zürich/IMG_1001.jpg", {"camera": "Apple iPhone 12",
                                                  "date": "2021-08-02T18:00:00"},
            "north gate open daily"),
        3: ("Holidays/Rome/IMG_1002.jpg", {}, "gate to the north"),
        4: ("scans/receipt-bakery.png", {}, ""),
    }
    db.execute("BEGIN")
    for i, (path, meta, text) in docs.items():
        fts.index_document(db, i, path, meta, text)
    db.execute("COMMIT")
    return db


@pytest.mark.parametrize("query, expected", [
    ("InvoiceScan_0042.jpg", [1]),   # file name as typed
    ("invoicescan", [1]),            # the glued name token
    ("scan", [1]),                   # a camelCase part of the name
    ("0042", [1]),                   # "_" separates
    ("bakery", [4]),                 # "-" separates
    ("receipts", [1]),               # folder
    ("zurich", [2]),                 # folder, accents folded
    ("CAFÉ", [2]),                   # case and accent folded both ways
    ("acme", [1]),                   # OCR word
    ("invoice", [1]),                # part of a glued OCR token
    ("canon", [1]),                  # camera
    ("iphone", [2]),
    ("may 2023", [1]),               # date as words
    ("2021-08-02", [2]),
])
def test_documents_searchable_by_every_column(library, query, expected):
    assert sorted(ids(fts.search(library, query, 10))) == expected


def test_phrase_queries_require_the_phrase(library):
    assert sorted(ids(fts.search(library, "north gate", 10))) == [2, 3]
    assert ids(fts.search(library, '"north gate"', 10)) == [2]
    assert ids(fts.search(library, '"gate north"', 10)) == []
    # a phrase plus free words: both required
    assert ids(fts.search(library, '"north gate" daily', 10)) == [2]
    assert ids(fts.search(library, '"north gate" rome', 10)) == []
    assert ids(fts.search(library, '"invoice 2023"', 10)) == [1]  # the glued token's parts


def test_free_words_all_or_any(library):
    assert ids(fts.search(library, "gate acme", 10)) == []
    assert sorted(ids(fts.search(library, "gate acme", 10, mode="any"))) == [1, 2, 3]


def test_matched_terms_and_bm25_order(library):
    hits = fts.search(library, "acme total", 10)
    assert len(hits) == 1
    image_id, score, terms = hits[0]
    assert image_id == 1 and score > 0
    assert set(terms) == {"acme", "total"}
    # a word in the file name weighs more than the same word read on a wall
    db = library
    db.execute("BEGIN")
    fts.index_document(db, 10, "misc/harbour.jpg", {}, "")
    fts.index_document(db, 11, "misc/x.jpg", {}, "harbour")
    db.execute("COMMIT")
    assert ids(fts.search(db, "harbour", 10)) == [10, 11]


NASTY = [
    '"', '""', '"unterminated', "(((", ")", "a AND", "OR", "NOT gate", "NEAR(a b)", "gate*",
    "*", "^gate", "name:gate", "col : x", "'; DROP TABLE ocr; --", "\\", "{}[]", "-gate",
    "+gate", "gate -", "\x00", "ʕ•ᴥ•ʔ", "…", "“north gate”", "«gate»", "a\"b\"c", ":", "\"\"\"",
    "gate\ngate", "%_%", "1/2", "1.5", "@#$%^&*()",
]


@pytest.mark.parametrize("query", NASTY)
def test_punctuation_never_raises(library, query):
    hits = fts.search(library, query, 10)
    assert isinstance(hits, list)
    assert all(isinstance(h[0], int) for h in hits)


def test_punctuation_around_real_words_still_finds_them(library):
    assert ids(fts.search(library, "((acme!!", 10)) == [1]
    assert sorted(ids(fts.search(library, "gate* -north", 10))) == [2, 3]
    assert ids(fts.search(library, "“north gate”", 10)) == [2]   # typographic quotes
    assert ids(fts.search(library, "AND", 10)) == []                # an operator is a word
    assert ids(fts.search(library, "@#$%", 10)) == []


def test_allowed_ids_filter_inside_the_query(library):
    assert sorted(ids(fts.search(library, "gate", 10))) == [2, 3]
    assert ids(fts.search(library, "gate", 10, allowed_ids=[3, 4])) == [3]
    assert ids(fts.search(library, "gate", 10, allowed_ids=[])) == []
    assert len(fts.search(library, "img", 1)) == 1                  # k cuts


def test_removal(library):
    db = library
    db.execute("BEGIN")
    assert fts.remove_documents(db, [2, 99]) == 1
    db.execute("COMMIT")
    assert ids(fts.search(db, "zurich", 10)) == []
    assert sorted(ids(fts.search(db, "gate", 10))) == [3]
    assert fts.document_ids(db) == {1, 3, 4}


def test_reindex_replaces_the_document(library):
    db = library
    db.execute("BEGIN")
    fts.index_document(db, 3, "Holidays/Rome/IMG_1002.jpg", {}, "colosseum")
    db.execute("COMMIT")
    assert ids(fts.search(db, "colosseum", 10)) == [3]
    assert sorted(ids(fts.search(db, "gate", 10))) == [2]
    assert db.execute(f"SELECT COUNT(*) FROM {fts.FTS_TABLE}").fetchone()[0] == 4


def test_check_detects_missing_and_extra(library):
    assert fts.check(library, [1, 2, 3, 4]).ok
    report = fts.check(library, [1, 2, 3, 5])
    assert not report.ok
    assert report.missing == [5]
    assert report.extra == [4]
    assert report.integrity is None


def test_rollback_drops_document_and_ocr_with_the_batch(db):
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT, sha256 TEXT)")
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO images VALUES (7, 'a/b.jpg', 'cc')")
    fts.put_ocr(db, "cc", "e", [Word("hello", (0, 0, 1, 1), 1.0)])
    fts.index_document(db, 7, "a/b.jpg", {}, "hello")
    db.execute("ROLLBACK")
    assert fts.get_ocr(db, "cc", "e") is None
    assert ids(fts.search(db, "hello", 10)) == []
    assert fts.check(db, []).ok


CHILD = textwrap.dedent("""
    import sqlite3, sys, time
    from loupe.text import fts
    from loupe.text.ocr import Word
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, path TEXT, sha256 TEXT)")
    fts.ensure_schema(db)
    for batch, (i, word) in enumerate([(1, "committed"), (2, "inflight")]):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO images VALUES (?, ?, ?)", (i, f"f{i}.jpg", f"sha{i}"))
        fts.put_ocr(db, f"sha{i}", "e", [Word(word, (0, 0, 5, 5), 0.9)])
        fts.index_document(db, i, f"f{i}.jpg", {}, word)
        if batch == 1:
            print("ready", flush=True)
            time.sleep(600)
        db.execute("COMMIT")
""")


def test_kill_9_keeps_catalog_and_text_consistent(tmp_path):
    path = tmp_path / "catalog.db"
    kill_9_when_ready(CHILD, str(path))
    db = sqlite3.connect(path, isolation_level=None)
    catalog_ids = [r[0] for r in db.execute("SELECT id FROM images")]
    assert catalog_ids == [1]
    assert fts.check(db, catalog_ids).ok
    assert ids(fts.search(db, "committed", 10)) == [1]
    assert ids(fts.search(db, "inflight", 10)) == []
    assert fts.get_ocr(db, "sha1", "e") == [Word("committed", (0, 0, 5, 5), 0.9)]
    assert fts.get_ocr(db, "sha2", "e") is None
    db.close()


def test_document_text():
    doc = fts.document("Trips/NewYork2019/DSC_0001.JPG",
                       {"camera": "NIKON D750", "taken_at": "2019-12-31T23:59:00"},
                       "TIMES SQUARE")
    assert doc["name"].startswith("DSC_0001.JPG")
    assert doc["folders"] == "Trips / NewYork2019 New York 2019"
    assert doc["ocr"] == "TIMES SQUARE"
    assert doc["camera"] == "NIKON D750"
    assert doc["date"] == "2019-12-31 December 2019"
    assert fts.document("top.jpg", None, "")["folders"] == ""


@pytest.mark.parametrize("text, parts", [
    ("InvoiceScan2023", ["Invoice", "Scan", "2023"]),
    ("NORTH2023 paid", ["NORTH", "2023"]),
    ("HTTPServer", ["HTTP", "Server"]),
    ("ÉcoleNormale", ["École", "Normale"]),
    ("invoice", []),
    ("two words", []),
    ("snake_case-name", []),
])
def test_split_parts(text, parts):
    assert split_parts(text) == parts
