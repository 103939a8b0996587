"""The values that flow between stages: a query, a candidate list, a hit."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the (EXIF-rotated) image


@dataclass(frozen=True)
class Filters:
    """Restrict a search to part of the library. Every field is optional."""

    folder: str | None = None               # relative folder prefix, e.g. "2023/summer"
    glob: str | None = None                 # glob on the relative path, e.g. "*.png"
    since: str | None = None                # ISO date, inclusive (EXIF capture date, else mtime)
    until: str | None = None                # ISO date, inclusive
    min_width: int | None = None
    min_height: int | None = None
    types: tuple[str, ...] = field(default_factory=tuple)  # Pillow formats, e.g. ("JPEG","PNG")

    def is_empty(self) -> bool:
        return not any(
            (self.folder, self.glob, self.since, self.until, self.min_width, self.min_height, self.types)
        )


@dataclass
class SearchRequest:
    """Everything a search asks for, as the user gave it; the same from every face.

    Query terms: `text`, `image` (a file or pixels), `like` (an indexed image, by id or
    path), `weight` (image vs text in image+text queries), `expr` (query arithmetic),
    `box` (a region of the query image). Then how many results, which part of the
    library, which stages after the first, a score floor, and relevance feedback
    (`liked`, `unliked`: indexed images by id or path)."""

    text: str | None = None
    image: Any = None                       # str | Path | PIL.Image.Image
    like: int | str | Path | None = None
    weight: float = 0.5
    expr: str | Sequence[str] | None = None
    box: Box | None = None
    k: int = 20
    filters: Filters | None = None
    rerank: Any = None                      # a spec string, names, or Reranker instances
    rerank_depth: int | None = None
    threshold: float | None = None
    liked: Sequence[int | str | Path] = ()     # relevance feedback (Rocchio): more like these
    unliked: Sequence[int | str | Path] = ()   # ... fewer like these
    channels: str | None = None             # "hybrid", "text", "vector"; None: hybrid for text
                                            # queries, vector for the rest (loupe.search.text)


@dataclass
class Query:
    """What the user asked, after encoding.

    `vector` is the L2-normalised first-stage query. `image` is the query
    image (already cropped to `box` when a box was given) for rerankers that
    look at pixels; None for text-only queries.
    """

    vector: np.ndarray
    text: str | None = None
    image: Image.Image | None = None
    box: Box | None = None
    exclude_ids: frozenset[int] = frozenset()
    filters: Filters | None = None          # the first stage's, for rerankers that search again
    text_matches: frozenset[int] = frozenset()  # ids whose text matched (loupe.search.text):
                                                # evidence a cut-off keeps, like a verified match


@dataclass
class Candidates:
    """A ranked list: parallel arrays, best first."""

    ids: np.ndarray                         # int64 catalog ids
    scores: np.ndarray                      # float32
    boxes: list[Box | None] = field(default_factory=list)
    groups: np.ndarray | None = None        # int64 group label per candidate (duplicates), if grouped
    # Answer columns (loupe.search.answers): the calibrated score of the cut-off, and for a
    # collapsed group its size (itself included) and the ids it stands for (best first).
    confidence: np.ndarray | None = None    # float32 per candidate, NaN where not calibrated
    group_size: np.ndarray | None = None    # int64 per candidate
    members: list[tuple[int, ...]] | None = None   # the other members of its group

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if not self.boxes:
            self.boxes = [None] * len(self.ids)
        if not (len(self.ids) == len(self.scores) == len(self.boxes)):
            raise ValueError("ids, scores and boxes must have the same length")
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=np.int64)
            if len(self.groups) != len(self.ids):
                raise ValueError("groups must have one label per candidate")
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float32)
        if self.group_size is not None:
            self.group_size = np.asarray(self.group_size, dtype=np.int64)
        if self.members is not None:
            self.members = [tuple(int(i) for i in m) for m in self.members]
        for name in ("confidence", "group_size", "members"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.ids):
                raise ValueError(f"{name} must have one value per candidate")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, order: np.ndarray) -> Candidates:
        order = np.asarray(order, dtype=np.int64)
        groups = self.groups[order] if self.groups is not None else None
        return Candidates(
            self.ids[order], self.scores[order], [self.boxes[i] for i in order], groups,
            self.confidence[order] if self.confidence is not None else None,
            self.group_size[order] if self.group_size is not None else None,
            [self.members[i] for i in order] if self.members is not None else None)

    def head(self, n: int) -> Candidates:
        return self.take(np.arange(min(n, len(self))))


@dataclass
class Hit:
    """One result as the user sees it."""

    id: int
    path: Path
    score: float
    box: Box | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a file name that is not valid UTF-8 shows its odd bytes as \\xNN."""
        return {
            "id": self.id,
            "path": _text(str(self.path)),
            "score": round(float(self.score), 6),
            "box": list(self.box) if self.box else None,
            **{k: _text(v) if isinstance(v, str) else v for k, v in self.meta.items()},
        }


def _text(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


class Store(Protocol):
    """What search stages may ask for, by id: a library (`loupe.storage.store.CatalogStore`)
    and an evaluation gallery (`loupe.storage.memory.MemoryStore`) both answer it."""

    def search_vector(self, vec: np.ndarray, k: int, filters: Filters | None = None,
                      exclude: Any = ()) -> Candidates: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def load_image(self, id: int) -> Image.Image: ...

    def image_path(self, id: int) -> Path: ...

    def cache_dir(self, name: str) -> Path: ...
