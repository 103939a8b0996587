"""Index a folder: scan -> read+hash -> decode -> encode -> commit, one batch per transaction.

Decoding runs in worker threads (Pillow releases the GIL while it decodes and
resizes) a bounded window ahead of the model, so I/O and decoding hide behind
inference. Every batch is committed in one SQLite transaction: a crash or
Ctrl-C loses at most the batch in flight, and the same command resumes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loupe.catalog import META_COLUMNS, Catalog
from loupe.config import IndexOptions
from loupe.decode import DecodeError, decode, read_bytes
from loupe.encoders import Encoder
from loupe.scan import FileEntry, scan

# progress(done, total) is called after each committed batch; total is fixed once scanning ends.
Progress = Callable[[int, int], None]


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
    error_list: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "error_list"}
        d["seconds"] = round(self.seconds, 3)
        d["error_list"] = [{"path": p, "error": e} for p, e in self.error_list]
        return d


@dataclass
class _Item:
    entry: FileEntry
    sha: str | None = None
    meta: dict[str, Any] | None = None
    pixels: np.ndarray | None = None   # the model's input, for new content
    error: str | None = None
    reused: bool = False


def run_index(catalog: Catalog, encoder: Encoder, root: Path, options: IndexOptions,
              progress: Progress | None = None) -> IndexReport:
    started = time.perf_counter()
    report = IndexReport()
    entries = list(scan(root, options.include, options.exclude, options.skip_hidden))
    report.scanned = len(entries)
    known = catalog.files()
    present = {e.rel for e in entries}
    gone = [rel for rel in known if rel not in present]

    todo: list[FileEntry] = []
    for e in entries:
        row = known.get(e.rel)
        if row is not None and row["size"] == e.size and row["mtime"] == e.mtime:
            report.unchanged += 1
        else:
            todo.append(e)

    # Deleted files leave first, in one transaction, but keep their vectors and metadata
    # until the run ends, so that a file that moved is matched by content and not re-embedded.
    left_behind: dict[str, dict[str, Any]] = {}
    for rel in gone:
        sha = known[rel]["sha256"]
        if sha and known[rel]["status"] == "ok":
            left_behind[sha] = catalog.meta_for_hash(sha) or {}
    if gone:
        with catalog.transaction() as db:
            Catalog.delete_paths(db, gone)
    report.removed = len(gone)

    hashes = catalog.known_hashes()
    old_sha = {e.rel: known[e.rel]["sha256"] for e in todo if e.rel in known}
    done = 0
    total = len(todo)
    if progress:
        progress(0, total)

    def work(entry: FileEntry) -> _Item:
        return _prepare(entry, root, encoder, options, hashes, left_behind, catalog)

    batch: list[_Item] = []
    n_new = 0
    workers = options.workers or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loupe-decode") as pool:
        try:
            for item in _ordered(pool, work, todo, window=options.batch_size * 2 + workers):
                batch.append(item)
                n_new += item.pixels is not None
                if n_new >= options.batch_size:
                    _commit(catalog, encoder, batch, report, old_sha, left_behind, hashes)
                    done += len(batch)
                    batch, n_new = [], 0
                    if progress:
                        progress(done, total)
            if batch:
                _commit(catalog, encoder, batch, report, old_sha, left_behind, hashes)
                done += len(batch)
                if progress:
                    progress(done, total)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    # Orphan vectors are referenced by no searchable row: dropping them changes no result.
    with catalog.transaction(bump=False) as db:
        Catalog.drop_orphan_vectors(db)
        catalog.set_meta("last_index", {"finished_at": time.time(), **report.to_dict()}, db=db)
    report.seconds = time.perf_counter() - started
    return report


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[FileEntry], _Item],
             items: Iterable[FileEntry], window: int) -> Iterator[_Item]:
    """pool.map, but with at most `window` items in flight (bounded memory) and in order."""
    it = iter(items)
    queue = deque(pool.submit(fn, e) for _, e in zip(range(window), it, strict=False))
    while queue:
        item = queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(fn, nxt))
        yield item


def _prepare(entry: FileEntry, root: Path, encoder: Encoder, options: IndexOptions,
             hashes: set[str], left_behind: dict[str, dict[str, Any]], catalog: Catalog) -> _Item:
    """Runs in a worker thread: read, hash, and (for new content) decode and preprocess."""
    try:
        data = read_bytes(root / entry.rel, options.max_file_bytes)
    except DecodeError as exc:
        return _Item(entry, error=str(exc))
    except OSError as exc:
        return _Item(entry, error=f"unreadable: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    if sha in hashes:
        meta = left_behind.get(sha) or catalog.meta_for_hash(sha)
        if meta:
            return _Item(entry, sha=sha, meta=meta, reused=True)
    try:
        decoded = decode(data, max_pixels=options.max_pixels, reduce_to=encoder.image_size)
    except DecodeError as exc:
        return _Item(entry, sha=sha, error=str(exc))
    meta = {c: getattr(decoded, c) for c in META_COLUMNS}
    if sha in hashes:  # vector known, metadata lost (e.g. a crash mid-move): keep the vector
        return _Item(entry, sha=sha, meta=meta, reused=True)
    return _Item(entry, sha=sha, meta=meta, pixels=encoder.prepare(decoded.image))


def _commit(catalog: Catalog, encoder: Encoder, batch: list[_Item], report: IndexReport,
            old_sha: dict[str, str | None], left_behind: dict[str, dict[str, Any]],
            hashes: set[str]) -> None:
    fresh = [it for it in batch if it.pixels is not None]
    vectors = encoder.encode_pixels(np.stack([it.pixels for it in fresh])) if fresh else None
    with catalog.transaction() as db:
        for i, it in enumerate(fresh):
            Catalog.put_vector(db, it.sha, vectors[i])
        for it in batch:
            e = it.entry
            Catalog.put_image(db, e.rel, e.size, e.mtime, sha=it.sha, meta=it.meta, error=it.error)
    # Counted only once committed, so the report matches what the catalog holds.
    seen: set[str] = set()
    for it in batch:
        # Identical files new in the same run were embedded side by side: one is a copy.
        is_copy = it.sha in hashes or it.sha in seen
        if it.sha:
            seen.add(it.sha)
        was = old_sha.get(it.entry.rel, "new")
        if it.error:
            report.errors += 1
            report.error_list.append((it.entry.rel, it.error))
        elif was == it.sha:
            report.unchanged += 1  # touched, same bytes
        elif was != "new":
            report.updated += 1
        elif it.reused and it.sha in left_behind:
            report.moved += 1
            left_behind.pop(it.sha)
        elif it.reused or is_copy:
            report.copies += 1
        else:
            report.added += 1
    report.embedded += len(fresh)
    hashes.update(it.sha for it in fresh)
    for it in batch:
        it.pixels = None
