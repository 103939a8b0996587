"""Agreement between two encoders of one model: what an export must show before it is used.

fp32 exports must reach cosine >= 0.9999 with the PyTorch reference on every probe (real
photos and texts); reduced precision (int8, bf16) is opt-in and reports its agreement: mean
and worst cosine, and the overlap of the top-10 neighbours on a gallery of probe photos.
No torch here: once an fp32 export has passed against torch it is the reference for the
other runtimes and precisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.models import preprocess

MIN_COSINE = 0.9999
PROBE_DIR = Path(__file__).parent / "probes"
# Texts every text tower is checked on: short and long, punctuation, numbers, non-Latin
# scripts, HTML entities, a text longer than any context, and the empty text.
PROBE_TEXTS = [
    "a photo of a cat",
    "red car",
    "the facade of an old church with a fountain in front of it",
    "Two people walking a dog on the beach at sunset, seen from above.",
    "A CASTLE WALL, 14th century!!!",
    "nighttime skyline & reflections in the water",
    "a plate of food: pasta, tomatoes, basil (close-up)",
    "der Kölner Dom im Winter",
    "東京タワーの写真",
    "number 42 on a red door",
    "mountains " * 40,
    "",
]


def probe_images(extra: Iterable[Image.Image | str | Path] = ()) -> list[Image.Image]:
    """The shipped probe photos, crops and flips of them (a gallery of 24 with near and far
    neighbours), then any photos the caller adds."""
    photos = [Image.open(p).convert("RGB") for p in sorted(PROBE_DIR.glob("*.jpg"))]
    out: list[Image.Image] = []
    for im in photos:
        w, h = im.size
        out += [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                im.crop((0, 0, w * 2 // 3, h * 2 // 3)), im.crop((w // 3, h // 3, w, h)),
                im.crop((w // 4, 0, w, h * 3 // 4)).rotate(8, resample=Image.Resampling.BICUBIC),
                im.convert("L").convert("RGB")]
    for item in extra:
        out.append(item.convert("RGB") if isinstance(item, Image.Image)
                   else Image.open(item).convert("RGB"))
    return out


def probe_pixels(identity: dict[str, Any], prepare: Callable[[Image.Image], np.ndarray] | None = None,
                 extra: Iterable[Image.Image | str | Path] = ()) -> np.ndarray:
    prep = prepare or (lambda im: preprocess.prepare(im, identity))
    return np.stack([prep(im) for im in probe_images(extra)])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare(ref: np.ndarray, cand: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Row-wise cosine of two [n, d] sets of vectors, and (n > k) how many of each row's top-k
    neighbours within the set agree between the two (1.0 = the same lists)."""
    a, b = _unit(ref), _unit(cand)
    cos = (a * b).sum(1)
    out: dict[str, Any] = {"n": len(a), "mean_cos": float(cos.mean()), "worst_cos": float(cos.min())}
    if len(a) > k:
        out[f"top{k}_overlap"] = top_k_overlap(a, b, k)
    return out


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Each row queries the others (itself excluded); mean share of common top-k neighbours."""
    def top(x: np.ndarray) -> np.ndarray:
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    ta, tb = top(a), top(b)
    return float(np.mean([len(set(ra) & set(rb)) / k for ra, rb in zip(ta, tb, strict=True)]))


def passes(stats: dict[str, Any], threshold: float = MIN_COSINE) -> bool:
    return stats["worst_cos"] >= threshold


def rate(fn: Callable[[], Any], items: int, repeats: int = 3) -> float:
    """items per second of `fn`, best of `repeats` after a warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return items / best


def interleaved_rates(fns: dict[str, Callable[[], Any]], items: int, rounds: int = 3) -> dict[str, float]:
    """items/s of several functions timed in turns (so a change of machine load hits all of
    them alike): the median of `rounds` timings each, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: items / float(np.median(ts)) for name, ts in times.items()}


def summary(stats: dict[str, Any]) -> str:
    parts = [f"worst cosine {stats['worst_cos']:.6f}", f"mean {stats['mean_cos']:.6f}"]
    if "top10_overlap" in stats:
        parts.append(f"top-10 overlap {stats['top10_overlap']:.3f}")
    return ", ".join(parts) + f" on {stats['n']}"


def texts_for_check(extra: Sequence[str] = ()) -> list[str]:
    return [*PROBE_TEXTS, *extra]
