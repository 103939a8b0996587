"""The one interface every reranker implements, and the store it reads from."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from loupe.types import Candidates, Query


class Store(Protocol):
    """What a reranker may ask of the library (`loupe.Library` satisfies it)."""

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]: ...

    def search_vector(
        self, vec: np.ndarray, k: int, filters: Any = None, exclude: Any = ()
    ) -> Candidates: ...

    def load_image(self, id: int) -> Image.Image: ...

    def image_path(self, id: int) -> Path: ...

    def cache_dir(self, name: str) -> Path: ...


class Reranker(ABC):
    """Second stage: re-score the head of a first-stage ranking.

    Subclasses are dataclasses: their fields are the method's parameters (with
    the published defaults), which is what `describe()` and the
    `name:key=value` spec syntax read. `depth` is the default M, the length
    of the head the caller hands over; the caller keeps the tail.
    """

    name: ClassVar[str]
    # True when the method reads the query's pixels: the caller then keeps the
    # query image at full size instead of the encoder's input size.
    needs_pixels: ClassVar[bool] = False
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
