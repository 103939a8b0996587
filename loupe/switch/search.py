"""Search while a library switches models: the new space where it has the image, the old space
through the bridge where it does not, one list on the new space's score scale.

The merge rule: every image is scored once, in the new space when its content is there (the new
model's query against its new vector), else through the bridge (the mapped query against its old
vector), and that bridged score is calibrated onto the new space's scale for this query
(`Bridge.calibrate`). Both sides' top-k are merged by score; calibration is increasing, so each
side's order is kept and the merged top-k is exact for the two searches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from loupe.core.types import Candidates, Filters
from loupe.storage.vectors import Snapshot, SpaceVectors
from loupe.switch.bridge import Bridge

if TYPE_CHECKING:
    from loupe.library import Library


class TargetVectors(SpaceVectors):
    """A space being filled: its vectors arrive for rows that were written long before, which the
    row-generation catch-up of `SpaceVectors` does not see; the ids newly covered are added too."""

    def _catch_up(self, snap: Snapshot, gen: int) -> None:
        super()._catch_up(snap, gen)
        current = self.catalog.searchable_ids(self.space)
        fresh = np.setdiff1d(current, snap.index.ids, assume_unique=True)
        if len(fresh):
            from loupe.storage.spaces import vectors_of_ids

            ids, vecs = vectors_of_ids(self.catalog, self.space, self.dim, fresh)
            if len(ids):
                snap.index.add(ids, vecs)


class BridgedStore:
    """The `Store` the pipeline reads mid-switch: queries are new-space vectors."""

    def __init__(self, lib: Library | None, new: SpaceVectors, old: SpaceVectors, bridge: Bridge):
        # `lib` None: two galleries in memory (benchmarks/bridge.py), no filters, no pixels.
        self.lib = lib
        self.new = new
        self.old = old
        self.bridge = bridge
        self._base = lib.store if lib is not None else None   # pixels, paths, caches

    def search_vector(self, vec: np.ndarray, k: int, filters: Filters | None = None,
                      exclude: Iterable[int] = ()) -> Candidates:
        exclude = sorted(int(i) for i in exclude)
        allowed = None
        if filters is not None and not filters.is_empty():
            if self.lib is None:
                raise ValueError("filters need a library")
            allowed = self.lib.catalog.filter_ids(filters, searchable=False)
        ids_n, s_n = self.new.search(vec, k, allowed=allowed, exclude=exclude)
        old_only = np.setdiff1d(self.old.ids(), self.new.ids(), assume_unique=True)
        if allowed is not None:
            old_only = np.intersect1d(old_only, allowed, assume_unique=True)
        if len(old_only):
            ids_o, raw = self.old.search(self.bridge.to_old(np.reshape(vec, -1)), k,
                                         allowed=old_only, exclude=exclude)
            s_o = self.bridge.calibrate(vec, raw)
        else:
            ids_o, s_o = np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids = np.concatenate([ids_n, ids_o])
        scores = np.concatenate([np.asarray(s_n, np.float32), np.asarray(s_o, np.float32)])
        order = np.argsort(-scores, kind="stable")[:k]
        return Candidates(ids[order], scores[order])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Vectors in the query's (new) space: stored where filled, else the old vector mapped
        back through the bridge (what stages that compare results with each other see)."""
        ids = np.asarray(ids, dtype=np.int64)
        have = self.new.contains(ids)
        out = np.zeros((len(ids), self.bridge.dims[0]), np.float32)
        if have.any():
            out[have] = self.new.vectors(ids[have])
        if (~have).any():
            out[~have] = self.bridge.to_new(self.old.vectors(ids[~have]))
        return out

    def __getattr__(self, name: str) -> Any:
        # The rest of the Store (records, pixels, caches, the full-text index): the library's own.
        base = self.__dict__.get("_base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def record(self, image_id: int) -> dict[str, Any]:
        return self._base.record(image_id)

    def image_path(self, id: int) -> Path:
        return self._base.image_path(id)

    def load_image(self, id: int) -> Image.Image:
        return self._base.load_image(id)

    def cache_dir(self, name: str) -> Path:
        return self._base.cache_dir(name)


class BridgedSearch:
    """What `Library.run` uses mid-switch: the target space (whose towers encode the query)
    and the bridged store; the rest of the search is the library's own path."""

    def __init__(self, lib: Library, target: int, bridge: Bridge, key: tuple[int, str]):
        self.lib = lib
        self.target = target
        self.bridge = bridge
        self.key = key

    def store(self) -> BridgedStore:
        from loupe.switch import target_vectors

        return BridgedStore(self.lib, target_vectors(self.lib, self.target),
                            self.lib.vectors_of_space, self.bridge)
