"""OCR engines: the words inside an image, each with its box and confidence.

An engine is anything with `name`, `identity` and `read(image) -> list[Word]`; engines are found by
name in a registry (`get_engine("rapidocr")`), so another one (Tesseract, a cloud API) is one more
module that calls `register`. The one shipped here is RapidOCR on ONNX Runtime (the PP-OCRv4
detection and recognition models ship inside its wheel; nothing is downloaded).

How the engine spends its time, and why OCR runs in full on every image (no detection gate)
--------------------------------------------------------------------------------------------
RapidOCR runs a text *detector* over the whole image, then the *recogniser* over each detected
box; when the detector finds nothing it stops there, so "recognise only where detection finds
text" is already how full OCR works. Whether a separate, cheaper gate pays was measured with
`benchmarks/ocr.py` on the labelled test set (40 Strecha photos at 1536 px with 123 drawn words,
20 without text; numbers in benchmarks/results/ocr.json):

* detection is most of the cost: at 1536 px it took 83 % of full OCR's CPU time on photos with
  text and 84 % on photos without (full OCR: about 1.7 CPU-seconds per photo);
* the detector fires on 95 % of the photos without any text (windows, railings, masonry), so a
  gate at the same resolution would skip almost nothing;
* a gate at lower resolution is cheap but blind to small text: detecting at 512 px first cut the
  CPU time on text-free photos by 4x but lost a third of the words found (recall 0.77 -> 0.52;
  words under 24 px: 0.76 -> 0.29);
  at 768 px it lost fewer words (0.73) but cost more than no gate on photos with text.

So `read` runs detection once at `side` pixels (the long side, 1536 by default: 1024 px lost a
fifth of the words, 0.77 -> 0.61) and recognition on what it finds. `gate_side` turns the
measured low-resolution gate on for libraries that prefer cheaper indexing to small text;
`detect` is detection only.

Cost: with OCR at 1536 px, indexing the same photos took 7x the CPU time of decoding and
embedding them with ViT-B-32 (3.3 -> 0.46 images per CPU-second): run OCR as its own, resumable
pass after the vectors are committed, not inside the embedding batch.

Words: RapidOCR recognises lines; a line is split into words at spaces, and each word's box is
the part of the line's quadrilateral its characters take (from the recogniser's per-character
columns when they line up with the text, else in proportion to the characters), reported as an
axis-aligned (x0, y0, x1, y1) box in pixels of the image given to `read`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

EXTRA_HINT = 'pip install "loupe-search[ocr]"'


class OcrUnavailable(ImportError):
    """The engine's optional dependency is not installed."""


@dataclass(frozen=True)
class Word:
    text: str
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the image read
    confidence: float                         # 0..1

    def to_list(self) -> list:
        return [self.text, [round(float(v), 1) for v in self.box], round(float(self.confidence), 4)]

    @classmethod
    def from_list(cls, item: Sequence) -> Word:
        text, box, conf = item
        return cls(str(text), tuple(float(v) for v in box), float(conf))


def words_to_json(words: Iterable[Word]) -> str:
    return json.dumps([w.to_list() for w in words], ensure_ascii=False, separators=(",", ":"))


def words_from_json(text: str) -> list[Word]:
    return [Word.from_list(item) for item in json.loads(text)]


def scale_words(words: Iterable[Word], sx: float, sy: float | None = None) -> list[Word]:
    """Boxes in another resolution of the same image (e.g. read on a reduced decode, shown on
    the original: sx = original width / read width)."""
    sy = sx if sy is None else sy
    return [Word(w.text, (w.box[0] * sx, w.box[1] * sy, w.box[2] * sx, w.box[3] * sy),
                 w.confidence) for w in words]


@runtime_checkable
class OcrEngine(Protocol):
    name: str

    @property
    def identity(self) -> dict[str, Any]:
        """Engine, version, model files' identity and the options that change what it reads."""
        ...

    def read(self, image: Image.Image) -> list[Word]:
        ...


def identity_key(identity: dict[str, Any]) -> str:
    """A short, stable key for an identity: what the OCR cache (`fts.put_ocr`) is keyed by."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return f"{identity.get('engine', 'ocr')}:{hashlib.sha256(blob).hexdigest()[:16]}"


# --- registry -------------------------------------------------------------------------------

ENGINES: dict[str, Callable[..., OcrEngine]] = {}


def register(name: str, factory: Callable[..., OcrEngine]) -> None:
    ENGINES[name] = factory


def get_engine(name: str = "rapidocr", **options: Any) -> OcrEngine:
    """An engine by name, built with `options` (e.g. threads=2). Raises OcrUnavailable naming
    the extra to install when its dependency is missing, ValueError for an unknown name."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown OCR engine {name!r}; known: {', '.join(sorted(ENGINES))}") \
            from None
    return factory(**options)


# --- RapidOCR -------------------------------------------------------------------------------

_SPLIT = re.compile(r"\S+")


