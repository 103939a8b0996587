"""The full-text index: OCR results by content hash, and one searchable document per image.

Both tables live in the catalog's SQLite database and every function here takes the catalog's
`sqlite3.Connection` and never begins, commits or rolls back: call them inside the catalog's batch
transaction, so the OCR words, the document and the image row are committed (or lost to a kill -9)
together.

* `ocr(sha256, engine, text, words_json)`: what an engine read in a file's content. Keyed by the
  content hash and the engine's identity key (`ocr.identity_key`), so a moved or copied file costs
  nothing and a new engine or model never mixes with the old one's words.
* `text_fts`: an FTS5 table, one row per image (rowid = the catalog's image id), with the columns
  name (file name), folders, ocr (the words read in it), camera and date (as words: "2023-05-14
  May 2023"). Searched with BM25, the file name weighted above the rest.

Tokenizer: `unicode61 remove_diacritics 2` (measured against `trigram` in benchmarks/ocr.py):
case and accents fold ("cafe" finds "Café"), and every character that is not a letter or a digit
separates tokens, so "IMG_0042.jpg", "invoice-2023" and "2023-05-14" split where users expect.
Document text also carries the parts of glued tokens ("InvoiceScan2023" -> "Invoice Scan 2023",
"NORTH2023" -> "NORTH 2023"), for file names and for OCR lines whose spaces the recogniser dropped.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from loupe.text.fusion import parse_text_query
from loupe.text.ocr import Word, words_from_json, words_to_json
from loupe.text.terms import TOKEN, normalise_term, with_parts

FTS_TABLE = "text_fts"
TOKENIZER = "unicode61 remove_diacritics 2"
COLUMNS = ("name", "folders", "ocr", "camera", "date")
# BM25 weight per column (same order): a word in the file name says more than one on a wall.
WEIGHTS = (2.0, 1.0, 1.0, 0.5, 0.5)
# Words read with less confidence stay in the OCR cache but out of the index. On the labelled
# test set (benchmarks/ocr.py) raising the cut from 0.5 to 0.8 kept recall and took precision
# from 0.80 to 0.88 and false words on text-free photos from 0.45 to 0.05 per photo.
INDEX_MIN_CONFIDENCE = 0.8


def schema(tokenizer: str = TOKENIZER) -> tuple[str, ...]:
    """The statements that create the text layer's tables (idempotent)."""
    return (
        """CREATE TABLE IF NOT EXISTS ocr (
    sha256 TEXT NOT NULL,
    engine TEXT NOT NULL,        -- the engine's identity key (loupe.text.ocr.identity_key)
    text TEXT NOT NULL,          -- the words in reading order, separated by spaces
    words_json TEXT NOT NULL,    -- [[text, [x0, y0, x1, y1], confidence], ...]
    PRIMARY KEY (sha256, engine)
) WITHOUT ROWID""",
        f"""CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(
    {", ".join(COLUMNS)},
    tokenize = '{tokenizer}'
)""",
    )


SCHEMA: tuple[str, ...] = schema()


def ensure_schema(db: sqlite3.Connection, tokenizer: str = TOKENIZER) -> None:
    """Create the tables when missing. Runs in the caller's transaction, if any; commits
    nothing."""
    for statement in schema(tokenizer):
        db.execute(statement)


# --- OCR results by content -----------------------------------------------------------------

def put_ocr(db: sqlite3.Connection, sha: str, engine_id: str, words: Sequence[Word]) -> None:
    """Store what `engine_id` read in content `sha` (an empty list records "read, no text").
    Store boxes in pixels of the full-resolution, orientation-corrected image
    (`ocr.scale_words` when the engine read a reduced decode)."""
    db.execute(
        "INSERT OR REPLACE INTO ocr (sha256, engine, text, words_json) VALUES (?, ?, ?, ?)",
        (sha, engine_id, ocr_text(words), words_to_json(words)),
    )


def get_ocr(db: sqlite3.Connection, sha: str, engine_id: str) -> list[Word] | None:
    """The words stored for (sha, engine_id); None when that content was never read by it."""
    row = db.execute("SELECT words_json FROM ocr WHERE sha256 = ? AND engine = ?",
                     (sha, engine_id)).fetchone()
    return None if row is None else words_from_json(row[0])


def ocr_shas(db: sqlite3.Connection, engine_id: str) -> set[str]:
    """Content hashes already read by `engine_id` (what an indexing plan can skip)."""
    return {r[0] for r in db.execute("SELECT sha256 FROM ocr WHERE engine = ?", (engine_id,))}


def ocr_text(words: Iterable[Word], min_confidence: float = 0.0) -> str:
    """The words as text, in reading order; for a document, pass INDEX_MIN_CONFIDENCE."""
    return " ".join(w.text for w in words if w.confidence >= min_confidence)


