"""Index a folder: plan -> read (worker threads) -> embed (batched) -> apply, one batch per
transaction.

Reading and decoding run in worker threads (Pillow releases the GIL while it decodes
and resizes) a bounded window ahead of the model, so I/O and decoding hide behind
inference. Every batch is committed in one SQLite transaction: a crash or Ctrl-C
loses at most the batch in flight, and the same command resumes. The model is asked
for only when the first new content needs it: a run where nothing changed loads none.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loupe.core.config import IndexOptions
from loupe.core.errors import DecodeError, ModelError
from loupe.ingest import embed as emb
from loupe.ingest.apply import IndexReport, RunState, commit
from loupe.ingest.embed import Item
from loupe.ingest.plan import Plan
from loupe.media.scan import FileEntry
from loupe.models import preprocess
from loupe.models.options import runtime_info
from loupe.storage.catalog import Catalog

# progress(done, total) is called after each committed batch; total is fixed once scanning ends.
Progress = Callable[[int, int], None]


def run_index(catalog: Catalog, plan: Plan, root: Path, options: IndexOptions, *,
              space: Callable[[], int], encoder: Callable[[], Any], image_size: int | None,
              progress: Progress | None = None,
              identity: dict[str, Any] | None = None) -> IndexReport:
    """Carry out `plan`. `space()` and `encoder()` are called only when content must be
    embedded (they load the model); `image_size` is the space's, when it is known.
    `identity` (the space's, or a new library's model as exported before): pixels are then
    prepared from it in the decode threads while the model loads, instead of waiting for it."""
    started = time.perf_counter()
    if identity is not None and image_size is None:
        image_size = int(identity["image_size"])
    report, state, image_size = begin(catalog, plan, space=space, encoder=encoder,
                                      image_size=image_size)
    total = len(plan.todo)
    if progress:
        progress(0, total)

    quick = identity is not None and preprocess.supports(identity)

    def prepare(image: Any) -> Any:
        return preprocess.prepare(image, identity) if quick else encoder().prepare(image)

    def work(entry: FileEntry) -> Item:
        return emb.read(entry, root, known=state.known, max_file_bytes=options.max_file_bytes,
                        max_pixels=options.max_pixels, image_size=image_size or 0, prepare=prepare)

    def embed(batch: list[Item]) -> None:
        if report.encoder is None:
            _same_pixels(encoder(), identity if quick else None)
            report.encoder = runtime_info(encoder())
        if state.space < 0:   # a new library whose pixels were prepared before the model
            state.space = space()
        emb.embed(batch, encoder().encode_pixels)

    workers = options.workers or max(2, os.cpu_count() or 2)
    batches = Batches(catalog, state, report, root, options, total, progress, embed=embed)
    if quick and state.space < 0 and plan.todo:
        # A new library: every file is new content, so the model will be needed. It loads in
        # the background while the decode threads start (its errors surface again, and are
        # reported, when the first batch asks for it).
        threading.Thread(target=_load_quietly, args=(encoder,), name="loupe-model-load",
                         daemon=True).start()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loupe-decode",
                            initializer=lower_priority if quick else None) as pool:
        try:
            for item in _ordered(pool, work, plan.todo, window=options.batch_size * 2 + workers):
                batches.add(item)
            batches.flush()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return finish(catalog, plan, report, started)


def begin(catalog: Catalog, plan: Plan, *, space: Callable[[], int], encoder: Callable[[], Any],
          image_size: int | None) -> tuple[IndexReport, RunState, int | None]:
    """What every executor (this one, Ray's) does first: the report of the plan, the deleted
    files removed in one transaction, and the state new content is committed against. Loads
    the model only for a library whose image size is unknown (a new one, without an earlier
    export) that has something to embed: the model names the space. Returns (report, state,
    the image size); `state.space` is -1 while the space is still to be named."""
    report = IndexReport(scanned=plan.scanned, unchanged=plan.unchanged,
                         unreadable=list(plan.seen.unreadable), outside_links=len(plan.seen.outside_links))
    known_rows = plan.known

    # Deleted files leave first, in one transaction, but keep their vectors and metadata
    # until the run ends, so that a file that moved is matched by content and not re-embedded.
    left_behind: dict[str, dict[str, Any]] = {}
    for rel in plan.gone:
        sha = known_rows[rel]["sha256"]
        if sha and known_rows[rel]["status"] == "ok":
            left_behind[sha] = catalog.meta_for_hash(sha) or {}
    if plan.gone:
        with catalog.transaction() as db:
            Catalog.delete_paths(db, plan.gone)
    report.removed = len(plan.gone)

    space_id = catalog.active_space()
    if image_size is None and plan.todo:   # a new library: the model names the space
        image_size = encoder().image_size
        space_id = space()
    state = RunState(space=space_id if space_id is not None else -1,
                     known=catalog.known_hashes(space_id) if space_id is not None else set(),
                     old_sha={e.rel: known_rows[e.rel]["sha256"] for e in plan.todo if e.rel in known_rows},
                     left_behind=left_behind)
    return report, state, image_size


class Batches:
    """Items as they are read -> one commit (one transaction) per `options.batch_size` images
    with new content (and at most `max_rows` items). `embed(batch)` fills the vectors of the
    items that carry pixels (items embedded elsewhere, on Ray, carry their vector).
    Progress after each commit."""

    def __init__(self, catalog: Catalog, state: RunState, report: IndexReport, root: Path,
                 options: IndexOptions, total: int, progress: Progress | None, *,
                 embed: Callable[[list[Item]], None] | None = None,
                 max_rows: int | None = None):
        self.catalog, self.state, self.report = catalog, state, report
        self.root, self.options, self.total, self.progress = root, options, total, progress
        self.embed, self.max_rows = embed, max_rows
        self.done = 0
        self._batch: list[Item] = []
        self._new = 0

    def add(self, item: Item) -> None:
        self._batch.append(item)
        self._new += item.pixels is not None or item.vector is not None
        if self._new >= self.options.batch_size or (
                self.max_rows is not None and len(self._batch) >= self.max_rows):
            self.flush()

    def flush(self) -> None:
        batch, self._batch, self._new = self._batch, [], 0
        if not batch:
            return
        _fill_reused(self.catalog, batch, self.state, self.root, self.options)
        if self.embed is not None and any(it.pixels is not None for it in batch):
            self.embed(batch)
        if any(it.vector is not None for it in batch):
            self.report.model_loaded = True
        commit(self.catalog, batch, self.state, self.report)
        self.done += len(batch)
        if self.progress:
            self.progress(self.done, self.total)


def finish(catalog: Catalog, plan: Plan, report: IndexReport, started: float,
           **meta: Any) -> IndexReport:
    """What every executor does last: moves counted, orphan vectors dropped, the run recorded
    (with `meta`, e.g. the executor) as the library's last index run."""
    # A path that left and whose content came back elsewhere was moved, not removed.
    report.removed = len(plan.gone) - report.moved
    # Orphan vectors are referenced by no searchable row: dropping them changes no result.
    with catalog.transaction(bump=False) as db:
        Catalog.drop_orphan_vectors(db)
        report.seconds = time.perf_counter() - started
        catalog.set_meta("last_index", {"finished_at": time.time(), **meta, **report.to_dict()}, db=db)
    return report


# Niceness of the decode threads. Decoding and the model share the cores; the model is the
# bottleneck, and a decode thread that preempts one of its threads stalls the other at the next
# barrier. Niced, decoding runs in the gaps the model leaves (it stays a bounded window ahead).
DECODE_NICE = 10


def lower_priority() -> None:
    """Lower the calling thread's priority by DECODE_NICE (Linux: per thread; elsewhere the
    call would renice the whole process, so it does nothing). Never fails the run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICE))
    except OSError:
        pass


def _load_quietly(encoder: Callable[[], Any]) -> None:
    try:
        encoder()
    except BaseException:  # noqa: BLE001 - the first batch asks again and reports it
        pass


def _same_pixels(enc: Any, identity: dict[str, Any] | None) -> None:
    """Pixels prepared from `identity` before the model loaded must be the model's own input."""
    if identity is None:
        return
    keys = ("image_size", "preprocess", "pipeline")
    if any(enc.identity.get(k) != identity.get(k) for k in keys):
        raise ModelError(f"the model's pixel pipeline ({[enc.identity.get(k) for k in keys]}) is "
                         f"not the one its export recorded ({[identity.get(k) for k in keys]}): "
                         "delete the model cache (LOUPE_MODEL_CACHE) and index again")


def _fill_reused(catalog: Catalog, batch: list[Item], state: RunState, root: Path,
                 options: IndexOptions) -> None:
    """Metadata for content whose vector is known: from the file that left, else from the
    catalog, else (rows lost in a crash mid-move) a cheap decode of the file itself."""
    for it in batch:
        if not it.reused or it.meta is not None:
            continue
        it.meta = state.left_behind.get(it.sha) or catalog.meta_for_hash(it.sha)
        if not it.meta:
            try:
                it.meta = emb.probe_meta(root, it.entry, options.max_file_bytes, options.max_pixels)
            except (DecodeError, OSError) as exc:
                it.error, it.reused = str(exc), False


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[FileEntry], Item],
             items: Iterable[FileEntry], window: int) -> Iterator[Item]:
    """pool.map, but with at most `window` items in flight (bounded memory) and in order."""
    it = iter(items)
    queue = deque(pool.submit(fn, e) for _, e in zip(range(window), it, strict=False))
    while queue:
        item = queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(fn, nxt))
        yield item
