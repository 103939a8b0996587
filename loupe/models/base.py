"""What every backend shares: identity, preparing pixels, normalising, the text cache, and
refusing a tower that was not loaded. Backends implement `_image_features` and
`_text_features` (raw, unnormalised rows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models import preprocess
from loupe.models.text import TextCache

TOWERS = ("image", "text")
# The parts of an identity that must agree for two encoders' vectors to be compared.
SAME_MODEL_KEYS = ("arch", "source", "dim")


def check_towers(towers: Iterable[str] | str | None) -> frozenset[str]:
    if towers is None:
        return frozenset(TOWERS)
    if isinstance(towers, str):
        towers = [towers]
    out = frozenset(towers)
    if not out or not out <= set(TOWERS):
        raise ModelError(f"towers must be some of {TOWERS}, not {sorted(out)}")
    return out


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


class BaseEncoder:
    """Images and texts -> L2-normalised float32 vectors of one embedding space."""

    backend = "base"

    def __init__(self, identity: dict[str, Any], towers: Iterable[str] | None = None,
                 text_cache: int = 256):
        self.identity = identity
        self.dim = int(identity["dim"])
        self.image_size = int(identity["image_size"])
        self.towers = check_towers(towers)
        self.text_cache = TextCache(text_cache)
        # What an export measured (agreement with torch, speed); empty for the reference.
        self.report: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.identity["model"]

    def _need(self, tower: str) -> None:
        if tower not in self.towers:
            raise ModelError(f"this encoder was loaded without its {tower} tower "
                             f"(towers={sorted(self.towers)})")

    # --- images -------------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> np.ndarray:
        """Pixels -> the image tower's input (CHW float32). Thread-safe, no torch."""
        return preprocess.prepare(image, self.identity)

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """[n, 3, H, W] prepared inputs -> [n, dim] L2-normalised float32."""
        self._need("image")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return normalised(self._image_features(batch))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._need("image")
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(np.stack([self.prepare(im) for im in images]))

    # --- texts --------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [n, dim] L2-normalised float32; recent texts come from a small LRU cache."""
        self._need("text")
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of texts, not a string")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.text_cache.lookup(list(texts), lambda todo: normalised(self._text_features(todo)))

    def same_model(self, other: dict[str, Any]) -> bool:
        return all(self.identity.get(k) == other.get(k) for k in SAME_MODEL_KEYS)

    # --- backends -----------------------------------------------------------------------------
    def _image_features(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.identity.get('model')} backend={self.backend} "
                f"towers={sorted(self.towers)}>")
