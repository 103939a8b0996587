"""Every setting Loupe has, in one table (name, default, help), and the library folder's layout.

Values here are defaults, not state: callers pass overrides explicitly, and what a
library chose (its model, its index kind) is recorded in its catalog. The environment
overrides a default as `LOUPE_<NAME>` (e.g. `LOUPE_MODEL=loupe-tiny:random`).
`loupe settings` prints this table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    # ViT-B-32 trained on LAION-2B: open_clip's published Flickr30k text->image
    # R@1 is 66.8 (COCO 39.3) at 4.4 GFLOPs per image, the cheapest ViT in the
    # table with retrieval within a few points of models 3-4x its cost.
    Setting("model", "ViT-B-32:laion2b_s34b_b79k",
            "Embedding model of a new library (open_clip ARCH:TAG)."),
    # ONNX Runtime is the CPU default (auto): 1.2x torch's image tower here and no torch import
    # for a text query; OpenVINO replaces it only where installed and measured >= 1.1x faster.
    Setting("backend", "auto",
            "Model backend: auto (GPU: torch; CPU: the checked ONNX export), torch, onnx, openvino."),
    Setting("precision", "auto",
            "Model precision: auto (fp16 on a GPU, fp32 on a CPU), fp32, fp16 (GPU), int8 / bf16 "
            "(CPU, opt-in: they report their agreement with fp32)."),
    Setting("batch_size", 32, "Images per model call when indexing."),
    Setting("workers", 0, "Decode threads when indexing; 0 = one per core, at least 2."),
    Setting("max_pixels", 150_000_000,
            "Images with more pixels are refused (decompression bombs); below Pillow's ~179 MP."),
    Setting("max_file_bytes", 200 * 1024**2, "Files larger than this are recorded as too large."),
    Setting("index_memory_budget", 1024**3,
            "Bytes the search index may keep in RAM; larger libraries get a compressed index."),
    Setting("k", 20, "Results per search."),
    Setting("answers", "cutoff,collapse",
            "Stages the CLI and the page add to every search: the calibrated cut-off (no "
            "confident match) and near-duplicate collapse; 'none' shows plain top-k. "
            "--all / 'show all' turns them off for one search."),
    Setting("fusion_weight", 0.5, "Image+text queries: weight of the image (1 = image only)."),
    Setting("ocr_engine", "rapidocr",
            "OCR engine of `loupe index --ocr` (loupe.text.ocr registry; rapidocr needs [ocr])."),
    Setting("ocr_threads", 0, "Threads the OCR engine uses; 0 = up to 4, one per core."),
    # 0 builds every ONNX Runtime session from the exported file (about 0.8 s for a text tower
    # instead of 0.15 s); see loupe/models/ortcache.py.
    Setting("ort_cache", 1, "Keep ONNX Runtime's optimised graph of each tower beside its export "
            "(checked equal before use) so sessions start fast; 0 = off."),
    Setting("bridge_sample", 512, "Model switch: contents embedded by both models before the "
            "bridge is fitted and searches use the new model."),
)}


def default(name: str) -> Any:
    """A setting's value: `LOUPE_<NAME>` from the environment when set, else its default."""
    setting = SETTINGS[name]
    raw = os.environ.get(f"LOUPE_{name.upper()}")
    if raw is None:
        return setting.default
    try:
        return type(setting.default)(raw)
    except ValueError:
        raise ValueError(f"LOUPE_{name.upper()}={raw!r} is not a valid "
                         f"{type(setting.default).__name__}") from None


DEFAULT_MODEL: str = SETTINGS["model"].default
MAX_PIXELS: int = SETTINGS["max_pixels"].default
MAX_FILE_BYTES: int = SETTINGS["max_file_bytes"].default

# --- the library folder ---------------------------------------------------------------------
LIBRARY_DIRNAME = ".loupe"        # FOLDER/.loupe unless --library says otherwise
CATALOG_FILENAME = "catalog.db"   # rows, vectors per space, settings chosen (SQLite)
SPACES_DIRNAME = "spaces"         # spaces/<id>/: the saved search index of each embedding space
CACHE_DIRNAME = "cache"           # cache/<name>/: thumbnails, local features (safe to delete)

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


@dataclass(frozen=True)
class IndexOptions:
    """How `Library.index` reads a folder."""

    include: tuple[str, ...] = ()           # globs on the relative path; empty = IMAGE_SUFFIXES
    exclude: tuple[str, ...] = ()
    batch_size: int = default("batch_size")
    workers: int = default("workers")
    max_pixels: int = MAX_PIXELS
    max_file_bytes: int = MAX_FILE_BYTES
    skip_hidden: bool = True
    index_spec: str | None = None           # force the search index kind (FAISS-like spec string)
    prune: bool = False                     # forget files even when most of the library is gone
    ocr: bool | None = None                 # read text in images; None: as the library last chose
