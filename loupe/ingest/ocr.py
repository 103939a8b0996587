"""The OCR pass of an index run: read the text in every indexed content the library's engine
has not read yet, and commit the words with the documents that show them.

    report = run_ocr(catalog, root, engine, options, progress=...)

It runs after the vectors are committed, over content hashes rather than files (a copy or a
moved file is never read twice; a new file whose content was read is free), so the same pass
serves new images and a backfill of a library indexed before `--ocr`. Why a pass of its own and
not a step of the embedding batch: at 1536 px OCR costs about 7x the CPU of decoding and
embedding a photo with ViT-B-32 (benchmarks/ocr.py), so images become searchable by their
vectors first and their words follow.

Decoding runs in a worker thread one batch ahead of the engine (Pillow releases the GIL); the
engine reads one image at a time with its own threads. Each batch is one transaction (the words
of each content and the rewritten documents of every row holding it): a kill -9 loses at most
the batch in flight, and the next run asks the catalog again what is missing, so it resumes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loupe.core.config import IndexOptions
from loupe.core.errors import DecodeError, LibraryError
from loupe.media.decode import decode, read_bytes
from loupe.storage.catalog import Catalog, from_db
from loupe.text import store as text_store
from loupe.text.ocr import OcrEngine, Word, identity_key, scale_words

# Contents per transaction: a batch is ~1.7 CPU-s a photo at 1536 px, so an interrupt loses at
# most ~15 s of reading, and a commit (one fsync) per batch costs nothing beside it.
OCR_BATCH = 8


@dataclass
class OcrReport:
    engine: str = ""
    contents: int = 0          # indexed contents in the library
    todo: int = 0              # not read by this engine when the pass began
    read: int = 0              # read in this pass
    with_text: int = 0         # of those, with at least one word
    words: int = 0
    documents: int = 0         # documents rewritten with the words
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): retried next run
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        d["seconds"] = round(self.seconds, 3)
        d["skipped"] = [{"path": p, "error": e} for p, e in self.skipped]
        return d


@dataclass
class _Read:
    sha: str
    path: str
    words: list[Word] | None = None
    image: Any = None
    scale: tuple[float, float] = (1.0, 1.0)
    error: str | None = None


def load_engine(name: str, threads: int = 0) -> OcrEngine:
    """The engine by name (`loupe.text.ocr` registry); a missing extra or an unknown name is a
    LibraryError naming it."""
    from loupe.text.ocr import OcrUnavailable, get_engine

    try:
        return get_engine(name, **({"threads": threads} if threads else {}))
    except (OcrUnavailable, ValueError) as exc:
        raise LibraryError(f"cannot read text in images: {exc}") from None


def read_words(root: Path, sha: str, path: str, engine: OcrEngine,
               options: IndexOptions) -> list[Word]:
    """The words in one file, boxes in pixels of the full-size upright image: the pure step
    (no SQLite). Raises DecodeError (or OSError) when the file cannot be read as indexed."""
    item = _ocr(_decode(root, sha, path, engine, options), engine)
    if item.error:
        raise DecodeError(item.error)
    return item.words or []


def _decode(root: Path, sha: str, path: str, engine: OcrEngine, options: IndexOptions) -> _Read:
    item = _Read(sha, path)
    try:
        data = read_bytes(root / path, options.max_file_bytes)
        if hashlib.sha256(data).hexdigest() != sha:
            item.error = "changed since it was indexed: read at the next index run"
            return item
        # JPEGs decode reduced but never below what the engine reads (its long side).
        decoded = decode(data, max_pixels=options.max_pixels,
                         reduce_to=getattr(engine, "side", None))
    except DecodeError as exc:
        item.error = str(exc)
        return item
    except OSError as exc:
        item.error = f"unreadable: {exc.strerror or exc}"
        return item
    item.image = decoded.image
    item.scale = (decoded.width / decoded.image.width, decoded.height / decoded.image.height)
    return item


def _ocr(item: _Read, engine: OcrEngine) -> _Read:
    if item.image is None:
        return item
    try:
        item.words = scale_words(engine.read(item.image), *item.scale)
    except Exception as exc:  # noqa: BLE001 - one file the engine fails on is that file's reason
        item.error = f"OCR failed: {type(exc).__name__}: {exc}"[:300]
    finally:
        item.image = None
    return item


def run_ocr(catalog: Catalog, root: Path, engine: OcrEngine, options: IndexOptions | None = None,
            *, progress: Callable[[int, int], None] | None = None,
            batch_size: int = OCR_BATCH) -> OcrReport:
    """Read every indexed content `engine` has not read; see the module's docstring."""
    options = options or IndexOptions()
    started = time.perf_counter()
    key = identity_key(engine.identity)
    with catalog.transaction(bump=False) as db:
        text_store.set_ocr_setting(db, engine=engine.name, key=key)
    todo = text_store.missing_ocr(catalog.db, key)
    report = OcrReport(engine=key, contents=text_store.ocr_counts(catalog.db, key)["contents"],
                       todo=len(todo))
    if progress:
        progress(0, len(todo))
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-ocr-decode") as pool:
        try:
            for batch in _batches(pool, todo, engine, options, batch_size, root):
                results = [_ocr(item, engine) for item in batch]
                with catalog.transaction(bump=False) as db:
                    for item in results:
                        if item.words is None:
                            continue
                        report.documents += text_store.put_words(db, item.sha, key, item.words)
                for item in results:
                    if item.words is None:
                        report.skipped.append((item.path, item.error or "not read"))
                        continue
                    report.read += 1
                    report.words += len(item.words)
                    report.with_text += bool(item.words)
                done += len(batch)
                if progress:
                    progress(done, len(todo))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    report.seconds = time.perf_counter() - started
    catalog.set_meta("last_ocr", {"finished_at": time.time(), **report.to_dict()})
    return report


def _batches(pool: ThreadPoolExecutor, todo: list[tuple[str, str, bytes | None]],
             engine: OcrEngine, options: IndexOptions, size: int,
             root: Path) -> Iterator[list[_Read]]:
    """Decoded batches, the next one decoding while the engine reads this one."""
    def decode_batch(part: list[tuple[str, str, bytes | None]]) -> list[_Read]:
        return [_decode(root, sha, from_db(path, raw), engine, options) for sha, path, raw in part]

    parts = [todo[i * size:(i + 1) * size] for i in range(math.ceil(len(todo) / size))]
    ahead = pool.submit(decode_batch, parts[0]) if parts else None
    for i in range(len(parts)):
        assert ahead is not None
        batch = ahead.result()
        ahead = pool.submit(decode_batch, parts[i + 1]) if i + 1 < len(parts) else None
        yield batch
