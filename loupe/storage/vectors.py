"""The searchable vectors of one embedding space: snapshots with one owner.

`SpaceVectors` is the only thing that turns the catalog's stored vectors into a
search index. It keeps one snapshot (an ANN index from `loupe.index`, labelled with
the catalog generation it reflects), brings it up to date with only the rows
written since (added and replaced ids, tombstones for removed ones: no rebuild),
and saves it beside the catalog so that the next process memory-maps it and
answers its first query without building anything.

Saved snapshots carry the catalog's epoch (a token naming its history), the
generation and the row count; one that does not belong to this catalog, or comes
from a generation the catalog has not reached (a restored backup), is ignored.

The CLI, the server and its background indexer all go through this object: one
lock orders refreshes, and searches never see an index while it is being changed.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loupe import index as ann
from loupe.core.errors import LibraryError, UnknownImage
from loupe.core.files import atomic_write
from loupe.storage.catalog import Catalog

SNAPSHOT_FILE = "snapshot.json"


@dataclass
class Snapshot:
    generation: int
    index: ann.VectorIndex
    plain: bool            # vectors as stored (no DBA): safe to bring up to date row by row


class SpaceVectors:
    """Search-ready vectors of one space of one catalog. Thread-safe."""

    def __init__(self, catalog: Catalog, space: int, dim: int, folder: Path,
                 memory_budget: int | None = None):
        self.catalog = catalog
        self.space = space
        self.dim = dim
        self.folder = Path(folder)
        self.memory_budget = memory_budget
        self.auto_refresh = True
        self._snap: Snapshot | None = None
        self._lock = threading.RLock()   # refreshes, saves and searches of this space

    # --- reading ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The vectors as of the last commit. With `auto_refresh` off (a server whose indexer
        commits every few seconds), the last snapshot is served until `refresh()`."""
        snap = self._snap
        if snap is not None and not self.auto_refresh:
            return snap
        return self.refresh()

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) of one query; fewer only when fewer images pass."""
        with self._lock:
            index = self.snapshot().index
            excl = np.asarray(sorted(int(i) for i in exclude), dtype=np.int64)
            ids, scores = index.search(np.asarray(query, np.float32).reshape(1, -1), k,
                                       allowed=allowed, exclude=excl if len(excl) else None)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            index = self.snapshot().index
            try:
                return np.asarray(index.vectors(ids), dtype=np.float32)
            except KeyError:
                missing = np.setdiff1d(ids, index.ids)
                raise UnknownImage(f"no searchable image with id(s) {missing[:5].tolist()}") from None

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.array(self.snapshot().index.ids, copy=True)

    def contains(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """A boolean per id: searchable in this snapshot."""
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            live = self.snapshot().index.ids
            pos = np.minimum(np.searchsorted(live, ids), max(len(live) - 1, 0))
            return (live[pos] == ids) if len(live) else np.zeros(len(ids), bool)

    def __len__(self) -> int:
        with self._lock:
            return len(self.snapshot().index)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            snap = self.snapshot()
            return {**snap.index.stats(), "generation": snap.generation}

    # --- keeping up -------------------------------------------------------------------------
    def refresh(self) -> Snapshot:
        """Bring the snapshot up to the catalog's generation: from the saved snapshot when
        it belongs here, row by row from the last one when possible, else rebuilt."""
        with self._lock:
            gen = self.catalog.generation()
            snap = self._snap
            if snap is not None and snap.generation == gen:
                return snap
            plain = not self.state().get("dba")
            if snap is None:
                snap = self._load_saved(gen, plain)
            if snap is not None and snap.plain == plain and snap.generation == gen:
                pass
            elif snap is not None and snap.plain and plain and snap.generation < gen:
                self._catch_up(snap, gen)
            else:
                snap = self._rebuild(gen, plain)
            if self._snap is not None and self._snap.index is not snap.index:
                _release(self._snap.index)
            self._snap = snap
            return snap

    def _catch_up(self, snap: Snapshot, gen: int) -> None:
        """Only the rows written since: what a server pays per refresh while it re-indexes.
        Labelled with the generation read before reading rows: whatever commits meanwhile
        is newer than the label and is applied again (idempotently) by the next refresh."""
        new_ids, new_vecs = self.catalog.load_matrix(self.space, self.dim, since=snap.generation)
        # What left: rows deleted or failed since (not "ok" any more), and rows rewritten
        # since whose content has no vector in this space. A row untouched since the
        # snapshot keeps its vector (vectors go only with the last row holding them), so
        # joining every row with the vectors table (15 s at 1M) is not needed.
        index = snap.index
        gone = np.setdiff1d(index.ids, self.catalog.ok_ids(), assume_unique=True)
        rewritten = np.setdiff1d(self.catalog.changed_ids(snap.generation), new_ids,
                                 assume_unique=True)
        gone = np.union1d(gone, np.intersect1d(index.ids, rewritten, assume_unique=True))
        if len(gone):
            index.remove(gone)
        if len(new_ids):
            index.add(new_ids, new_vecs)
        snap.generation = gen

    def _rebuild(self, gen: int, plain: bool) -> Snapshot:
        ids, matrix = self.catalog.load_matrix(self.space, self.dim)
        if not plain and len(ids) > 1:
            from loupe.index.dba import augment

            dba = self.state()["dba"]
            matrix = augment(matrix, int(dba["k"]), float(dba["alpha"]))
        return Snapshot(gen, self._build(ids, matrix), plain)

    def _build(self, ids: np.ndarray, matrix: np.ndarray) -> ann.VectorIndex:
        state = self.state()
        spec = state.get("index_override") or ann.choose_spec(len(ids), self.dim, self.memory_budget)
        try:
            index = ann.build(spec, self.dim, ids, matrix)
        except (ImportError, ConnectionError) as exc:   # milvus: no [scale] extra, or no Milvus
            raise LibraryError(f"this library's search index is {spec}: {exc}") from None
        # Exact side from the catalog's rows: nothing is read back out of the index (Milvus).
        recall = (ann.measure_recall(index, reference=(ids, matrix))
                  if len(ids) and not _is_exact(spec) else 1.0)
        if state.get("index") != {"spec": spec, "recall_at_10": recall} and not self.catalog.read_only:
            self.catalog.update_space_state(self.space, index={"spec": spec, "recall_at_10": recall})
        return index

    def state(self) -> dict[str, Any]:
        return self.catalog.space_state(self.space)

    # --- saved snapshots --------------------------------------------------------------------
    def save(self) -> None:
        """Save the snapshot for the next process, re-choosing the index kind when the
        library's size asks for another one. Durable and atomic (see loupe.index)."""
        with self._lock:
            snap = self.refresh()
            state = self.state()
            wanted = state.get("index_override") or ann.choose_spec(len(snap.index), self.dim,
                                                                    self.memory_budget)
            replaced = None
            if wanted != snap.index.spec:
                replaced = snap.index
                snap.index = self._build(replaced.ids, replaced.vectors(replaced.ids))
            record = self._record(snap)
            saved = self._saved_record()
            if saved == record:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            snap.index.save(self.folder / "index")
            atomic_write(self.folder / SNAPSHOT_FILE, lambda fh: fh.write(json.dumps(record).encode()))
            if replaced is not None:
                _release(replaced, saved=True)

    def _record(self, snap: Snapshot) -> dict[str, Any]:
        return {"epoch": self.catalog.epoch(), "space": self.space, "generation": snap.generation,
                "count": len(snap.index), "plain": snap.plain, "spec": snap.index.spec}

    def _saved_record(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / SNAPSHOT_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _load_saved(self, gen: int, plain: bool) -> Snapshot | None:
        record = self._saved_record()
        if (record is None or record.get("epoch") != self.catalog.epoch()
                or record.get("space") != self.space or record.get("generation", gen + 1) > gen
                or bool(record.get("plain")) != plain):
            return None
        try:
            index = ann.load(self.folder / "index")
        except Exception:  # noqa: BLE001 - a damaged saved copy is rebuilt, never trusted
            return None
        if len(index) != record.get("count") or index.dim != self.dim:
            return None
        return Snapshot(int(record["generation"]), index, plain)

    def forget_saved(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _release(index: ann.VectorIndex, saved: bool = False) -> None:
    """Free what a replaced index holds outside this process (a Milvus collection): one made
    for a snapshot that was never saved, or with `saved`, the one the save just replaced
    named (a Milvus save replacing a Milvus save drops it itself)."""
    release = getattr(index, "release", None)
    if release is not None:
        release(saved=saved)


def _is_exact(spec: str) -> bool:
    return spec.split(",")[0].strip().lower() in ("exact", "flat")
