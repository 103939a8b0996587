"""What search stages read from a library, by id: its vectors, pixels, files and caches.

The stages never see the `Library` facade: data flows one way, library -> pipeline ->
stages -> store. `CatalogStore` answers the `loupe.core.types.Store` protocol over a
catalog, the active space's vectors and the library's root folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.config import CACHE_DIRNAME
from loupe.core.errors import UnknownImage
from loupe.core.types import Candidates, Filters
from loupe.media.decode import load_image
from loupe.storage.catalog import Catalog
from loupe.storage.vectors import SpaceVectors


class CatalogStore:
    def __init__(self, catalog: Catalog, vectors: SpaceVectors, root: Path, library: Path):
        self.catalog = catalog
        self.space_vectors = vectors
        self.root = root
        self.library = library

    def search_vector(self, vec: np.ndarray, k: int, filters: Filters | None = None,
                      exclude: Iterable[int] = ()) -> Candidates:
        """Top-k by inner product; filters travel into the index as the allowed ids."""
        # The index holds searchable images only: no status check needed in SQL.
        allowed = (self.catalog.filter_ids(filters, searchable=False)
                   if filters and not filters.is_empty() else None)
        ids, scores = self.space_vectors.search(vec, k, allowed=allowed, exclude=list(exclude))
        return Candidates(ids, scores)

    def search_text(self, text: str, k: int, filters: Filters | None = None,
                    exclude: Iterable[int] = (), searchable: bool = False) -> list[Any]:
        """Top-k of the full-text index (`loupe.text.fts.search`: TextHit(image_id, score,
        matched_terms)); filters travel into the query as the allowed ids. `searchable` keeps
        only images the active space's vectors hold (for fusion with them)."""
        from loupe.text import fts

        allowed = self.catalog.filter_ids(filters) if filters and not filters.is_empty() else None
        skip = set(exclude)
        hits = [h for h in fts.search(self.catalog.db, text, k + len(skip), allowed)
                if h.image_id not in skip][:k]
        if searchable and hits:
            found = self.space_vectors.contains([h.image_id for h in hits])
            hits = [h for h, ok in zip(hits, found, strict=True) if ok]
        return hits

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.space_vectors.vectors(ids)

    def record(self, image_id: int) -> dict[str, Any]:
        rec = self.catalog.record(image_id)
        if rec is None:
            raise UnknownImage(f"no image with id {image_id}")
        return rec

    def image_path(self, id: int) -> Path:
        return self.root / self.record(id)["path"]

    def load_image(self, id: int) -> Image.Image:
        return load_image(self.image_path(id))

    def cache_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cache name {name!r}")
        folder = self.library / CACHE_DIRNAME / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
