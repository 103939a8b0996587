"""The text layer inside a library's catalog: one full-text document per searchable image,
kept in step with the `images` table, and the OCR words of each content.

Every function takes the catalog's connection and runs inside the caller's transaction, so the
document of an image is written (or removed) in the same commit as its row: a kill -9 leaves
both or neither. `loupe.storage.catalog.Catalog.put_image` and `delete_paths` call
`write_document` and `remove_paths`; the OCR pass (`loupe.ingest.ocr`) calls `put_words`.

Which engine's words a document carries is the library's choice, recorded in the catalog's meta
table under "ocr" ({"engine": name, "key": identity key, "enabled": bool}): the OCR cache may hold
several engines' words for one content, a document shows the recorded one's.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from loupe.text import fts
from loupe.text.fusion import matching_words
from loupe.text.ocr import Word, words_from_json
from loupe.text.terms import TOKEN, normalise_term

OCR_META = "ocr"
_KEY_SQL = f"(SELECT json_extract(value, '$.key') FROM meta WHERE key = '{OCR_META}')"


def has_text_index(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                      (fts.FTS_TABLE,)).fetchone() is not None


def ocr_setting(db: sqlite3.Connection) -> dict[str, Any]:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (OCR_META,)).fetchone()
    return json.loads(row[0]) if row else {}


def set_ocr_setting(db: sqlite3.Connection, **changes: Any) -> dict[str, Any]:
    value = {**ocr_setting(db), **changes}
    db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               (OCR_META, json.dumps(value)))
    return value


def words_of(db: sqlite3.Connection, sha: str | None) -> list[Word] | None:
    """The words the library's engine read in content `sha`; None when it has not read it."""
    if not sha:
        return None
    row = db.execute(f"SELECT words_json FROM ocr WHERE sha256 = ? AND engine = {_KEY_SQL}",
                     (sha,)).fetchone()
    return None if row is None else words_from_json(row[0])


def _ocr_text(db: sqlite3.Connection, sha: str | None) -> str:
    words = words_of(db, sha)
    return fts.ocr_text(words, fts.INDEX_MIN_CONFIDENCE) if words else ""


def write_document(db: sqlite3.Connection, image_id: int, path: str, sha: str | None,
                   meta: dict[str, Any] | None, ok: bool) -> None:
    """(Re)write the document of one catalog row: its file and folder names, camera, date and
    the words read in its content (reused from the OCR cache: a moved or copied file costs no
    OCR). A row that failed to index has no document."""
    if not ok:
        fts.remove_documents(db, [image_id])
        return
    fts.index_document(db, image_id, path, meta, _ocr_text(db, sha))


def remove_paths(db: sqlite3.Connection, paths: Iterable[str]) -> None:
    """Drop the documents of these stored paths (call before their rows are deleted)."""
    db.executemany(f"DELETE FROM {fts.FTS_TABLE} WHERE rowid IN "
                   "(SELECT id FROM images WHERE path = ?)", ((p,) for p in paths))


def _rows_sql(where: str) -> str:
    return f"SELECT id, path, sha256, taken_at, date, camera FROM images WHERE status = 'ok' AND {where}"


def _rewrite(db: sqlite3.Connection, rows: Iterable[sqlite3.Row | tuple]) -> int:
    n = 0
    for image_id, path, sha, taken_at, date, camera in rows:
        meta = {"taken_at": taken_at, "date": date, "camera": camera}
        fts.index_document(db, image_id, path, meta, _ocr_text(db, sha))
        n += 1
    return n


def rebuild_documents(db: sqlite3.Connection) -> int:
    """Write the document of every searchable row (a migration, or a repair); returns how many."""
    db.execute(f"DELETE FROM {fts.FTS_TABLE}")
    return _rewrite(db, db.execute(_rows_sql("1")).fetchall())


