"""What a model switch reads and writes in the catalog: the target space, its coverage, the
contents it still lacks, the swap and the drop.

The target is one meta key (`target_space`): no schema change. The swap is one transaction
that checks, inside it, that the target holds a vector for every indexed content and only then
moves `active_space`; readers see the old space or the new one, never a mix.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from loupe.core.errors import LibraryError
from loupe.storage.catalog import Catalog, from_db

TARGET_KEY = "target_space"

_MISSING = ("FROM images i WHERE i.status = 'ok' AND i.sha256 IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM vectors v WHERE v.space = ? AND v.sha256 = i.sha256)")


def target_space(catalog: Catalog) -> int | None:
    value = catalog.get_meta(TARGET_KEY)
    return int(value) if value is not None else None


def set_target(catalog: Catalog, space: int | None) -> None:
    """Make `space` the target of a switch (None: no switch under way)."""
    with catalog.transaction(bump=True) as db:
        if space is None:
            db.execute("DELETE FROM meta WHERE key = ?", (TARGET_KEY,))
        else:
            catalog.set_meta(TARGET_KEY, int(space), db=db)


def coverage(catalog: Catalog, space: int) -> tuple[int, int]:
    """(indexed images whose content has a vector in `space`, indexed images)."""
    row = catalog.db.execute(
        "SELECT COUNT(*), SUM(EXISTS (SELECT 1 FROM vectors v WHERE v.space = ? "
        "AND v.sha256 = i.sha256)) FROM images i WHERE i.status = 'ok'", (space,)).fetchone()
    return int(row[1] or 0), int(row[0])


def missing_contents(catalog: Catalog, space: int) -> list[tuple[str, str, int, float]]:
    """Contents indexed but without a vector in `space`, one file each: (sha256, path, size,
    mtime), in content-hash order: a fixed, folder-independent order, so the first contents
    filled (the bridge's sample) are a uniform sample of the library, and a resumed fill
    carries on where the last one stopped."""
    rows = catalog.db.execute(
        f"SELECT i.sha256, MIN(i.path), i.path_bytes, i.size, i.mtime {_MISSING} "
        "GROUP BY i.sha256 ORDER BY i.sha256", (space,)).fetchall()
    return [(r[0], from_db(r[1], r[2]), int(r[3]), float(r[4])) for r in rows]


def shared_contents(catalog: Catalog, a: int, b: int, dim_a: int, dim_b: int, limit: int
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Up to `limit` indexed contents with a vector in both spaces, in content-hash order:
    (hashes, vectors in a, vectors in b)."""
    rows = catalog.db.execute(
        "SELECT va.sha256, va.vector, vb.vector FROM vectors va JOIN vectors vb "
        "ON vb.sha256 = va.sha256 AND vb.space = ? WHERE va.space = ? AND va.sha256 IN "
        "(SELECT sha256 FROM images WHERE status = 'ok') ORDER BY va.sha256 LIMIT ?",
        (b, a, int(limit))).fetchall()
    xa = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, dim_a)
    xb = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, dim_b)
    return [r[0] for r in rows], xa, xb


def vectors_of_ids(catalog: Catalog, space: int, dim: int, ids: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors in `space`) of those of `ids` whose content has a vector there."""
    got: list[tuple[int, bytes]] = []
    ids = [int(i) for i in ids]
    for at in range(0, len(ids), 500):
        part = ids[at:at + 500]
        got += catalog.db.execute(
            "SELECT i.id, v.vector FROM images i JOIN vectors v ON v.sha256 = i.sha256 "
            f"WHERE v.space = ? AND i.status = 'ok' AND i.id IN ({','.join('?' * len(part))})",
            (space, *part)).fetchall()
    got.sort(key=lambda r: r[0])
    out_ids = np.fromiter((r[0] for r in got), np.int64, count=len(got))
    return out_ids, np.frombuffer(b"".join(r[1] for r in got), np.float32).reshape(-1, dim)


def swap(catalog: Catalog, target: int) -> bool:
    """Make `target` the active space if it holds every indexed content; one transaction.
    Returns False (and changes nothing) when something is still missing."""
    try:
        with catalog.transaction(bump=True) as db:
            if db.execute(f"SELECT 1 {_MISSING} LIMIT 1", (target,)).fetchone():
                raise _Incomplete
            _activate(catalog, db, target)
    except _Incomplete:
        return False
    return True


class _Incomplete(Exception):
    """Raised inside the swap's transaction to roll it back."""


def _activate(catalog: Catalog, db: Any, target: int) -> None:
    previous = catalog.get_meta("active_space")
    catalog.set_meta("active_space", int(target), db=db)
    db.execute("DELETE FROM meta WHERE key = ?", (TARGET_KEY,))
    row = db.execute("SELECT state FROM spaces WHERE id = ?", (target,)).fetchone()
    state = json.loads(row[0]) if row else {}
    state["switched"] = {"from": previous, "at": time.time()}
    db.execute("UPDATE spaces SET state = ? WHERE id = ?", (json.dumps(state), target))


def delete_space(catalog: Catalog, space: int) -> int:
    """Delete a space and its vectors (not the active one). Returns vectors deleted."""
    with catalog.transaction(bump=True) as db:
        if catalog.get_meta("active_space") == space:
            raise LibraryError(f"space {space} is the active one: it cannot be dropped")
        n = db.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space,)).fetchone()[0]
        db.execute("DELETE FROM vectors WHERE space = ?", (space,))
        db.execute("DELETE FROM spaces WHERE id = ?", (space,))
        if catalog.get_meta("target_space") == space:
            db.execute("DELETE FROM meta WHERE key = ?", (TARGET_KEY,))
    return int(n)


def space_rows(catalog: Catalog) -> list[dict[str, Any]]:
    """Every space with its coverage, for listing."""
    out = []
    for s in catalog.spaces():
        embedded, total = coverage(catalog, s["id"])
        out.append({**s, "embedded": embedded, "total": total})
    return out
