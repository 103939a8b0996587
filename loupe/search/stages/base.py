"""The one interface every reranker implements, and the store it reads from."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from loupe.core.types import Candidates, Query, Store


class Reranker(ABC):
    """Second stage: re-score the head of a first-stage ranking.

    Subclasses are dataclasses: their fields are the method's parameters (with
    the published defaults), which is what `describe()` and the
    `name:key=value` spec syntax read. `depth` is the default M, the length
    of the head the caller hands over; the caller keeps the tail.
    """

    name: ClassVar[str]
    # What a stage needs and does, declared so the pipeline and the faces can plan:
    # it reads the query's pixels (kept at full size then), it searches the store again,
    # it may drop results from its head, it may group them (duplicates), it locates matches.
    needs_pixels: ClassVar[bool] = False
    searches_again: ClassVar[bool] = False
    may_drop: ClassVar[bool] = False
    may_group: ClassVar[bool] = False
    makes_boxes: ClassVar[bool] = False       # it locates the match in the image (Candidates.boxes)
    depth: int

    @abstractmethod
    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Return the candidates re-scored, best first (boxes filled when it localises)."""

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def check_positive(owner: object, **values: float) -> None:
    """Reject non-positive parameters with a message that names them."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{type(owner).__name__}: {key} must be > 0, got {value!r}")
