"""Commit embedded batches to the catalog, one transaction each, and count what happened.

Counts are taken only once a batch is committed, so the report matches what the
catalog holds even when a run is interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loupe.ingest.embed import Item
from loupe.storage.catalog import Catalog


@dataclass
class IndexReport:
    scanned: int = 0
    added: int = 0          # new content, embedded
    updated: int = 0        # same path, new content, re-embedded
    moved: int = 0          # new path for content that left another path: vector kept
    copies: int = 0         # new path for content already indexed elsewhere: vector shared
    unchanged: int = 0
    removed: int = 0
    errors: int = 0         # files recorded with an error in this run
    embedded: int = 0       # model forward passes, images
    seconds: float = 0.0
    model_loaded: bool = False
    encoder: dict[str, Any] | None = None   # what the model ran on: backend, precision, fallback
    unreadable: list[str] = field(default_factory=list)      # folders the scan could not read
    outside_links: int = 0                                    # symlinks leaving the root: skipped
    error_list: list[tuple[str, str]] = field(default_factory=list)
    ocr: dict[str, Any] | None = None                        # the OCR pass (loupe.ingest.ocr)
    switch: dict[str, Any] | None = None                     # a model switch it carried on

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "error_list"}
        d["seconds"] = round(self.seconds, 3)
        d["error_list"] = [{"path": p, "error": e} for p, e in self.error_list]
        return d


@dataclass
class RunState:
    """What a run carries from batch to batch."""

    space: int
    known: set[str]                                  # contents the space holds a vector for
    old_sha: dict[str, str | None]                   # changed paths: the content they had
    left_behind: dict[str, dict[str, Any]]           # content of deleted paths -> its metadata


def commit(catalog: Catalog, batch: Sequence[Item], state: RunState, report: IndexReport) -> None:
    """Write one batch (vectors and rows together) and count it. What the batch relies on
    is checked inside the transaction: a reused vector must still be there (another
    writer could have dropped it); if not, the row is left to be embedded next run."""
    with catalog.transaction() as db:
        for it in batch:
            if it.vector is not None:
                Catalog.put_vector(db, state.space, it.sha, it.vector)
        for it in batch:
            e = it.entry
            size = e.size
            if it.reused and not db.execute("SELECT 1 FROM vectors WHERE space = ? AND sha256 = ?",
                                            (state.space, it.sha)).fetchone():
                it.error, it.reused, size = "its vector vanished during the run; indexed again next run", False, -1
                state.known.discard(it.sha)
            Catalog.put_image(db, e.rel, size, e.mtime, sha=it.sha, meta=it.meta, error=it.error)
    seen: set[str] = set()
    for it in batch:
        # Identical files new in the same run were embedded side by side: one is a copy.
        is_copy = it.sha in state.known or it.sha in seen
        if it.sha:
            seen.add(it.sha)
        was = state.old_sha.get(it.entry.rel, "new")
        if it.error:
            report.errors += 1
            report.error_list.append((it.entry.rel, it.error))
        elif was == it.sha:
            report.unchanged += 1  # touched, same bytes
        elif was != "new":
            report.updated += 1
        elif it.reused and it.sha in state.left_behind:
            report.moved += 1
            state.left_behind.pop(it.sha)
        elif it.reused or is_copy:
            report.copies += 1
        else:
            report.added += 1
    report.embedded += sum(it.vector is not None for it in batch)
    state.known.update(it.sha for it in batch if it.vector is not None)


def commit_embedded(catalog: Catalog, space: int, rows: Sequence[tuple[str, str, Any, dict[str, Any]]]
                    ) -> None:
    """One transaction of rows embedded elsewhere: (relative path, sha256, vector, metadata
    with optional size and mtime)."""
    with catalog.transaction() as db:
        for rel, sha, vector, meta in rows:
            Catalog.put_vector(db, space, sha, vector)
            Catalog.put_image(db, rel, int(meta.get("size", 0)), float(meta.get("mtime", 0.0)),
                              sha=sha, meta=meta)
