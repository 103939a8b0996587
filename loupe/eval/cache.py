"""On-disk cache of dataset embeddings, keyed by model identity and what was embedded.

Comparing ten rerankers on one dataset should cost one embedding pass: the
first run writes `<root>/<key>.npy`, later runs read it. The key hashes the
encoder identity (architecture, weights source, preprocessing) together with
the exact list of inputs (image paths relative to the dataset, their sizes
and crop boxes, or the texts), so a changed file, crop or model never reuses
stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "LOUPE_EVAL_CACHE"


def default_cache_dir() -> Path:
    """`$LOUPE_EVAL_CACHE`, else `~/.cache/loupe/eval`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loupe" / "eval"


def identity_digest(identity: dict[str, Any]) -> str:
    """Hash of the parts of an encoder identity that change its vectors."""
    keys = ("arch", "source", "dim", "image_size", "preprocess")
    return _sha({k: identity.get(k) for k in keys})


def files_digest(root: Path, relpaths: Sequence[str], extra: Sequence[Any] | None = None) -> str:
    """Hash of relative paths, file sizes and an optional per-file extra (e.g. a crop box).

    Sizes rather than contents: hashing a million distractor images would
    cost more than embedding them on a GPU, and a re-encoded file changes size.
    """
    h = hashlib.sha256()
    for i, rel in enumerate(relpaths):
        try:
            size = (root / rel).stat().st_size
        except OSError:
            size = -1
        h.update(f"{rel}\0{size}\0{extra[i] if extra is not None else ''}\n".encode())
    return h.hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def annotation_digest(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the ground-truth files, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """A folder of `.npy` arrays with a small JSON note beside each."""

    def __init__(self, root: Path | str | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.enabled = enabled

    def key(self, identity: dict[str, Any], kind: str, content: str) -> str:
        return _sha({"model": identity_digest(identity), "kind": kind, "content": content})[:40]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str, rows: int | None = None) -> np.ndarray | None:
        if not self.enabled:
            return None
        p = self.path(key)
        if not p.exists():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn or foreign file is a miss, and is rewritten
        if rows is not None and arr.shape[0] != rows:
            return None
        return arr

    def put(self, key: str, array: np.ndarray, note: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # temp file + rename: a killed run leaves no half-written entry
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array))
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if note is not None:
            (self.root / f"{key}.json").write_text(json.dumps(note, indent=1, default=str))
