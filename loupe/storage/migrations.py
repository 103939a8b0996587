"""Named, recorded schema migrations of the catalog (as sqlite-utils does them).

Each migration runs once, in order, inside one transaction with the record that it
ran; a catalog written by any earlier release opens and is brought up to date in
place. Add a migration by appending a function to MIGRATIONS: never edit one that
has shipped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def m001_initial(db: sqlite3.Connection) -> None:
    """The 0.1.0 schema: rows, one vector per content hash, a key-value meta table.
    Idempotent, so a 0.1.0 catalog (which has these tables but no record) passes through."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS embeddings (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")
    db.execute("""
        CREATE TABLE IF NOT EXISTS images (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,          -- POSIX, relative to the library root
            sha256 TEXT,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            width INTEGER,
            height INTEGER,
            format TEXT,
            taken_at TEXT,                      -- EXIF capture time, ISO 8601
            date TEXT,                          -- taken_at, else the file's mtime: what date filters use
            camera TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            error TEXT,
            indexed_at REAL NOT NULL,
            gen INTEGER NOT NULL DEFAULT 0      -- the generation that last wrote the row
        )""")
    if "gen" not in _columns(db, "images"):  # catalogs older than 0.1.0's incremental refresh
        db.execute("ALTER TABLE images ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS images_sha ON images (sha256)")
    db.execute("CREATE INDEX IF NOT EXISTS images_status ON images (status)")
    db.execute("CREATE INDEX IF NOT EXISTS images_gen ON images (gen)")


def m002_embedding_spaces(db: sqlite3.Connection) -> None:
    """Vectors keyed by (space, content hash): a library may hold several models' vectors.
    The 0.1.0 model identity becomes space 1 with its vectors; its DBA setting moves with it."""
    db.execute("""
        CREATE TABLE spaces (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,                 -- the model as the user named it
            key TEXT NOT NULL UNIQUE,           -- sha256 of the identity's vector-changing parts
            identity TEXT NOT NULL,             -- JSON: model, weights, pixel pipeline
            state TEXT NOT NULL DEFAULT '{}',   -- JSON: index spec and recall, DBA
            created_at REAL NOT NULL
        )""")
    db.execute("""
        CREATE TABLE vectors (
            space INTEGER NOT NULL REFERENCES spaces (id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (space, sha256)
        ) WITHOUT ROWID""")
    row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    if row is not None:
        identity = json.loads(row[0])
        identity.setdefault("pipeline", dict(PIPELINE_0_1_0))
        dba = db.execute("SELECT value FROM meta WHERE key = 'dba'").fetchone()
        state = {"dba": json.loads(dba[0])} if dba and json.loads(dba[0]) else {}
        db.execute(
            "INSERT INTO spaces (id, name, key, identity, state, created_at) VALUES (1, ?, ?, ?, ?, ?)",
            (identity.get("model_name") or identity.get("model"), space_digest(identity),
             json.dumps(identity), json.dumps(state), time.time()),
        )
        db.execute("INSERT INTO vectors SELECT 1, sha256, vector FROM embeddings")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('active_space', '1')")
    db.execute("DROP TABLE embeddings")
    db.execute("DELETE FROM meta WHERE key IN ('model', 'dba')")


def m003_epoch(db: sqlite3.Connection) -> None:
    """A random token naming this catalog's history: files saved beside it carry it, so a
    copy from another history (a restored backup, another library) is never mistaken for one."""
    db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (json.dumps(uuid.uuid4().hex),))


def m004_path_bytes(db: sqlite3.Connection) -> None:
    """File names that are not valid UTF-8 (old Latin-1 names, network shares) keep their
    bytes here; `path` holds a readable rendering with the odd bytes escaped."""
    db.execute("ALTER TABLE images ADD COLUMN path_bytes BLOB")


def m005_text_fts(db: sqlite3.Connection) -> None:
    """The text layer (issue 14): the OCR cache by content hash and an FTS5 document per
    searchable image (file and folder names, camera, date; OCR words once read), written for
    every row already indexed, so file names are searchable at once."""
    from loupe.text import fts, store

    fts.ensure_schema(db)
    store.rebuild_documents(db)


MIGRATIONS: tuple[Migration, ...] = (m001_initial, m002_embedding_spaces, m003_epoch, m004_path_bytes,
                                     m005_text_fts)

# The pixel pipeline of Loupe 0.1.0 (the same as today's): recorded for migrated spaces.
PIPELINE_0_1_0 = {"decode": "jpeg-draft>=image_size", "exif_orientation": True, "alpha": "white"}

# The identity fields that change vectors; two identities agreeing here share a space.
SPACE_FIELDS = ("arch", "source", "dim", "image_size", "preprocess", "pipeline")


def space_digest(identity: dict) -> str:
    key = {k: identity.get(k) for k in SPACE_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied. `db` is in
    autocommit mode; each migration is its own IMMEDIATE transaction, so two processes
    opening an old catalog at once apply each migration once."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied: list[str] = []
    for migration in MIGRATIONS:
        name = migration.__name__
        if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                migration(db)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                applied.append(name)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # an interrupt as COMMIT returned leaves none to roll back
                db.execute("ROLLBACK")
            raise
    return applied


def pending(db: sqlite3.Connection) -> list[str]:
    """Names of migrations a catalog still needs (a read-only library must not need any)."""
    if "_migrations" not in _tables(db):
        return [m.__name__ for m in MIGRATIONS]
    done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
    return [m.__name__ for m in MIGRATIONS if m.__name__ not in done]
