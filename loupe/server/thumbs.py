"""Thumbnails: made once per content and size, kept in the library's cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from loupe.library import Library
from loupe.media.decode import decode, read_bytes

SIZES = (256, 1024)   # the grid's tiles (sharp on 2x screens) and the large view
QUALITY = 82


def thumbnail(lib: Library, sha256: str, source: Path, size: int) -> Path:
    """The cached JPEG (longest side <= size) for this content, made on first call.

    Keyed by content hash, so an edited file gets a new thumbnail and copies share one.
    Written to a temporary name and renamed: a reader never sees half a file, and two
    requests racing for the same thumbnail both succeed.
    """
    if size not in SIZES:
        raise ValueError(f"thumbnail size must be one of {SIZES}")
    folder = lib.cache_dir("thumbs") / sha256[:2]
    target = folder / f"{sha256}-{size}.jpg"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # reduce_to lets JPEGs decode at 1/2..1/8 scale: a 24 MP photo costs a fraction.
    image = decode(read_bytes(source), reduce_to=size).image
    image.thumbnail((size, size))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, "JPEG", quality=QUALITY, optimize=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