class RapidOcrEngine:
    """RapidOCR (PP-OCRv4 det + rec, ONNX Runtime). Thread-safe: one inference at a time per
    engine (ONNX Runtime parallelises inside it with `threads` threads)."""

    name = "rapidocr"

    def __init__(self, *, threads: int | None = None, side: int = 1536,
                 min_confidence: float = 0.5, use_angle_cls: bool = True,
                 gate_side: int | None = None):
        try:
            import rapidocr_onnxruntime
        except ImportError as exc:
            raise OcrUnavailable(
                f"the RapidOCR engine needs rapidocr-onnxruntime: {EXTRA_HINT} ({exc})"
            ) from None
        if side < 64:
            raise ValueError(f"side must be at least 64 pixels, got {side}")
        self.threads = int(threads) if threads else min(4, os.cpu_count() or 1)
        self.side = int(side)
        self.min_confidence = float(min_confidence)
        self.use_angle_cls = bool(use_angle_cls)
        self.gate_side = int(gate_side) if gate_side else None
        self._module = rapidocr_onnxruntime
        # The image arrives already at `side` pixels: detection must not resize it again (a
        # "min" limit below any real side only rounds it to multiples of 32), nor RapidOCR's
        # own max/min side caps.
        self._ocr = rapidocr_onnxruntime.RapidOCR(
            intra_op_num_threads=self.threads, inter_op_num_threads=1,
            det_limit_type="min", det_limit_side_len=32, max_side_len=1 << 30,
            text_score=self.min_confidence, use_cls=self.use_angle_cls,
        )
        self._lock = threading.Lock()
        self._identity: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            import importlib.metadata  # here: its import costs every cold command 0.03 s

            root = Path(self._module.__file__).parent
            models = {p.name: _file_digest(p) for p in sorted((root / "models").glob("*.onnx"))}
            self._identity = {
                "engine": self.name,
                "package": "rapidocr_onnxruntime",
                "version": importlib.metadata.version("rapidocr_onnxruntime"),
                "models": models,
                "options": {"side": self.side, "min_confidence": self.min_confidence,
                            "angle_cls": self.use_angle_cls, "gate_side": self.gate_side},
            }
        return self._identity

    @property
    def key(self) -> str:
        return identity_key(self.identity)

    def _prepare(self, image: Image.Image, side: int | None = None) -> tuple[np.ndarray, float]:
        """BGR pixels with the long side at `side` (never enlarged), and the scale applied."""
        rgb = image.convert("RGB")
        scale = min(1.0, (side or self.side) / max(rgb.size))
        if scale < 1.0:
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]), scale

    def detect(self, image: Image.Image,
               side: int | None = None) -> list[tuple[float, float, float, float]]:
        """Detection only (at `side` pixels, the engine's by default): boxes (x0, y0, x1, y1),
        in pixels of `image`, where the detector sees text."""
        pixels, scale = self._prepare(image, side)
        with self._lock:
            result, _ = self._ocr(pixels, use_det=True, use_cls=False, use_rec=False)
        return [_bounds(np.asarray(quad, np.float32) / scale) for quad in (result or [])]

    def read(self, image: Image.Image) -> list[Word]:
        if self.gate_side and not self.detect(image, self.gate_side):
            return []
        pixels, scale = self._prepare(image)
        with self._lock:
            result, _ = self._ocr(pixels, return_word_box=True, text_score=self.min_confidence)
        words: list[Word] = []
        for line in result or []:
            quad = np.asarray(line[0], np.float32)
            text, conf = str(line[1]), float(line[2])
            chars = _char_spans(line, text, quad)
            words.extend(_split_line(text, conf, quad / scale, chars))
        return words


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _bounds(quad: np.ndarray) -> tuple[float, float, float, float]:
    q = np.asarray(quad, np.float32).reshape(-1, 2)
    return (float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()),
            float(q[:, 1].max()))


def _char_spans(line: Sequence, text: str,
                quad: np.ndarray) -> list[tuple[float, float, float]] | None:
    """Each character's (start, end, confidence), start and end as fractions along the line,
    from the recogniser's per-character boxes when they line up one-to-one with the text (same
    pixels as `quad`); None otherwise."""
    if len(line) < 6 or not line[3] or len(line[3]) != len(text) or len(line[5]) != len(text):
        return None
    if "".join(line[4]) != text:
        return None
    tl, tr = quad[0], quad[1]
    axis = tr - tl
    length = float(np.hypot(*axis))
    if length < 1:
        return None
    unit = axis / length
    spans = []
    for pts in line[3]:
        # char boxes are in the pixels RapidOCR was given; project them on the line's axis
        p = np.asarray(pts, np.float32).reshape(-1, 2)
        proj = (p - tl) @ unit
        spans.append((float(proj.min()) / length, float(proj.max()) / length))
    return [(a, b, float(c)) for (a, b), c in zip(spans, line[5], strict=True)]


def _split_line(text: str, conf: float, quad: np.ndarray,
                chars: list[tuple[float, float, float]] | None) -> list[Word]:
    """Words of one recognised line, each with the part of the line's quadrilateral it takes
    and the mean confidence of its characters (the line's when there are none)."""
    n = len(text)
    if n == 0:
        return []
    tl, tr, br, bl = (quad[i] for i in range(4))
    out = []
    for m in _SPLIT.finditer(text):
        word_conf = conf
        if chars is not None:
            a = max(0.0, min(chars[m.start()][0], 1.0))
            b = max(a, min(chars[m.end() - 1][1], 1.0))
            word_conf = float(np.mean([c[2] for c in chars[m.start():m.end()]]))
        else:
            a, b = m.start() / n, m.end() / n
        corners = np.stack([tl + (tr - tl) * a, tl + (tr - tl) * b,
                            bl + (br - bl) * b, bl + (br - bl) * a])
        out.append(Word(m.group(), _bounds(corners), word_conf))
    return out


def _rapidocr(**options: Any) -> OcrEngine:
    return RapidOcrEngine(**options)


register("rapidocr", _rapidocr)
