"""The values that flow between stages: a query, a candidate list, a hit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.config import Filters

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the (EXIF-rotated) image


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


@dataclass
class Candidates:
    """A ranked list: parallel arrays, best first."""

    ids: np.ndarray                         # int64 catalog ids
    scores: np.ndarray                      # float32
    boxes: list[Box | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if not self.boxes:
            self.boxes = [None] * len(self.ids)
        if not (len(self.ids) == len(self.scores) == len(self.boxes)):
            raise ValueError("ids, scores and boxes must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, order: np.ndarray) -> Candidates:
        order = np.asarray(order, dtype=np.int64)
        return Candidates(self.ids[order], self.scores[order], [self.boxes[i] for i in order])


@dataclass
class Hit:
    """One result as the user sees it."""

    id: int
    path: Path
    score: float
    box: Box | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "score": round(float(self.score), 6),
            "box": list(self.box) if self.box else None,
            **self.meta,
        }
