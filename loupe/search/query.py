"""Queries as the user writes them -> one query vector (`QueryBuilder`).

Composed queries (an image plus a text edit) use training-free fusion:
q = normalise(w * img + (1 - w) * txt). Query arithmetic generalises it to
signed, weighted terms: `"2:golden retriever" + pool.jpg - fruit`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.config import IMAGE_SUFFIXES
from loupe.core.errors import QueryError
from loupe.core.types import Box, Query, SearchRequest, Store
from loupe.media.decode import load_image

_WEIGHTED = re.compile(r"^([+-]?\d+(?:\.\d+)?):(.+)$", re.S)
_OPERATOR = re.compile(r"\s+([+-])\s+")


@dataclass(frozen=True)
class Term:
    weight: float
    value: str
    is_image: bool


def normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise QueryError("the query terms cancel out: their weighted sum is zero")
    return v / n


def fuse(image_vec: np.ndarray, text_vec: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Composed query: `weight` on the image, 1 - weight on the text edit."""
    if not 0.0 <= weight <= 1.0:
        raise QueryError(f"fusion weight must be in [0, 1], got {weight}")
    return normalise(weight * np.asarray(image_vec) + (1.0 - weight) * np.asarray(text_vec))


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    return normalise(np.sum([w * np.asarray(v) for v, w in zip(vectors, weights, strict=True)], axis=0))


def looks_like_expr(parts: Sequence[str]) -> bool:
    """True when the words form query arithmetic rather than plain text."""
    if any(p in ("+", "-") for p in parts):
        return True
    joined = " ".join(parts)
    return bool(_OPERATOR.search(joined)) or any(_WEIGHTED.match(p.strip()) for p in parts)


def parse_expr(parts: Sequence[str] | str, base: Path | None = None) -> list[Term]:
    """`["2:golden retriever", "+", "pool.jpg", "-", "fruit"]` or the same as one string.
    A term naming an image file (by its ending) is an image; it must exist."""
    text = parts if isinstance(parts, str) else " ".join(parts)
    tokens = _OPERATOR.split(" " + text.strip() + " ")
    # _OPERATOR.split gives [term, op, term, op, term...]; an empty first term is a leading sign.
    pieces = [(1.0, tokens[0])] + [
        (-1.0 if op == "-" else 1.0, term) for op, term in zip(tokens[1::2], tokens[2::2], strict=True)
    ]
    if len(pieces) > 1 and not pieces[0][1].strip():
        pieces = pieces[1:]
    terms: list[Term] = []
    for sign, raw in pieces:
        raw = raw.strip().strip('"').strip("'")
        if not raw:
            if len(pieces) == 1:
                raise QueryError("empty query")
            raise QueryError(f"an operator has nothing beside it in {text!r}")
        weight = 1.0
        m = _WEIGHTED.match(raw)
        if m:
            weight, raw = float(m.group(1)), m.group(2).strip()
        terms.append(Term(sign * weight, raw, _is_image_term(raw, base)))
    return terms


def _is_image_term(raw: str, base: Path | None) -> bool:
    if not raw.lower().endswith(IMAGE_SUFFIXES) or " " in raw.strip():
        return False
    path = Path(raw).expanduser()
    if not path.is_absolute() and base is not None and not path.exists():
        path = base / path
    if not path.is_file():
        raise QueryError(f"image term {raw!r}: no such file")
    return True


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise QueryError(f"--box wants x0,y0,x1,y1 in pixels, got {text!r}") from None
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise QueryError(f"--box {text!r}: every coordinate must be a finite number of pixels")
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise QueryError(f"--box {text!r} is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


class QueryBuilder:
    """Turns a `SearchRequest`'s query terms into a `Query`: vectors from the encoder (loaded
    only when a term needs it), an indexed image's stored vector for `like`, and pixels
    when a stage or a box needs them. One decode policy for every face."""

    def __init__(self, encoder: Callable[[], Any], store: Store, resolve: Callable[[Any], int],
                 base: Path | None = None):
        self._encoder = encoder
        self.store = store
        self.resolve = resolve
        self.base = base        # where relative image terms of query arithmetic are looked up

    def build(self, request: SearchRequest, need_pixels: bool = False) -> Query:
        text = request.text.strip() if isinstance(request.text, str) else request.text
        box = request.box
        if request.expr is not None:
            if request.image is not None or request.like is not None:
                raise QueryError("query arithmetic already names its images; drop --image/--like")
            return self._expr(request.expr, request.filters)
        pixels: Image.Image | None = None
        exclude: frozenset[int] = frozenset()
        img_vec: np.ndarray | None = None
        if request.like is not None:
            if request.image is not None:
                raise QueryError("give --image or --like, not both")
            like_id = self.resolve(request.like)
            exclude = frozenset({like_id})
            if box is not None or need_pixels:
                pixels = self.store.load_image(like_id)
            if box is None:
                img_vec = self.store.vectors([like_id])[0]
        elif request.image is not None:
            if isinstance(request.image, Image.Image):
                pixels = request.image.convert("RGB")
            else:  # decoded as the indexer decodes, unless a box needs full-size pixels
                size = None if box is not None or need_pixels else self.encoder.image_size
                pixels = load_image(request.image, reduce_to=size)
        else:
            if not text:
                raise QueryError("empty query: give text, an image (--image) or an indexed image (--like)")
            return Query(self.encoder.encode_text([text])[0], text=text, filters=request.filters)
        if box is not None:
            pixels = crop(pixels, box)
        if img_vec is None:
            img_vec = self.encoder.encode_images([pixels])[0]
        vec = fuse(img_vec, self.encoder.encode_text([text])[0], request.weight) if text else img_vec
        return Query(vec, text=text or None, image=pixels, box=box, exclude_ids=exclude,
                     filters=request.filters)

    @property
    def encoder(self) -> Any:
        return self._encoder()

    def _expr(self, expr: str | Sequence[str], filters: Any) -> Query:
        terms = parse_expr(expr, self.base)
        vecs = []
        for t in terms:
            if t.is_image:
                pixels = load_image(t.value, reduce_to=self.encoder.image_size)
                vecs.append(self.encoder.encode_images([pixels])[0])
            else:
                vecs.append(self.encoder.encode_text([t.value])[0])
        label = " ".join(f"{t.weight:+g}:{t.value}" for t in terms)
        return Query(combine(vecs, [t.weight for t in terms]), text=label, filters=filters)


def crop(image: Image.Image, box: Box) -> Image.Image:
    x0, y0, x1, y1 = box
    w, h = image.size
    if x0 >= w or y0 >= h:
        raise QueryError(f"box {box} lies outside the {w}x{h} image")
    return image.crop((int(x0), int(y0), int(min(x1, w)), int(min(y1, h))))
