"""Queries as the user writes them -> one query vector.

Composed queries (an image plus a text edit) use training-free fusion:
q = normalise(w * img + (1 - w) * txt). Query arithmetic generalises it to
signed, weighted terms: `"2:golden retriever" + pool.jpg - fruit`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loupe.config import IMAGE_SUFFIXES

_WEIGHTED = re.compile(r"^([+-]?\d+(?:\.\d+)?):(.+)$", re.S)
_OPERATOR = re.compile(r"\s+([+-])\s+")


class QueryError(ValueError):
    """A query that cannot be understood; the message says what is wrong."""


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
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise QueryError(f"--box {text!r} is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1