def put_words(db: sqlite3.Connection, sha: str, engine_key: str, words: Sequence[Word]) -> int:
    """Store what an engine read in content `sha` and rewrite the documents of every row with
    that content; returns how many documents changed."""
    fts.put_ocr(db, sha, engine_key, words)
    return _rewrite(db, db.execute(_rows_sql("sha256 = ?"), (sha,)).fetchall())


def drop_orphan_ocr(db: sqlite3.Connection) -> int:
    """OCR results of content no row holds any more (kept until the end of an index run, like
    vectors, so that a moved file finds its words again)."""
    return db.execute("DELETE FROM ocr WHERE sha256 NOT IN "
                      "(SELECT sha256 FROM images WHERE sha256 IS NOT NULL)").rowcount


def missing_ocr(db: sqlite3.Connection, engine_key: str) -> list[tuple[str, str, bytes | None]]:
    """(sha256, path, path_bytes): one file for each indexed content `engine_key` has not read,
    oldest row first (the order a resumed pass takes them in)."""
    rows = db.execute(
        "SELECT sha256, path, path_bytes FROM images WHERE id IN (SELECT MIN(id) FROM images "
        "WHERE status = 'ok' AND sha256 IS NOT NULL AND sha256 NOT IN "
        "(SELECT sha256 FROM ocr WHERE engine = ?) GROUP BY sha256) ORDER BY id", (engine_key,))
    return [(r[0], r[1], r[2]) for r in rows]


def ocr_counts(db: sqlite3.Connection, engine_key: str | None) -> dict[str, int]:
    """Distinct indexed contents, how many of them `engine_key` read, and with how many words."""
    total = db.execute("SELECT COUNT(DISTINCT sha256) FROM images WHERE status = 'ok' "
                       "AND sha256 IS NOT NULL").fetchone()[0]
    if not engine_key:
        return {"contents": total, "read": 0, "with_text": 0}
    read, with_text = db.execute(
        "SELECT COUNT(*), SUM(text != '') FROM ocr WHERE engine = ? AND sha256 IN "
        "(SELECT sha256 FROM images WHERE status = 'ok')", (engine_key,)).fetchone()
    return {"contents": total, "read": read, "with_text": with_text or 0}


# --- why a hit matched ----------------------------------------------------------------------

_MARKED = re.compile("\x02(.*?)\x03", re.S)


def explain(db: sqlite3.Connection, query: str, ids: Sequence[int], *,
            mode: str = "all") -> dict[int, dict[str, Any]]:
    """For the images among `ids` that `query` matches: which words matched, in which
    columns of their document (name, folders, ocr, camera, date), and the OCR words behind
    the matches with their boxes (pixels of the full-size, upright image)."""
    expression = fts.match_expression(query, mode)
    if expression is None or not ids:
        return {}
    t = fts.FTS_TABLE
    sql = (f"SELECT {t}.rowid, i.sha256, "
           + ", ".join(f"highlight({t}, {c}, char(2), char(3))" for c in range(len(fts.COLUMNS)))
           + f" FROM {t} JOIN images i ON i.id = {t}.rowid WHERE {t} MATCH ? "
           f"AND +{t}.rowid IN (SELECT value FROM json_each(?))")
    out: dict[int, dict[str, Any]] = {}
    for row in db.execute(sql, (expression, json.dumps([int(i) for i in ids]))):
        fields: dict[str, list[str]] = {}
        for column, text in zip(fts.COLUMNS, row[2:], strict=True):
            terms: dict[str, None] = {}
            for span in _MARKED.findall(text or ""):
                for token in TOKEN.findall(span):
                    terms.setdefault(normalise_term(token), None)
            if terms:
                fields[column] = list(terms)
        words = matching_words(words_of(db, row[1]) or (), fields.get("ocr", ())) \
            if "ocr" in fields else []
        all_terms = list(dict.fromkeys(t for ts in fields.values() for t in ts))
        out[int(row[0])] = {
            "terms": all_terms, "fields": fields,
            "words": [{"text": w.text, "box": [round(v, 1) for v in w.box],
                       "confidence": round(w.confidence, 3)} for w in words],
        }
    return out
