"""Every default Loupe uses, in one place.

Values here are defaults, not state: callers pass overrides explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ViT-B-32 trained on LAION-2B: open_clip's published Flickr30k text->image
# R@1 is 66.8 (COCO 39.3) at 4.4 GFLOPs per image, the cheapest ViT in the
# table with retrieval within a few points of models 3-4x its cost.
DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"

LIBRARY_DIRNAME = ".loupe"
CATALOG_FILENAME = "catalog.db"

# File name endings the scanner considers by default. The decoder then trusts
# the bytes, not the ending: a JPEG named .png (or .svg) is decoded as a JPEG.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
    ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif", ".avif", ".svg",
)

# Pillow format names Loupe decodes. MPO is what Pillow calls multi-picture
# JPEGs from phones and cameras.
ALLOWED_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "HEIF", "AVIF"}
)

MAX_PIXELS = 150_000_000        # a decompression bomb guard, below Pillow's own error at ~179 MP
MAX_FILE_BYTES = 200 * 1024**2  # larger files are recorded as too large, not read

# Below this many vectors, search is one matrix product in numpy; above it a
# FAISS index does the work (flat inner product today; the ANN seam is index.py).
EXACT_SEARCH_MAX = 50_000


@dataclass(frozen=True)
class IndexOptions:
    """How `Library.index` reads a folder."""

    include: tuple[str, ...] = ()           # globs on the relative path; empty = IMAGE_SUFFIXES
    exclude: tuple[str, ...] = ()
    batch_size: int = 32
    workers: int = 0                        # decode threads; 0 = one per core, at least 2
    max_pixels: int = MAX_PIXELS
    max_file_bytes: int = MAX_FILE_BYTES
    skip_hidden: bool = True


@dataclass(frozen=True)
class Filters:
    """Restrict a search to part of the library. Every field is optional."""

    folder: str | None = None               # relative folder prefix, e.g. "2023/summer"
    glob: str | None = None                 # glob on the relative path, e.g. "*.png"
    since: str | None = None                # ISO date, inclusive (EXIF capture date, else mtime)
    until: str | None = None                # ISO date, inclusive
    min_width: int | None = None
    min_height: int | None = None
    types: tuple[str, ...] = field(default_factory=tuple)  # Pillow formats, e.g. ("JPEG","PNG")

    def is_empty(self) -> bool:
        return not any(
            (self.folder, self.glob, self.since, self.until, self.min_width, self.min_height, self.types)
        )