# --- documents ------------------------------------------------------------------------------

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def _date_words(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return f"{d:%Y-%m-%d} {_MONTHS[d.month - 1]} {d:%Y}"


def document(path: str, meta: Mapping[str, Any] | None, ocr_text: str) -> dict[str, str]:
    """The searchable text of one image, column by column (what `index_document` stores).
    `path` is POSIX, relative to the library root; meta may carry camera and date/taken_at."""
    meta = meta or {}
    p = PurePosixPath(path)
    folders = " / ".join(p.parent.parts) if str(p.parent) not in ("", ".") else ""
    camera = " ".join(str(meta[k]) for k in ("camera", "make", "model") if meta.get(k))
    return {
        "name": with_parts(p.name),
        "folders": with_parts(folders),
        "ocr": with_parts(ocr_text or ""),
        "camera": camera,
        "date": _date_words(meta.get("taken_at") or meta.get("date")),
    }


def index_document(db: sqlite3.Connection, image_id: int, path: str,
                   meta: Mapping[str, Any] | None, ocr_text: str) -> None:
    """(Re)write image `image_id`'s document. Call it whenever the row's path, metadata or OCR
    changes, in the transaction that changes them."""
    doc = document(path, meta, ocr_text)
    db.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (int(image_id),))
    db.execute(
        f"INSERT INTO {FTS_TABLE} (rowid, {', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
        (int(image_id), *(doc[c] for c in COLUMNS)),
    )


def remove_documents(db: sqlite3.Connection, ids: Iterable[int]) -> int:
    """Drop the documents of these image ids (in the transaction that deletes the rows: the
    catalog may give a deleted id to a new row). Returns how many were there."""
    n = 0
    for i in ids:
        n += db.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (int(i),)).rowcount
    return n


def document_ids(db: sqlite3.Connection) -> set[int]:
    return {r[0] for r in db.execute(f"SELECT rowid FROM {FTS_TABLE}")}


# --- search ---------------------------------------------------------------------------------

class TextHit(NamedTuple):
    image_id: int
    score: float                         # -bm25: higher is better; only comparable within a query
    matched_terms: tuple[str, ...]       # document words that matched, normalised, first seen first


def _quote(chunk: str) -> str | None:
    """One user word as an FTS5 string: its letters and digits, tokenised by FTS5 itself (so
    "invoice-2023" is the phrase invoice 2023); None when nothing in it is searchable. A
    trailing * makes it a prefix query."""
    prefix = chunk.endswith("*")
    if not any(c.isalnum() for c in chunk):
        return None
    return '"' + chunk.rstrip("*").replace('"', '""') + '"' + (" *" if prefix else "")


def match_expression(query: str, mode: str = "all") -> str | None:
    """The FTS5 MATCH expression for a user query: quoted phrases are required; the free words
    are all required (mode "all") or any of them (mode "any"). Every piece of user text is
    quoted, so no input is FTS5 syntax. None when the query has nothing searchable."""
    free, phrases = parse_text_query(query)
    parts = [q for q in (_quote(p) for p in phrases) if q]
    words = [q for q in (_quote(w) for w in free.split()) if q]
    if words:
        joiner = " AND " if mode == "all" else " OR "
        parts.append("(" + joiner.join(words) + ")" if len(words) > 1 else words[0])
    if not parts:
        return None
    return " AND ".join(parts)


_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"
_MARKED = re.compile(f"{_MARK_OPEN}(.*?){_MARK_CLOSE}", re.S)


def search(db: sqlite3.Connection, query: str, k: int, allowed_ids: Iterable[int] | None = None,
           *, mode: str = "all", weights: Sequence[float] = WEIGHTS) -> list[TextHit]:
    """The best `k` images for `query` by BM25 over their documents, as (image_id, score,
    matched_terms). `allowed_ids` restricts the search to those images inside the query (a
    filter, not over-fetch and drop). Quoted phrases must appear as phrases; see
    `match_expression` for the rest. Never raises on user text."""
    expression = match_expression(query, mode)
    if expression is None or k <= 0:
        return []
    sql = (f"SELECT rowid, bm25({FTS_TABLE}, {', '.join(str(float(w)) for w in weights)}), "
           + ", ".join(f"highlight({FTS_TABLE}, {i}, char(2), char(3))"
                       for i in range(len(COLUMNS)))
           + f" FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?")
    args: list[Any] = [expression]
    if allowed_ids is not None:
        ids = [int(i) for i in allowed_ids]
        if not ids:
            return []
        # "+rowid": a filter on the matches; a bare rowid IN (...) makes FTS5 run the whole
        # query once per allowed id (measured 200x slower at 10 % of 3000 documents)
        sql += " AND +rowid IN (SELECT value FROM json_each(?))"
        args.append(json.dumps(ids))
    sql += " ORDER BY 2 LIMIT ?"
    args.append(int(k))
    hits = []
    for row in db.execute(sql, args):
        terms: dict[str, None] = {}
        for text in row[2:]:
            for span in _MARKED.findall(text or ""):
                for token in TOKEN.findall(span):
                    terms.setdefault(normalise_term(token), None)
        hits.append(TextHit(int(row[0]), -float(row[1]), tuple(terms)))
    return hits


# --- consistency ----------------------------------------------------------------------------

@dataclass
class TextCheck:
    missing: list[int] = field(default_factory=list)    # catalog images without a document
    extra: list[int] = field(default_factory=list)      # documents of no catalog image
    integrity: str | None = None                         # FTS5's own check, when it failed

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra and self.integrity is None


def check(db: sqlite3.Connection, catalog_ids: Iterable[int]) -> TextCheck:
    """Compare the documents with the catalog's searchable image ids, and run FTS5's
    integrity check (index against stored text)."""
    want = {int(i) for i in catalog_ids}
    have = document_ids(db)
    result = TextCheck(sorted(want - have), sorted(have - want))
    try:
        db.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('integrity-check')")
    except sqlite3.DatabaseError as exc:
        result.integrity = str(exc)
    return result
