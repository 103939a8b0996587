"""The SQLite catalog: one row per file; per embedding space, one vector per distinct content.

Vectors live in the same database as the rows that use them, keyed by (space,
content hash), so a batch commit is one transaction: a crash loses at most the
batch in flight, and a moved or copied file reuses its vector for free. The
schema is built and upgraded by the named migrations in `migrations.py`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.errors import LibraryError
from loupe.core.paths import glob_match
from loupe.core.types import Filters
from loupe.storage.migrations import migrate, pending, space_digest
from loupe.text import store as text_store

# put_image runs inside a bumping transaction: the row belongs to the generation it creates.
_NEXT_GEN = "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0) + 1"

META_COLUMNS = ("width", "height", "format", "taken_at", "camera")


class Catalog:
    """Thread-safe: each thread gets its own connection (SQLite connections are not shared).

    Commits are durable: WAL with synchronous=FULL syncs the log at every commit, so a
    power cut cannot take the generation back behind files saved beside the catalog
    (one fsync per batch of 32 images: see the README for its cost). A catalog that
    cannot be written (read-only media, another user's library) opens read-only: it
    searches, and every write says why it cannot."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        if read_only:
            todo = pending(self.db)
            if todo:
                raise LibraryError(f"the library at {self.path.parent} was written by an older Loupe "
                                   f"and needs upgrading ({', '.join(todo)}), but it is read-only: "
                                   "open it once where it can be written")
            self.migrated: list[str] = []
        else:
            self.migrated = migrate(self.db)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       timeout=60, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self, bump: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. `bump` moves the generation on, telling readers that
        what is searchable changed; leave it off for writes that change nothing searchable."""
        if self.read_only:
            raise LibraryError(f"the library at {self.path.parent} is read-only: it can be searched, "
                               "not changed")
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            if bump:
                db.execute(
                    "INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) DO UPDATE "
                    "SET value = CAST(value AS INTEGER) + 1"
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back itself (a full disk): keep the cause
                db.execute("ROLLBACK")
            raise

    # --- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any, db: sqlite3.Connection | None = None,
                 bump: bool = False) -> None:
        sql = "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        if db is not None:
            db.execute(sql, (key, json.dumps(value)))
            return
        with self.transaction(bump=bump) as tx:
            tx.execute(sql, (key, json.dumps(value)))

    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    # --- what the indexer needs -----------------------------------------------------------
    def files(self) -> dict[str, sqlite3.Row]:
        rows = self.db.execute("SELECT id, path, path_bytes, size, mtime, sha256, status FROM images")
        return {from_db(r["path"], r["path_bytes"]): r for r in rows}

    def known_hashes(self, space: int) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT sha256 FROM vectors WHERE space = ?", (space,))}

    def meta_for_hash(self, sha: str) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {', '.join(META_COLUMNS)} FROM images WHERE sha256 = ? AND status = 'ok' "
            "AND width IS NOT NULL LIMIT 1", (sha,)
        ).fetchone()
        return dict(row) if row else None

    @staticmethod
    def put_image(db: sqlite3.Connection, rel: str, size: int, mtime: float, *, sha: str | None,
                  meta: dict[str, Any] | None = None, error: str | None = None) -> None:
        meta = meta or {}
        date = meta.get("taken_at") or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))
        db.execute(
            f"""INSERT INTO images (path, path_bytes, sha256, size, mtime, width, height, format,
                   taken_at, date, camera, status, error, indexed_at, gen)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?, {_NEXT_GEN})
               ON CONFLICT(path) DO UPDATE SET path_bytes=excluded.path_bytes,
                   sha256=excluded.sha256, size=excluded.size,
                   mtime=excluded.mtime, width=excluded.width, height=excluded.height,
                   format=excluded.format, taken_at=excluded.taken_at, date=excluded.date,
                   camera=excluded.camera, status=excluded.status, error=excluded.error,
                   indexed_at=excluded.indexed_at, gen=excluded.gen""",
            (*to_db(rel), sha, size, mtime, *(meta.get(c) for c in ("width", "height", "format", "taken_at")),
             date, meta.get("camera"), "error" if error else "ok", error, time.time()),
        )
        # The row's full-text document, in the same transaction (loupe.text.store).
        path = to_db(rel)[0]
        image_id = db.execute("SELECT id FROM images WHERE path = ?", (path,)).fetchone()[0]
        text_store.write_document(db, image_id, path, sha, {**meta, "date": date}, ok=not error)

    @staticmethod
    def put_vector(db: sqlite3.Connection, space: int, sha: str, vector: np.ndarray) -> None:
        db.execute(
            "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)",
            (space, sha, np.ascontiguousarray(vector, dtype=np.float32).tobytes()),
        )

    @staticmethod
    def delete_paths(db: sqlite3.Connection, rels: Iterable[str]) -> None:
        rels = list(rels)
        text_store.remove_paths(db, (to_db(r)[0] for r in rels))
        db.executemany("DELETE FROM images WHERE path = ?", ((to_db(r)[0],) for r in rels))

    @staticmethod
    def drop_orphan_vectors(db: sqlite3.Connection) -> int:
        cur = db.execute(
            "DELETE FROM vectors WHERE sha256 NOT IN "
            "(SELECT sha256 FROM images WHERE sha256 IS NOT NULL AND status = 'ok')"
        )
        return cur.rowcount

    # --- what search needs ----------------------------------------------------------------
    def load_matrix(self, space: int, dim: int, since: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Images searchable in `space`: (ids, vectors), in id order; only rows written after
        generation `since` when it is given.

        Streamed into one array sized by the `ok` rows (an upper bound: an image joins one
        vector per space; the pages of an unused tail are never touched), so the peak is the
        matrix itself, not the matrix plus every row's bytes object and their join (at 1M x
        512, measured: a peak of 2,046 MiB instead of 4,251)."""
        since = -1 if since is None else since
        upper = self.db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok' AND gen > ?",
                                (since,)).fetchone()[0]
        ids = np.empty(upper, np.int64)
        matrix = np.empty((upper, dim), np.float32)
        rows = self.db.execute(
            "SELECT i.id, v.vector FROM images i JOIN vectors v ON v.sha256 = i.sha256 "
            "WHERE v.space = ? AND i.status = 'ok' AND i.gen > ? ORDER BY i.id", (space, since))
        n = 0
        while chunk := rows.fetchmany(4096):
            m = len(chunk)
            if n + m > len(ids):     # rows committed between the count and the read
                grow = max(n + m, len(ids) * 5 // 4)
                ids, matrix = np.resize(ids, grow), np.resize(matrix, (grow, dim))
            ids[n: n + m] = [r[0] for r in chunk]
            matrix[n: n + m] = np.frombuffer(b"".join(r[1] for r in chunk),
                                             dtype=np.float32).reshape(m, dim)
            n += m
        return ids[:n], matrix[:n]

    def searchable_ids(self, space: int) -> np.ndarray:
        """Ids of rows whose content has a vector in `space`, in id order."""
        rows = self.db.execute(
            "SELECT i.id FROM images i JOIN vectors v ON v.sha256 = i.sha256 "
            "WHERE v.space = ? AND i.status = 'ok' ORDER BY i.id", (space,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def ok_ids(self) -> np.ndarray:
        """Ids of every row whose file was read, in id order (no join: ~15x cheaper than
        `searchable_ids` at 1M rows)."""
        rows = self.db.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def changed_ids(self, since: int) -> np.ndarray:
        """Ids of rows written after generation `since`, whatever their state now."""
        rows = self.db.execute("SELECT id FROM images WHERE gen > ? ORDER BY id", (since,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def record(self, image_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (int(image_id),)).fetchone()
        return _record(row) if row else None

    def records(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            rows = self.db.execute(
                f"SELECT * FROM images WHERE id IN ({','.join('?' * len(part))})", part
            )
            out.update((r["id"], _record(r)) for r in rows)
        return out

    def id_of_path(self, rel: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE path = ?", (to_db(rel)[0],)).fetchone()
        return row[0] if row else None

    def filter_ids(self, f: Filters, searchable: bool = True) -> np.ndarray:
        """Ids of searchable images that pass every filter. `searchable=False` skips the status
        check, for callers that intersect with searchable ids anyway (the search index): with a
        folder filter alone the query then reads the path index only, no row."""
        # '+status': never the status index, which costs a row lookup per image when most are ok
        # (measured: 2.7 s for a folder filter at 1M images against 0.34 s with the path range).
        where, args = (["+status = 'ok'"] if searchable else ["1"]), []
        if f.folder:
            # A range on the path index: in binary order every path under 'prefix/' sorts from
            # 'prefix/' up to 'prefix0' ('0' follows '/'). LIKE (case-insensitive) would scan
            # every row; paths are case-sensitive, so the match is too.
            prefix = f.folder.strip("/")
            where.append("path >= ? AND path < ?")
            args.extend([prefix + "/", prefix + "0"])
        if f.since:
            where.append("date >= ?")
            args.append(f.since)
        if f.until:
            # An inclusive day: '2024-05-01' takes everything up to 2024-05-01T23:59:59.
            where.append("date <= ?")
            args.append(f.until if "T" in f.until else f.until + "T99")
        if f.min_width:
            where.append("width >= ?")
            args.append(int(f.min_width))
        if f.min_height:
            where.append("height >= ?")
            args.append(int(f.min_height))
        if f.types:
            where.append(f"format IN ({','.join('?' * len(f.types))})")
            args.extend(t.upper() for t in f.types)
        if not f.glob:
            # One string of ids parsed by numpy: a row per id through Python costs 4x more
            # (100k ids of a 1M library: 76 ms against 19 ms).
            text = self.db.execute(f"SELECT group_concat(id) FROM images WHERE {' AND '.join(where)}",
                                   args).fetchone()[0]
            return np.fromstring(text or "", dtype=np.int64, sep=",")
        rows = self.db.execute(f"SELECT id, path FROM images WHERE {' AND '.join(where)}", args)
        ids = [r[0] for r in rows if glob_match(r[1], f.glob)]
        return np.asarray(ids, dtype=np.int64)

    def counts(self, space: int | None = None) -> dict[str, int]:
        """Files, indexed, errors; distinct vectors of `space` (default: the active one)."""
        space = self.active_space() if space is None else space
        row = self.db.execute(
            "SELECT COUNT(*), SUM(status = 'ok'), SUM(status = 'error'), "
            "(SELECT COUNT(*) FROM vectors WHERE space = ?) FROM images", (space,)
        ).fetchone()
        return {"files": row[0], "indexed": row[1] or 0, "errors": row[2] or 0, "vectors": row[3]}

    # --- embedding spaces -----------------------------------------------------------------
    def spaces(self) -> list[dict[str, Any]]:
        """Every space with its identity, state and how many distinct contents it holds."""
        rows = self.db.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM vectors v WHERE v.space = s.id) AS vectors "
            "FROM spaces s ORDER BY s.id"
        ).fetchall()
        active = self.active_space()
        return [{**dict(r), "identity": json.loads(r["identity"]), "state": json.loads(r["state"]),
                 "active": r["id"] == active} for r in rows]

    def space(self, space: int) -> dict[str, Any] | None:
        """One space's identity and state, without counting its vectors (`spaces()` counts):
        the search path reads this on every query, and a count walks the space's rows."""
        r = self.db.execute("SELECT * FROM spaces WHERE id = ?", (space,)).fetchone()
        if r is None:
            return None
        return {**dict(r), "identity": json.loads(r["identity"]), "state": json.loads(r["state"]),
                "active": r["id"] == self.active_space()}

    def active_space(self) -> int | None:
        value = self.get_meta("active_space")
        return int(value) if value is not None else None

    def space_for(self, identity: dict[str, Any]) -> int | None:
        row = self.db.execute("SELECT id FROM spaces WHERE key = ?", (space_digest(identity),)).fetchone()
        return int(row[0]) if row else None

    def add_space(self, name: str, identity: dict[str, Any], activate: bool = False) -> int:
        """The space of `identity`, created if new (same vector-changing identity, same space)."""
        with self.transaction(bump=activate) as db:
            db.execute(
                "INSERT OR IGNORE INTO spaces (name, key, identity, created_at) VALUES (?, ?, ?, ?)",
                (name, space_digest(identity), json.dumps(identity), time.time()),
            )
            space = int(db.execute("SELECT id FROM spaces WHERE key = ?",
                                   (space_digest(identity),)).fetchone()[0])
            if activate:
                self.set_meta("active_space", space, db=db)
        return space

    def space_state(self, space: int) -> dict[str, Any]:
        row = self.db.execute("SELECT state FROM spaces WHERE id = ?", (space,)).fetchone()
        return json.loads(row[0]) if row else {}

    def update_space_state(self, space: int, bump: bool = False, **changes: Any) -> None:
        """Merge `changes` into a space's state (None deletes a key); `bump` when what is
        searchable changes (DBA on or off)."""
        with self.transaction(bump=bump) as db:
            row = db.execute("SELECT state FROM spaces WHERE id = ?", (space,)).fetchone()
            state = json.loads(row[0]) if row else {}
            state.update(changes)
            state = {k: v for k, v in state.items() if v is not None}
            db.execute("UPDATE spaces SET state = ? WHERE id = ?", (json.dumps(state), space))

    def epoch(self) -> str:
        return str(self.get_meta("epoch", ""))

    def errors(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT path, error FROM images WHERE status = 'error' ORDER BY path"
        rows = self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [dict(r) for r in rows]

    def formats(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT format, COUNT(*) FROM images WHERE status = 'ok' GROUP BY format ORDER BY 2 DESC"
        )
        return {r[0]: r[1] for r in rows}


def to_db(rel: str) -> tuple[str, bytes | None]:
    """A path as stored: text, plus its bytes when it is not valid UTF-8 (os.fsdecode's
    surrogate escapes); the text then shows those bytes as \\xNN."""
    try:
        rel.encode("utf-8")
        return rel, None
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        return raw.decode("utf-8", "backslashreplace"), raw


def from_db(text: str, raw: bytes | None) -> str:
    """The path as the file system knows it (what `to_db` stored)."""
    return os.fsdecode(raw) if raw is not None else text


def _record(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a dict: `path` opens the file (lossless), `display_path` prints safely."""
    rec = dict(row)
    rec["display_path"] = rec["path"]
    rec["path"] = from_db(rec["path"], rec.pop("path_bytes", None))
    return rec

