"""Encoders: text and images -> L2-normalised vectors in one space, and the identity of that space.

    enc = loupe.models.load_encoder("ViT-B-32:laion2b_s34b_b79k")     # hub by name
    enc = loupe.models.load_encoder("loupe-tiny", weights="ckpt.pt")  # a local file
    enc = loupe.models.load_encoder(name, towers=("text",))           # queries: no image tower
    enc = loupe.models.load_encoder("immich:ViT-B-32__openai")        # Immich's ONNX exports
    x = loupe.models.prepare(image, identity)                          # pixels, no model needed

`Encoder` is the protocol every backend satisfies: the open_clip/torch reference in
`openclip.py`, exported towers on ONNX Runtime or OpenVINO in `onnx.py` (chosen on a CPU by
`load_encoder`, see `loader.py`), Immich's exports in `immich.py`. `identity` is what makes two
vectors comparable: the model, its weights and the whole pixel pipeline; a library's embedding
space is keyed by it, whatever backend computes the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models.loader import load_encoder
from loupe.models.openclip import ModelSpec
from loupe.models.preprocess import prepare

__all__ = ["Encoder", "ModelError", "ModelSpec", "load_encoder", "prepare", "space_key"]


@runtime_checkable
class Encoder(Protocol):
    identity: dict[str, Any]   # model, arch, source, dim, image_size, preprocess, pipeline
    dim: int
    image_size: int
    backend: str               # torch, onnxruntime, openvino
    towers: frozenset[str]     # {"image", "text"} or one of them

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Pixels -> the image tower's input (CHW float32); thread-safe, no torch."""

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """[n, 3, H, W] prepared inputs -> [n, dim] L2-normalised float32."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def same_model(self, identity: dict[str, Any]) -> bool: ...


# The parts of an identity that change the vectors: two encoders agreeing on these
# produce comparable vectors, whatever backend runs them.
SPACE_KEYS = ("arch", "source", "dim", "image_size", "preprocess")


def space_key(identity: dict[str, Any]) -> dict[str, Any]:
    """The part of an encoder identity that names its embedding space."""
    return {k: identity.get(k) for k in SPACE_KEYS}
