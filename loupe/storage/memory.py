"""An evaluation gallery as a store: the same index protocol and the same search pipeline
as a library, over vectors held in memory. Ids are positions in `paths`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe import index as ann
from loupe.core.types import Candidates


def open_image(path: Path, exif: bool = False) -> Image.Image:
    """RGB pixels of a dataset image.

    Benchmark boxes and official pipelines address the stored pixels, so
    EXIF orientation is ignored unless asked for (user photos ask for it).
    """
    with Image.open(path) as im:
        if exif:
            from PIL import ImageOps

            im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


class MemoryStore:
    def __init__(self, paths: Sequence[Path], matrix: np.ndarray, cache_root: Path,
                 exif: bool = False, spec: str = "Exact"):
        if len(paths) != len(matrix):
            raise ValueError(f"{len(paths)} paths but {len(matrix)} vectors")
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self._paths = list(paths)
        self._cache_root = Path(cache_root)
        self._exif = exif
        self.index = ann.build(spec, matrix.shape[1], np.arange(len(matrix), dtype=np.int64), matrix)

    def __len__(self) -> int:
        return len(self._paths)

    def search_vector(self, vec: np.ndarray, k: int, filters: Any = None,
                      exclude: Iterable[int] = ()) -> Candidates:
        if filters is not None and not (hasattr(filters, "is_empty") and filters.is_empty()):
            raise ValueError("filters are not supported on a benchmark gallery")
        excl = np.asarray(sorted(int(i) for i in exclude), dtype=np.int64)
        ids, scores = self.index.search(np.asarray(vec, np.float32).reshape(1, -1), k,
                                        exclude=excl if len(excl) else None)
        keep = ids[0] >= 0
        return Candidates(ids[0][keep], scores[0][keep])

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.asarray(self.index.vectors(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def image_path(self, id: int) -> Path:
        return Path(self._paths[int(id)]).resolve()

    def load_image(self, id: int) -> Image.Image:
        return open_image(self._paths[int(id)], exif=self._exif)

    def record(self, id: int) -> dict[str, Any]:
        return {"id": int(id), "path": str(self._paths[int(id)])}

    def cache_dir(self, name: str) -> Path:
        p = self._cache_root / "store" / name
        p.mkdir(parents=True, exist_ok=True)
        return p
