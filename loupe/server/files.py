"""From a catalog id to a file on disk, and never outside the library's root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException

from loupe.library import Library

# By the format the decoder found in the bytes, not by the file name's ending.
MEDIA_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "GIF": "image/gif", "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff",
    "PPM": "image/x-portable-anymap", "HEIF": "image/heif", "AVIF": "image/avif",
}


def image_record(lib: Library, image_id: int) -> dict[str, Any]:
    """The catalog row of a searchable image, or a 404."""
    rec = lib.find_record(image_id)
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id} in this library")
    if rec["status"] != "ok":
        raise HTTPException(404, f"image {image_id} could not be indexed: {rec['error']}")
    return rec


def safe_file(lib: Library, rec: dict[str, Any]) -> Path:
    """The file of a catalog row, after symlinks are resolved; 403 when that lands
    outside the root (a link in the photo folder pointing elsewhere), 404 when gone."""
    root = lib.root.resolve()
    path = (root / rec["path"]).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(403, f"image {rec['id']} resolves outside the library root")
    if not path.is_file():
        raise HTTPException(404, f"image {rec['id']} is no longer on disk (re-index to forget it)")
    if not os.access(path, os.R_OK):
        raise HTTPException(403, f"image {rec['id']} cannot be read by the server (permissions)")
    return path


def as_indexed(rec: dict[str, Any], st: os.stat_result) -> bool:
    """Whether the file still has the size and modification time the indexer saw, so that
    the catalog's content hash can be trusted for it (the indexer's own test of change)."""
    return (bool(rec.get("sha256")) and st.st_size == rec.get("size")
            and st.st_mtime == rec.get("mtime"))


def file_etag(rec: dict[str, Any], path: Path) -> str:
    """The original's validator: its content hash while unchanged since indexing; after a
    change (not re-indexed yet), its size and modification time, so no cache keeps the old."""
    try:
        st = path.stat()
    except OSError:
        gone = f"image {rec['id']} is no longer on disk (re-index to forget it)"
        raise HTTPException(404, gone) from None
    if as_indexed(rec, st):
        return f'"{rec["sha256"][:32]}"'
    return f'"changed-{st.st_size:x}-{st.st_mtime_ns:x}"'


def media_type(rec: dict[str, Any]) -> str:
    return MEDIA_TYPES.get(str(rec.get("format")), "application/octet-stream")
