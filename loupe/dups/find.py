"""Find near-duplicate groups: content hash, perceptual hashes, embeddings, spatial verification.

Pairs are found by any enabled method:
- exact: the same SHA-256 of the file's bytes (always a duplicate);
- phash / dhash: perceptual hashes (`imagehash`, 64 bits at hash_size 8) at Hamming
  distance <= the option;
- embedding: cosine of the images' vectors >= the option.
With `verify`, a pair that is not exact is kept only when spatial verification (the
`Spatial` reranker's local features, matching and MAGSAC fit) finds at least
`min_inliers` inliers making up at least `min_inlier_ratio` of the matches considered
(mutual nearest neighbours passing the ratio test). A copy's matches nearly all fit one
geometric map; two photos of one landmark can share dozens of inliers, but among many
more matches. On the Sacre Coeur copies (benchmarks/answers.py) a ratio of 0.95 keeps
no pair of different photos and, through the connected components, every copy; 0.85
merges some of the ten groups. Groups are the connected components of the kept pairs; each
group's representative is its largest file (bytes; then more pixels; then path).

    items = scan_files(paths)                         # hashes, sizes, dimensions
    result = find(items, vectors, Options(embedding=0.95, verify=True))
    result.groups                                     # [[representative, member, ...], ...]

`find_in_library(lib)` does the same over an indexed library's images and vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loupe.core.errors import DecodeError
from loupe.media.decode import decode, read_bytes
from loupe.search.stages.collapse import components

if TYPE_CHECKING:
    from PIL import Image

    from loupe.search.stages.spatial import LocalFeatures, Spatial

log = logging.getLogger(__name__)

HASHES = ("phash", "dhash")
METHODS = ("exact", "phash", "dhash", "embedding", "verified")
_HASH_DECODE = 256     # pixels: perceptual hashes look at 32x32 (pHash) or 9x8 (dHash)


@dataclass
class Options:
    """Which methods find pairs, and their thresholds (None: the method is off)."""

    exact: bool = True
    phash: int | None = 10          # max Hamming distance of 64-bit pHashes
    dhash: int | None = None        # max Hamming distance of 64-bit dHashes
    embedding: float | None = None  # min cosine of the vectors (needs vectors)
    verify: bool = False            # confirm every non-exact pair by spatial verification
    min_inliers: int = 15
    min_inlier_ratio: float = 0.95  # inliers / matches considered
    hash_size: int = 8
    workers: int = 0                # 0: one thread per core

    def __post_init__(self) -> None:
        for name in HASHES:
            value = getattr(self, name)
            if value is not None and not 0 <= value <= self.hash_size ** 2:
                raise ValueError(f"{name}: a Hamming distance in 0..{self.hash_size ** 2}, got {value}")
        if self.embedding is not None and not -1 <= self.embedding <= 1:
            raise ValueError(f"embedding: a cosine in [-1, 1], got {self.embedding}")
        if self.min_inliers < 1:
            raise ValueError(f"min_inliers must be >= 1, got {self.min_inliers}")
        if not 0 <= self.min_inlier_ratio <= 1:
            raise ValueError(f"min_inlier_ratio must be in [0, 1], got {self.min_inlier_ratio}")


@dataclass
class Item:
    """One file: where it is, its content hash and size, and what decoding it gave."""

    path: Path
    id: int | None = None           # a library id, when the item comes from one
    sha256: str | None = None       # None: unreadable
    size: int = 0
    width: int | None = None        # None: not decodable
    height: int | None = None
    phash: int | None = None
    dhash: int | None = None
    error: str | None = None


@dataclass
class Pair:
    """Two items (indices into the items) and the evidence each method gave."""

    a: int
    b: int
    exact: bool = False
    phash: int | None = None        # Hamming distances, where both hashes exist
    dhash: int | None = None
    cosine: float | None = None
    inliers: int | None = None      # when verified
    matches: int | None = None      # the matches verification considered
    methods: tuple[str, ...] = ()   # the methods that found it ("verified" when confirmed)


@dataclass
class Result:
    items: list[Item]
    pairs: list[Pair]               # the kept pairs: the groups' edges
    groups: list[list[int]]         # item indices, representative first; groups of >= 2 only
    options: Options
    candidates: int = 0             # pairs found before verification
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from loupe.dups.report import to_json

        return to_json(self)


# --- reading files --------------------------------------------------------------------------

def scan_files(paths: Sequence[str | Path], hashes: Sequence[str] = HASHES, hash_size: int = 8,
               workers: int = 0, progress: Callable[[int], None] | None = None) -> list[Item]:
    """Read each file once: SHA-256, size, dimensions and perceptual hashes. A file that
    cannot be read or decoded keeps what could be learnt (an undecodable file still has
    a content hash, so its exact copies are found) and its error. `progress(1)` after each."""
    def one(path: str | Path) -> Item:
        item = scan_file(Path(path), hashes, hash_size)
        if progress is not None:
            progress(1)
        return item

    with ThreadPoolExecutor(_threads(workers)) as pool:
        return list(pool.map(one, paths))


def scan_file(path: Path, hashes: Sequence[str] = HASHES, hash_size: int = 8) -> Item:
    item = Item(path)
    try:
        data = read_bytes(path)
    except (OSError, DecodeError) as exc:
        item.error = str(exc)
        return item
    item.sha256 = hashlib.sha256(data).hexdigest()
    item.size = len(data)
    try:
        decoded = decode(data, reduce_to=_HASH_DECODE)
    except DecodeError as exc:
        item.error = str(exc)
        return item
    item.width, item.height = decoded.width, decoded.height
    for name, value in image_hashes(decoded.image, hashes, hash_size).items():
        setattr(item, name, value)
    return item


def image_hashes(image: Image.Image, hashes: Sequence[str] = HASHES,
                 hash_size: int = 8) -> dict[str, int]:
    """Perceptual hashes of an image as integers (bit i = the hash's i-th cell, row-major)."""
    try:
        import imagehash
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("perceptual hashes need the imagehash package: "
                           "pip install imagehash") from None
    out = {}
    for name in hashes:
        if name not in HASHES:
            raise ValueError(f"unknown hash {name!r}; known: {', '.join(HASHES)}")
        bits = getattr(imagehash, name)(image, hash_size=hash_size).hash.ravel()
        out[name] = int("".join("1" if b else "0" for b in bits), 2)
    return out


# --- pairs per method -----------------------------------------------------------------------

def exact_pairs(shas: Sequence[str | None]) -> np.ndarray:
    """(n, 2) index pairs i < j with the same content hash (None never matches)."""
    by_hash: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        if sha is not None:
            by_hash.setdefault(sha, []).append(i)
    pairs = [(m[x], m[y]) for m in by_hash.values() for x in range(len(m))
             for y in range(x + 1, len(m))]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def hamming_pairs(hashes: Sequence[int | None], max_distance: int,
                  chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of hashes (up to 64 bits) at Hamming distance <= max_distance,
    and the distances. All pairs, in chunks: O(n^2) popcounts."""
    valid = np.array([h is not None for h in hashes], dtype=bool)
    rows = np.flatnonzero(valid)
    codes = np.array([hashes[i] for i in rows], dtype=np.uint64)
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(codes), chunk):
        block = codes[start:start + chunk]
        dist = _popcount(block[:, None] ^ codes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        upper = j > i
        found_i.append(rows[i[upper]])
        found_j.append(rows[j[upper]])
        found_d.append(dist[i[upper] - start, j[upper]])
    if not found_i:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    pairs = np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1).astype(np.int64)
    return pairs, np.concatenate(found_d).astype(np.int64)


def hamming(a: int, b: int) -> int:
    """Hamming distance of two hashes given as integers."""
    return (int(a) ^ int(b)).bit_count()


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 counts them natively)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return _BYTE_BITS[as_bytes].sum(axis=-1, dtype=np.int64)


def embedding_pairs(vectors: np.ndarray, min_cosine: float,
                    chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of unit rows with cosine >= min_cosine, and the cosines (exact:
    O(n^2 d) in chunks)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    found_i, found_j, found_c = [], [], []
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T
        i, j = np.nonzero(sim >= min_cosine)
        upper = j > i + start
        found_i.append(i[upper] + start)
        found_j.append(j[upper])
        found_c.append(sim[i[upper], j[upper]])
    if not found_i:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pairs = np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1).astype(np.int64)
    return pairs, np.concatenate(found_c).astype(np.float32)


def verify_pairs(pairs: np.ndarray, features: Callable[[int], LocalFeatures | None],
                 spatial: Spatial | None = None, workers: int = 0) -> np.ndarray:
    """(n, 2) of each pair's inlier count by spatial verification, and the number of matches
    it considered (0, 0 where an image has no features). `features(i)` gives item i's
    local features; each item's are asked for once."""
    from loupe.search.stages.spatial import Spatial, mutual_matches

    spatial = spatial or Spatial()
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    needed = sorted(set(pairs.ravel().tolist()))
    with ThreadPoolExecutor(_threads(workers)) as pool:
        feats = dict(zip(needed, pool.map(features, needed), strict=True))

    def one(pair: np.ndarray) -> tuple[int, int]:
        fa, fb = feats[int(pair[0])], feats[int(pair[1])]
        if fa is None or fb is None or not len(fa) or not len(fb):
            return 0, 0
        matches = len(mutual_matches(fa.descriptors, fb.descriptors, spatial.detector,
                                     spatial.ratio))
        return spatial.verify(fa, fb)[0], matches

    with ThreadPoolExecutor(_threads(workers)) as pool:
        found = list(pool.map(one, pairs))
    return np.array(found, dtype=np.int64).reshape(-1, 2)


# --- the whole search -----------------------------------------------------------------------

def find(items: Sequence[Item], vectors: np.ndarray | None = None, options: Options | None = None,
         features: Callable[[int], LocalFeatures | None] | None = None,
         spatial: Spatial | None = None) -> Result:
    """Duplicate groups among `items` (from `scan_files`), with `vectors` (unit rows, one per
    item) when the embedding method is on. Verification uses `spatial`'s settings (default
    `Spatial()`); `features(i)` overrides how it gets an item's local features (default:
    decode the file and extract)."""
    import time

    options = options or Options()
    items = list(items)
    timings: dict[str, float] = {}
    evidence: dict[tuple[int, int], Pair] = {}

    def pair(a: int, b: int) -> Pair:
        key = (min(a, b), max(a, b))
        if key not in evidence:
            evidence[key] = Pair(*key)
        return evidence[key]

    t0 = time.perf_counter()
    if options.exact:
        for a, b in exact_pairs([it.sha256 for it in items]):
            p = pair(int(a), int(b))
            p.exact = True
            p.methods += ("exact",)
    for name in HASHES:
        limit = getattr(options, name)
        if limit is None:
            continue
        found, dist = hamming_pairs([getattr(it, name) for it in items], limit)
        for (a, b), d in zip(found, dist, strict=True):
            p = pair(int(a), int(b))
            setattr(p, name, int(d))
            p.methods += (name,)
    timings["hash_pairs_s"] = time.perf_counter() - t0
    if options.embedding is not None:
        if vectors is None or len(vectors) != len(items):
            raise ValueError("the embedding method needs one vector per item")
        t0 = time.perf_counter()
        found, cos = embedding_pairs(vectors, options.embedding)
        for (a, b), c in zip(found, cos, strict=True):
            p = pair(int(a), int(b))
            p.cosine = float(c)
            p.methods += ("embedding",)
        timings["embedding_pairs_s"] = time.perf_counter() - t0
    candidates = sorted(evidence.values(), key=lambda p: (p.a, p.b))
    kept = candidates
    if options.verify:
        t0 = time.perf_counter()
        to_check = [p for p in candidates if not p.exact]
        if to_check:
            from loupe.search.stages.spatial import Spatial

            spatial = spatial or Spatial()
            inliers = verify_pairs(np.array([(p.a, p.b) for p in to_check]),
                                   features or _file_features(items, spatial), spatial,
                                   options.workers)
            for p, (n, m) in zip(to_check, inliers, strict=True):
                p.inliers, p.matches = int(n), int(m)
                if n >= options.min_inliers and n >= options.min_inlier_ratio * m:
                    p.methods += ("verified",)
        kept = [p for p in candidates if p.exact or "verified" in p.methods]
        timings["verify_s"] = time.perf_counter() - t0
    labels = components(len(items), np.array([(p.a, p.b) for p in kept], np.int64).reshape(-1, 2))
    return Result(items, kept, group_lists(labels, items), options, len(candidates), timings)


def group_lists(labels: np.ndarray, items: Sequence[Item]) -> list[list[int]]:
    """Groups of two or more items from component labels, each with its representative
    (largest file, then more pixels, then path) first, the others in the same order;
    groups in order of their representative's path."""
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(np.asarray(labels).tolist()):
        by_label.setdefault(label, []).append(i)
    groups = [sorted(m, key=lambda i: representative_key(items[i]))
              for m in by_label.values() if len(m) > 1]
    return sorted(groups, key=lambda g: str(items[g[0]].path))


def representative_key(item: Item) -> tuple:
    pixels = (item.width or 0) * (item.height or 0)
    return (-item.size, -pixels, str(item.path))


def find_in_library(lib: Any, options: Options | None = None,
                    spatial: Spatial | None = None,
                    progress: Callable[[int], None] | None = None) -> Result:
    """`find` over an indexed library (a `loupe.Library`): its searchable images, their
    stored vectors and content hashes, its cache of local features for verification.
    `progress(1)` after each file read for perceptual hashes."""
    options = options or Options()
    ids, vectors = lib.all_vectors()
    paths = [lib.image_path(int(i)) for i in ids]
    need_hashes = tuple(h for h in HASHES if getattr(options, h) is not None)
    items = scan_files(paths, need_hashes, options.hash_size, options.workers, progress) \
        if need_hashes else [Item(Path(p)) for p in paths]
    for item, id_ in zip(items, ids, strict=True):
        item.id = int(id_)
        record = lib.record(int(id_))
        if item.sha256 is None:             # not read (no perceptual hash asked): the catalog's
            item.sha256 = record.get("sha256")
            item.size = int(record.get("size") or 0)
            item.width, item.height = record.get("width"), record.get("height")
    features = None
    if options.verify:
        from loupe.search.stages.spatial import Spatial

        spatial = spatial or Spatial()
        store = lib.store
        cache = spatial.cache(store)

        def features(i: int) -> LocalFeatures | None:
            return spatial.features(store, int(ids[i]), cache)

    result = find(items, vectors, options, features, spatial)
    if options.verify:
        cache.evict()
    return result


def _file_features(items: Sequence[Item], spatial: Spatial) -> Callable[[int], LocalFeatures | None]:
    def features(i: int) -> LocalFeatures | None:
        try:
            image = decode(read_bytes(Path(items[i].path)), reduce_to=spatial.max_side).image
        except (OSError, DecodeError) as exc:
            log.warning("dups: %s left unverified: %s", items[i].path, exc)
            return None
        return spatial.extract(image)

    return features


def _threads(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def as_dict(item: Item) -> dict[str, Any]:
    out = asdict(item)
    out["path"] = str(item.path)
    for name in HASHES:
        if out[name] is not None:
            out[name] = f"{out[name]:016x}"
    return out
