"""The pure part of indexing: file bytes -> content hash, metadata, model input -> vector.

`read` runs in worker threads and touches nothing but the file (no SQLite, no model
state): it hashes the bytes and, only for content the space has no vector for,
decodes and prepares the pixels. `embed` runs one batch through the image tower.
Both are plain functions of their inputs, so another executor (a GPU, Ray) can run them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.errors import DecodeError
from loupe.media.decode import decode, read_bytes
from loupe.media.scan import FileEntry

META_COLUMNS = ("width", "height", "format", "taken_at", "camera")


@dataclass
class Item:
    entry: FileEntry
    sha: str | None = None
    meta: dict[str, Any] | None = None
    pixels: np.ndarray | None = None   # the model's input, for content to embed
    error: str | None = None
    reused: bool = False               # the space already holds a vector for this content
    vector: np.ndarray | None = None


def read(entry: FileEntry, root: Path, *, known: set[str], max_file_bytes: int, max_pixels: int,
         image_size: int, prepare: Callable[[Image.Image], np.ndarray]) -> Item:
    """Read and hash one file; decode and prepare it only when its content is new."""
    try:
        data = read_bytes(root / entry.rel, max_file_bytes)
    except DecodeError as exc:
        return Item(entry, error=str(exc))
    except OSError as exc:
        return Item(entry, error=f"unreadable: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    if sha in known:
        return Item(entry, sha=sha, reused=True)
    try:
        decoded = decode(data, max_pixels=max_pixels, reduce_to=image_size)
        pixels = prepare(decoded.image)
    except DecodeError as exc:
        return Item(entry, sha=sha, error=str(exc))
    except (MemoryError, RecursionError) as exc:   # a hostile file, not the run's end
        return Item(entry, sha=sha, error=f"could not be decoded: {type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - any decoder's own failure is this file's reason
        return Item(entry, sha=sha, error=f"could not be decoded: {type(exc).__name__}: {exc}"[:500])
    meta = {c: getattr(decoded, c) for c in META_COLUMNS}
    return Item(entry, sha=sha, meta=meta, pixels=pixels)


def probe_meta(root: Path, entry: FileEntry, max_file_bytes: int, max_pixels: int) -> dict[str, Any]:
    """Metadata of a file whose vector is known but whose row was lost (a crash mid-move)."""
    decoded = decode(read_bytes(root / entry.rel, max_file_bytes), max_pixels=max_pixels, reduce_to=64)
    return {c: getattr(decoded, c) for c in META_COLUMNS}


def embed(items: Sequence[Item], encode_pixels: Callable[[np.ndarray], np.ndarray]) -> None:
    """Fill `vector` for every item that carries pixels (one model call), then drop the pixels."""
    fresh = [it for it in items if it.pixels is not None]
    if not fresh:
        return
    vectors = encode_pixels(np.stack([it.pixels for it in fresh]))
    for it, vec in zip(fresh, vectors, strict=True):
        it.vector, it.pixels = vec, None
