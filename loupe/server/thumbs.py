"""Thumbnails: made once per content and size, kept in a cache folder of bounded size.

Every thumbnail is filed under the hash of the bytes it was made from, never under a hash
that merely names the file: a file replaced since it was indexed gets a thumbnail of what
it holds now, and the cache never hands out one picture in place of another.

Decoding is where a hostile or broken file costs memory and time, so each decode here
(thumbnails and uploaded query images alike) is checked first and bounded:
- the pixels that will be decoded are counted from the header, before any decoding
  (a JPEG counts at the reduced scale it is decoded at, so a 60 MP photo still has a
  thumbnail, while a PNG or GIF declaring 12000 x 12000 is refused unread);
- a picture thinner than MAX_ASPECT is cropped around its centre before it is resized;
- at most `slots` decodes run at once, their files read inside the slot, so parallel
  requests cannot multiply the memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.exceptions import HTTPException

from loupe.core.config import MAX_FILE_BYTES, MAX_PIXELS
from loupe.media.decode import DecodeError, decode, read_bytes
from loupe.server.files import as_indexed

SIZES = (256, 1024)   # the grid's tiles (sharp on 2x screens) and the large view
QUALITY = 82
MAX_ASPECT = 20       # longer side / shorter side; a thinner picture is cropped to this
DEFAULT_BUDGET = 512 * 2**20   # bytes of thumbnails kept; least recently used go first
DECODE_SLOTS = 2      # decodes at once (each may hold up to max_pixels x 3 bytes and copies)
SLOT_WAIT = 60.0      # seconds a request waits for a decode slot before a 503
_TOUCH_EVERY_NS = 60 * 10**9   # a hit marks its file as recently used at most this often
_KEEP_AFTER_EVICTION = 0.8     # evict down to this share of the budget, not to the brim


@contextmanager
def decode_slot(slots: threading.Semaphore, wait: float = SLOT_WAIT) -> Iterator[None]:
    """Hold one of the decode slots; 503 when none frees up in `wait` seconds."""
    if not slots.acquire(timeout=wait):
        raise HTTPException(503, "the server is busy decoding other images: try again shortly",
                            headers={"Retry-After": "5"})
    try:
        yield
    finally:
        slots.release()


def crop_to_aspect(image: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """The centre of a picture thinner than `max_aspect` : 1 (a 1 x 200000 strip keeps its
    middle 1 x 20), so that no resize downstream works on (or makes) a huge thin image."""
    w, h = image.size
    if w > h * max_aspect:
        keep = h * max_aspect
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    if h > w * max_aspect:
        keep = w * max_aspect
        top = (h - keep) // 2
        return image.crop((0, top, w, top + keep))
    return image


def decoded_size(data: bytes, reduce_to: int | None) -> tuple[int, int, int, int] | None:
    """(declared width, height, width and height as `decode` will produce them) from the
    header alone; None when the header cannot be read (then `decode` says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if reduce_to and im.format in ("JPEG", "MPO"):
                    im.draft("RGB", (reduce_to, reduce_to))  # header arithmetic, no decoding
                return w, h, im.size[0], im.size[1]
    except Exception:  # noqa: BLE001 - any failure here is reported by decode() instead
        return None


def decode_image(data: bytes, *, max_pixels: int, reduce_to: int | None = None,
                 jpeg_reduction_counts: bool = False) -> Image.Image:
    """Decode bytes into RGB pixels within `max_pixels`, or raise DecodeError with a reason.

    The pixel count is checked from the header before decoding. With
    `jpeg_reduction_counts`, a JPEG counts at the scale it is decoded at (thumbnails);
    otherwise at its declared size (query uploads, decoded as the indexer decodes them).
    A thin picture comes back cropped to MAX_ASPECT. Failures that the decoder does not
    name (a corrupt AVIF raises RuntimeError) become DecodeError too: never a 500.
    """
    sizes = decoded_size(data, reduce_to)
    limit = max_pixels
    if sizes is not None:
        w, h, dw, dh = sizes
        counted = dw * dh if jpeg_reduction_counts else w * h
        if counted > max_pixels:
            raise DecodeError(f"too many pixels: {w}x{h} > limit {max_pixels}")
        # decode() checks the declared size: let a JPEG through whose reduced size fits.
        limit = max(max_pixels, min(w * h, MAX_PIXELS)) if jpeg_reduction_counts else max_pixels
    try:
        image = decode(data, max_pixels=limit, reduce_to=reduce_to).image
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("too many pixels: out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - a decoder plugin's own error type
        raise DecodeError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    return crop_to_aspect(image)


@dataclass(frozen=True)
class Content:
    """What a file holds now, as far as a thumbnail is concerned."""

    sha256: str                # of the bytes a thumbnail is made from
    indexed: bool              # the catalog's hash (the file looks as the indexer saw it)
    data: bytes | None = None  # those bytes, when the caller has them already


class ThumbCache:
    """Thumbnails of one library, filed by content hash and size, within a byte budget.

    Least recently used files go first when the folder grows past the budget; "used" is
    the file's access time, set explicitly on hits (so a noatime mount does not matter).
    Files are written under a temporary name and renamed: a reader never sees half a
    file, and two requests racing for one thumbnail both succeed.
    """

    def __init__(self, folder: Path, *, max_pixels: int, slots: threading.Semaphore,
                 budget_bytes: int = DEFAULT_BUDGET, max_file_bytes: int = MAX_FILE_BYTES):
        self.folder = folder
        self.max_pixels = max_pixels
        self.slots = slots
        self.budget = budget_bytes
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._used: int | None = None   # bytes in the folder; counted on the first write

    # --- which content -------------------------------------------------------------------
    def content(self, rec: dict[str, Any], source: Path) -> Content:
        """The catalog's hash while the file keeps the size and time the indexer saw;
        otherwise the hash of what it holds now (streamed: a changed file is not kept)."""
        try:
            st = source.stat()
            if as_indexed(rec, st):
                return Content(rec["sha256"], True)
            if st.st_size == 0 or st.st_size > self.max_file_bytes:
                read_bytes(source, self.max_file_bytes)  # raises DecodeError with the reason
            digest = hashlib.sha256()
            with open(source, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise HTTPException(404, f"image {rec['id']} cannot be read: {exc.strerror}") from None
        sha = digest.hexdigest()
        return Content(sha, sha == rec.get("sha256"))

    # --- the thumbnail -------------------------------------------------------------------
    def get(self, content: Content, source: Path, size: int) -> tuple[str, bytes]:
        """The JPEG of `content` at `size`, and the hash of the bytes it was made from
        (unlike `content.sha256` when the file changed between the look and the read)."""
        if size not in SIZES:
            raise ValueError(f"thumbnail size must be one of {SIZES}")
        hit = self._read(self.path(content.sha256, size))
        if hit is not None:
            return content.sha256, hit
        with decode_slot(self.slots):  # the file's bytes count against the slot too
            data = content.data
            if data is None:
                try:
                    data = read_bytes(source, self.max_file_bytes)
                except OSError as exc:
                    raise HTTPException(404, f"the image file cannot be read: {exc.strerror}") \
                        from None
            sha = content.sha256 if content.data is not None else hashlib.sha256(data).hexdigest()
            if sha != content.sha256:
                hit = self._read(self.path(sha, size))
                if hit is not None:
                    return sha, hit
            jpeg = self._render(data, size)
        self._store(self.path(sha, size), jpeg)
        return sha, jpeg

    def render(self, data: bytes, size: int) -> bytes:
        """The thumbnail JPEG of these bytes (not filed)."""
        with decode_slot(self.slots):
            return self._render(data, size)

    def _render(self, data: bytes, size: int) -> bytes:
        # reduce_to lets JPEGs decode at 1/2..1/8 scale: a 24 MP photo costs a fraction.
        image = decode_image(data, max_pixels=self.max_pixels, reduce_to=size,
                             jpeg_reduction_counts=True)
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=QUALITY, optimize=True)
        return buf.getvalue()

    def path(self, sha256: str, size: int) -> Path:
        return self.folder / sha256[:2] / f"{sha256}-{size}.jpg"

    # --- the folder ----------------------------------------------------------------------
    def _read(self, path: Path) -> bytes | None:
        try:
            st = path.stat()
            data = path.read_bytes()
            now = time.time_ns()
            if now - st.st_atime_ns > _TOUCH_EVERY_NS:
                os.utime(path, ns=(now, st.st_mtime_ns))  # recently used; made when it was
        except OSError:  # not made yet, or evicted just now
            return None
        return data

    def _store(self, target: Path, jpeg: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(jpeg)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            if self._used is None:
                self._used = self._scan_total()
            else:
                self._used += len(jpeg)
            if self._used > self.budget:
                self._used = self._evict(int(self.budget * _KEEP_AFTER_EVICTION))

    def _files(self) -> list[tuple[int, int, Path]]:
        out = []
        stale_tmp = time.time() - 3600
        for path in self.folder.glob("*/*"):
            try:
                st = path.stat()
                if path.suffix == ".tmp":  # left by a crash mid-write
                    if st.st_mtime < stale_tmp:
                        path.unlink()
                    continue
            except OSError:
                continue
            out.append((st.st_atime_ns, st.st_size, path))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _evict(self, keep: int) -> int:
        """Delete least recently used thumbnails until at most `keep` bytes remain."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= keep:
                break
            path.unlink(missing_ok=True)
            total -= size
        return total
