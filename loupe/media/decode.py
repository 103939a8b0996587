"""Turn file bytes into pixels safely: content decides the format, limits come first."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from loupe.core.config import ALLOWED_FORMATS, MAX_FILE_BYTES, MAX_PIXELS
from loupe.core.errors import DecodeError

try:  # HEIC/AVIF when the optional plugin is installed (pip install loupe-search[heif])
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the optional extra
    pass

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
_MAKE, _MODEL = 0x010F, 0x0110


@dataclass
class Decoded:
    image: Image.Image          # RGB, EXIF orientation applied, possibly reduced (see `reduce_to`)
    width: int                  # full-resolution size after orientation
    height: int
    format: str
    taken_at: str | None        # ISO 8601 from EXIF, when the camera wrote one
    camera: str | None


def read_bytes(path: Path, max_file_bytes: int = MAX_FILE_BYTES) -> bytes:
    size = path.stat().st_size
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    if size > max_file_bytes:
        raise DecodeError(f"file too large: {size} bytes > limit {max_file_bytes}")
    return path.read_bytes()


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, reduce_to: int | None = None) -> Decoded:
    """Decode image bytes. `reduce_to` lets JPEG decode at 1/2..1/8 scale while keeping
    both sides >= reduce_to: the model never sees more than that, and it is several
    times cheaper than a full decode."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise DecodeError(f"unsupported format: {fmt}")
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(f"too many pixels: {w}x{h} > limit {max_pixels}")
            exif = im.getexif()
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF/WebP/TIFF: the first frame stands for the file
            if reduce_to and fmt in ("JPEG", "MPO"):
                im.draft("RGB", (reduce_to, reduce_to))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too many pixels: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    except MemoryError:
        raise DecodeError("could not be decoded: out of memory") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure (a corrupt AVIF's RuntimeError)
        raise DecodeError(f"corrupt or truncated image: {type(exc).__name__}: {exc}"[:300]) from None
    orientation = exif.get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    taken, camera = _exif_fields(exif)
    return Decoded(im, w, h, fmt, taken, camera)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, as a viewer shows them, not black.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def _exif_fields(exif: Image.Exif) -> tuple[str | None, str | None]:
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except (KeyError, ValueError, OSError):
        sub = {}
    raw = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    taken = None
    if isinstance(raw, str):
        try:
            taken = datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").isoformat()
        except ValueError:
            taken = None
    make, model = (str(exif.get(t, "")).strip("\x00 ") for t in (_MAKE, _MODEL))
    if make and model.lower().startswith(make.lower()):
        make = ""
    camera = " ".join(p for p in (make, model) if p) or None
    return taken, camera


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS,
               max_file_bytes: int = MAX_FILE_BYTES, reduce_to: int | None = None) -> Image.Image:
    """Read and decode one file for a query or a reranker: RGB, EXIF-rotated; full size
    unless `reduce_to` (then decoded exactly as the indexer does, so vectors match)."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"no such image file: {path}")
    data = read_bytes(path, max_file_bytes)
    return decode(data, max_pixels=max_pixels, reduce_to=reduce_to).image
