"""Spatial verification with local features: the reranker for hard instance retrieval.

Detect and describe local features (OpenCV SIFT as RootSIFT by default, ORB as
the fast option, learned DISK features matched by LightGlue as `spatial-learned`,
see `learned_features`) on images downscaled to `max_side`, match them (ratio
test plus mutual nearest neighbours, or LightGlue), fit a homography (or an
affine map) with MAGSAC (cv2.USAC_MAGSAC), and count the inliers. Verified
candidates move to the front, most inliers first, each with a box: the inliers'
extent in the database image, in its original pixels; their score is the inlier
count. Database features are extracted on demand and cached on disk under
`store.cache_dir("local-features")`, or ahead of time by `precompute`.

The decision (shared/methods.md, "Spatial verification decision"):
- "adaptive" (default): relative to the query's own candidate list. The list's
  median inlier count is what a non-matching candidate gets under these settings
  (most of a top-M list does not match: chance agreement of a robust fit to the
  minimal sample of 4 points, or 3 for affine, plus what the features' clutter
  adds); a candidate is verified when its inliers exceed `chance_factor` times
  that chance level, which is never taken below the minimal sample and is the
  minimal sample itself for lists shorter than `min_list`. The level and the
  resulting threshold are reported in `evidence` after each call.
- "fixed": at least `min_inliers` inliers, whatever the list.
On hard real pairs (benchmarks/learned.py) the adaptive rule verifies more true
matches than the fixed 15 at the same rejection of non-matches.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from loupe.core.files import evict_lru
from loupe.core.types import Box, Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive

if TYPE_CHECKING:
    import torch

# torch and OpenCV are imported where used: listing or parsing rerankers loads neither.

log = logging.getLogger(__name__)

DETECTORS = ("sift", "orb", "disk")
MODELS = ("homography", "affine")
DECISIONS = ("adaptive", "fixed")
MINIMAL_SAMPLE = {"homography": 4, "affine": 3}
CACHE_NAME = "local-features"
_PRECOMPUTE_CHUNK = 512


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image in working (downscaled) pixels, and their raw descriptors."""

    points: np.ndarray        # (n, 2) float32, x and y in the downscaled image
    descriptors: np.ndarray   # (n, 128) uint8 SIFT, (n, 32) uint8 ORB bits, (n, 128) float16 DISK
    scale: np.ndarray         # (2,) float32: original pixels per working pixel, x and y
    size: np.ndarray | None = None   # (2,) working width and height (learned matchers read it)

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class Spatial(Reranker):
    """Spatial verification: local-feature matches + MAGSAC homography, scored by inliers."""

    name: ClassVar[str] = "spatial"
    needs_pixels: ClassVar[bool] = True
    makes_boxes: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("torch", "cv2")
    depth: int = 100
    detector: str = "sift"
    max_keypoints: int = 1000     # as DELG; matching cost grows with its square
    max_side: int = 1024
    ratio: float = 0.8
    model: str = "homography"
    threshold: float = 4.0        # MAGSAC's reprojection threshold, in working pixels
    decision: str = "adaptive"    # or "fixed": at least min_inliers
    chance_factor: float = 2.0    # adaptive: verified above this many times the list's chance level
    min_list: int = 10            # adaptive: shorter lists take the minimal sample as chance level
    min_inliers: int = 15         # fixed: the inlier count that verifies
    cache_mb: int = 2048
    workers: int = 0              # 0: one thread per core
    weights: str = ""             # learned detectors: "" kornia's pretrained, a folder, "random"
    device: str = "auto"          # learned detectors: where DISK and LightGlue run

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"Spatial: detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.model not in MODELS:
            raise ValueError(f"Spatial: model must be one of {MODELS}, got {self.model!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"Spatial: decision must be one of {DECISIONS}, got {self.decision!r}")
        check_positive(
            self, depth=self.depth, max_keypoints=self.max_keypoints, max_side=self.max_side,
            ratio=self.ratio, threshold=self.threshold, min_inliers=self.min_inliers,
            cache_mb=self.cache_mb, chance_factor=self.chance_factor, min_list=self.min_list,
        )
        if self.ratio > 1:
            raise ValueError(f"Spatial: ratio must be in (0, 1], got {self.ratio!r}")
        from loupe.search.stages.itm import Timings

        self.timings: dict[str, Any] = Timings(0).finish()
        self.evidence: dict[str, Any] = {}

    def missing(self) -> list[str]:
        """The modules this configuration needs that are not installed (empty: it can run)."""
        from loupe.search.stages.itm import missing_modules

        needed = dict.fromkeys((*self.requires, *(("kornia",) if self.detector == "disk" else ())))
        return missing_modules(needed)

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Verified candidates first (by inliers, with boxes); the others follow in incoming order."""
        if query.image is None or not len(candidates):
            return candidates
        from loupe.search.stages.itm import Timings, phase

        timings = Timings(len(candidates))
        with phase(timings, "query_features"):
            query_feats = self.extract(query.image)
        cache = self.cache(store)

        def verify_one(id_: int) -> tuple[int, Box | None]:
            feats = self.features(store, id_, cache)
            return (0, None) if feats is None else self.verify(query_feats, feats)

        with phase(timings, "verify"), ThreadPoolExecutor(self._threads()) as pool:
            results = list(pool.map(verify_one, (int(i) for i in candidates.ids)))
        cache.evict()

        inliers = np.array([n for n, _ in results], dtype=np.int64)
        verified = self.decide(inliers)
        self.timings = timings.finish()
        # Primary key: verified first; then more inliers; ties keep incoming order.
        order = np.lexsort((np.arange(len(inliers)), -np.where(verified, inliers, 0), ~verified))
        scores = np.where(verified, inliers.astype(np.float32), candidates.scores)
        boxes = [results[i][1] if verified[i] else candidates.boxes[i] for i in order]
        return Candidates(candidates.ids[order], scores[order], boxes)

    def decide(self, inliers: np.ndarray) -> np.ndarray:
        """Which candidates of one list are verified, from their inlier counts (incoming order);
        what the decision rested on is left in `self.evidence`."""
        inliers = np.asarray(inliers, dtype=np.int64)
        if self.decision == "fixed":
            needed = self.min_inliers
            chance = None
        else:
            chance = float(MINIMAL_SAMPLE[self.model])
            if len(inliers) >= self.min_list:
                chance = max(chance, float(np.median(inliers)))
            needed = int(np.floor(self.chance_factor * chance)) + 1   # strictly above
        verified = inliers >= needed
        self.evidence = {
            "decision": self.decision, "chance_inliers": chance, "min_inliers_needed": needed,
            "verified": int(verified.sum()), "inliers": inliers.tolist(),
        }
        return verified

    # -- the steps, public so that tests, the benchmark and `precompute` can use them

    def extract(self, image: Image.Image) -> LocalFeatures:
        """Local features of an image, downscaled so that its longer side is at most max_side."""
        import cv2

        gray = image.convert("RGB" if self.detector == "disk" else "L")
        width, height = gray.size
        factor = max(width, height) / self.max_side
        if factor > 1:
            # Pillow's resize filters over the whole footprint: the downscale is anti-aliased.
            gray = gray.resize(
                (max(1, round(width / factor)), max(1, round(height / factor))),
                Image.Resampling.BILINEAR,
            )
        scale = np.array([width / gray.size[0], height / gray.size[1]], dtype=np.float32)
        if self.detector == "disk":
            points, desc = self._learned().extract(gray, self.max_keypoints)
            return LocalFeatures(points, desc, scale, np.array(gray.size, dtype=np.float32))
        pixels = np.asarray(gray)
        if self.detector == "sift":
            detector: Any = cv2.SIFT_create(nfeatures=self.max_keypoints)
        else:
            detector = cv2.ORB_create(nfeatures=self.max_keypoints)
        keypoints, descriptors = detector.detectAndCompute(pixels, None)
        width_d = 128 if self.detector == "sift" else 32
        if descriptors is None or not keypoints:
            return LocalFeatures(
                np.zeros((0, 2), np.float32), np.zeros((0, width_d), np.uint8), scale
            )
        points = np.array([kp.pt for kp in keypoints], dtype=np.float32)
        # OpenCV's SIFT values are whole numbers in 0..255: uint8 is lossless, a quarter of float32.
        return LocalFeatures(points, np.clip(descriptors, 0, 255).astype(np.uint8), scale)

    def verify(self, query: LocalFeatures, target: LocalFeatures) -> tuple[int, Box | None]:
        """Inlier count of the best geometric model from query to target, and the inliers' box."""
        import cv2

        needed = 4 if self.model == "homography" else 3
        if len(query) < needed or len(target) < needed:
            return 0, None
        if self.detector == "disk":
            pairs = self._learned().match(query.points, query.descriptors, _size(query),
                                          target.points, target.descriptors, _size(target))
        else:
            pairs = mutual_matches(query.descriptors, target.descriptors, self.detector, self.ratio)
        if len(pairs) < needed:
            return 0, None
        src = query.points[pairs[:, 0]]
        dst = target.points[pairs[:, 1]]
        if self.model == "homography":
            _, mask = cv2.findHomography(
                src, dst, cv2.USAC_MAGSAC, self.threshold, maxIters=10_000, confidence=0.999
            )
        else:
            _, mask = cv2.estimateAffine2D(
                src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=self.threshold,
                maxIters=10_000, confidence=0.999,
            )
        if mask is None:
            return 0, None
        inlier_points = dst[mask.ravel().astype(bool)]
        if len(inlier_points) < needed:
            return int(len(inlier_points)), None
        x0, y0 = inlier_points.min(axis=0) * target.scale
        x1, y1 = inlier_points.max(axis=0) * target.scale
        return int(len(inlier_points)), (float(x0), float(y0), float(x1), float(y1))

    def features(self, store: Store, id_: int, cache: FeatureCache) -> LocalFeatures | None:
        """A database image's features, from the cache or extracted now (None: unreadable)."""
        key = _cache_key(store, id_)
        feats = cache.load(key)
        if feats is not None:
            return feats
        try:
            image = store.load_image(id_)
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the query
            log.warning("spatial: image %s left unverified: %s", id_, exc)
            return None
        feats = self.extract(image)
        cache.save(key, feats)
        return feats

    def cache(self, store: Store) -> FeatureCache:
        config = f"{self.detector}-{self.max_keypoints}-{self.max_side}"
        if self.detector == "disk":
            from loupe.search.stages.learned_features import weights_identity

            config += f"-{weights_identity(self.weights)}"
        return FeatureCache(store.cache_dir(CACHE_NAME), config, self.cache_mb * 1024**2)

    def _threads(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def _learned(self) -> Any:
        from loupe.search.stages.learned_features import disk_lightglue

        return disk_lightglue(self.weights, self.device)


@dataclass
class SpatialORB(Spatial):
    """Spatial verification with ORB binary features: ~10x cheaper to extract, less robust."""

    name: ClassVar[str] = "spatial-orb"
    detector: str = "orb"


@dataclass
class SpatialLearned(Spatial):
    """Spatial verification with learned DISK features matched by LightGlue (needs kornia)."""

    name: ClassVar[str] = "spatial-learned"
    requires: ClassVar[tuple[str, ...]] = ("torch", "cv2", "kornia")
    detector: str = "disk"


def _size(feats: LocalFeatures) -> np.ndarray:
    if feats.size is not None:
        return feats.size
    return np.maximum(feats.points.max(axis=0) + 1, 1) if len(feats) else np.ones(2, np.float32)


def mutual_matches(
    query: np.ndarray, target: np.ndarray, detector: str = "sift", ratio: float = 0.8
) -> np.ndarray:
    """(n, 2) index pairs that pass the ratio test and are each other's nearest neighbours."""

    if detector == "orb":
        return _hamming_matches(query, target, ratio)
    return _rootsift_matches(query, target, ratio)


def _rootsift_matches(query: np.ndarray, target: np.ndarray, ratio: float) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return _rootsift_pairs(_rootsift(query), _rootsift(target), ratio)


def _rootsift_pairs(a: torch.Tensor, b: torch.Tensor, ratio: float) -> np.ndarray:
    import torch

    sim = a @ b.T                   # Hellinger kernel: larger = closer
    best2, nearest = sim.topk(min(2, sim.shape[1]), dim=1)
    dist = torch.sqrt((2.0 - 2.0 * best2).clamp_min(0.0))
    # With a single target descriptor there is no second neighbour to compare against.
    passes = dist[:, 0] < ratio * dist[:, 1] if dist.shape[1] == 2 else dist[:, 0] >= 0
    rows = torch.nonzero(passes).ravel()
    cols = nearest[rows, 0]
    # Mutual check only for the pairs that passed the ratio test: a column scan
    # of the whole matrix would cost as much as the product itself.
    mutual = sim[:, cols].argmax(dim=0) == rows
    return torch.stack([rows[mutual], cols[mutual]], dim=1).numpy()


def _rootsift(desc: np.ndarray) -> torch.Tensor:
    import torch

    # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise then square root, so the
    # dot product is the Hellinger kernel and every row has unit L2 norm.
    x = torch.from_numpy(desc.astype(np.float32))
    return torch.sqrt(x / x.sum(dim=1, keepdim=True).clamp_min(1e-12))


def _hamming_matches(query: np.ndarray, target: np.ndarray, ratio: float) -> np.ndarray:
    import cv2

    # OpenCV's brute-force Hamming matcher counts bits with SIMD popcount: several
    # times faster than any float formulation of the same distances.
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    forward = [m for m in matcher.knnMatch(query, target, k=2) if m]
    passing = [m[0] for m in forward if len(m) == 1 or m[0].distance < ratio * m[1].distance]
    if not passing:
        return np.zeros((0, 2), np.int64)
    rows = np.array([m.queryIdx for m in passing], dtype=np.int64)
    cols = np.array([m.trainIdx for m in passing], dtype=np.int64)
    best_row = np.full(len(rows), -1, dtype=np.int64)              # nearest query row of each
    for m in matcher.match(target[cols], query):
        best_row[m.queryIdx] = m.trainIdx
    mutual = best_row == rows
    return np.stack([rows[mutual], cols[mutual]], axis=1)


class FeatureCache:
    """Local features on disk, one file per image, evicting the least recently used over budget.

    Writes are atomic (temp file + rename), so concurrent readers and writers
    (threads or processes) see a whole file or none.
    """

    def __init__(self, base: Path, config: str, budget_bytes: int):
        self.base = Path(base)
        self.folder = self.base / config
        self.budget_bytes = budget_bytes
        self._wrote = False

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str) -> LocalFeatures | None:
        path = self.path(key)
        try:
            with np.load(path) as data:
                size = data["size"] if "size" in data.files else None
                feats = LocalFeatures(data["points"], data["descriptors"], data["scale"], size)
            os.utime(path)  # recently used: evicted last
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        return feats

    def save(self, key: str, feats: LocalFeatures) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        extra = {"size": feats.size} if feats.size is not None else {}
        with open(tmp, "wb") as fh:
            np.savez(fh, points=feats.points, descriptors=feats.descriptors, scale=feats.scale,
                     **extra)
        os.replace(tmp, path)
        self._wrote = True

    def evict(self, force: bool = False) -> int:
        """Delete the least recently used files until the whole cache fits its budget."""
        if not (self._wrote or force):
            return 0
        self._wrote = False
        return evict_lru(self.base, "*.npz", self.budget_bytes)


def _cache_key(store: Store, id_: int) -> str:
    # Size and mtime in the key: an image replaced under the same id is extracted again.
    try:
        stat = store.image_path(id_).stat()
    except (OSError, KeyError, ValueError):
        return f"{id_}"
    return f"{id_}-{stat.st_size}-{stat.st_mtime_ns}"


def precompute(
    store: Store,
    ids: Iterable[int],
    progress: Callable[[int], None] | None = None,
    reranker: Spatial | None = None,
) -> dict[str, int]:
    """Extract and cache the local features of `ids` (what `loupe index --local-features` runs).

    `progress`, if given, is called with the number of images finished since
    its last call (e.g. `lambda n: bar.advance(task, n)`). Returns counts of
    images extracted, already cached, unreadable, and evicted by the budget.
    """
    spatial = reranker or Spatial()
    cache = spatial.cache(store)
    counts = {"extracted": 0, "cached": 0, "failed": 0, "evicted": 0}

    def one(id_: int) -> str:
        if cache.path(_cache_key(store, id_)).exists():
            return "cached"
        return "extracted" if spatial.features(store, id_, cache) is not None else "failed"

    pending = [int(i) for i in ids]
    with ThreadPoolExecutor(spatial._threads()) as pool:
        # In chunks, so that a large library neither queues a million futures
        # nor overshoots the cache budget by more than one chunk.
        for start in range(0, len(pending), _PRECOMPUTE_CHUNK):
            chunk = pending[start:start + _PRECOMPUTE_CHUNK]
            for outcome in pool.map(one, chunk):
                counts[outcome] += 1
                if progress is not None:
                    progress(1)
            counts["evicted"] += cache.evict()
    return counts
