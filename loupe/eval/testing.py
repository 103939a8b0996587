"""A transparent stand-in encoder for testing evaluation code against hand-computed values.

An image's vector is its mean colour (quantised to steps of 10 so JPEG noise
on flat colours vanishes), a text's vector is looked up in a table. With it a
test chooses the exact similarity order of a tiny dataset by painting its
images, so every metric can be worked out by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


class ColorEncoder:
    """Encoder-shaped (see loupe.models.openclip.Encoder): images -> mean RGB, texts -> table vectors."""

    def __init__(self, texts: Mapping[str, Sequence[float]] | None = None, step: float = 10.0):
        self.texts = {k: np.asarray(v, np.float32) for k, v in (texts or {}).items()}
        self.step = step
        self.dim = 3
        self.image_size = 0
        self.identity = {"model": "color-test", "arch": "color-test", "source": f"test:step{step}",
                         "dim": 3, "image_size": 0, "preprocess": {}}
        self.images_encoded = 0
        self.texts_encoded = 0

    @property
    def name(self) -> str:
        return self.identity["model"]

    def prepare(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
        return np.round(rgb / self.step) * self.step

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        self.images_encoded += len(batch)
        return _normalise(np.asarray(batch))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, 3), np.float32)
        return self.encode_pixels(np.stack([self.prepare(im) for im in images]))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_encoded += len(texts)
        missing = [t for t in texts if t not in self.texts]
        if missing:
            raise KeyError(f"ColorEncoder has no vector for text {missing[0]!r}")
        if not texts:
            return np.zeros((0, 3), np.float32)
        return _normalise(np.stack([self.texts[t] for t in texts]))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
