"""Relevance cut-off: a calibrated confidence per result, and "no confident match".

A raw cosine means different things for different queries and models. The
calibrated score of a result d for the query q is

    z(q, d) = (s(q, d) - mu_q) / sigma_q

with mu_q and sigma_q the mean and standard deviation of the query's scores
against a fixed random sample of the gallery (`sample` ids drawn with `seed`;
the query's own id, for a query by an indexed image, is left out). Results
with z below `threshold` are dropped, so a query whose best z is below it
returns nothing, and a result whose z clears it is never dropped.

s is the cosine q . d recomputed from the stored vectors, whatever the stages
before did to the scores (their order is kept). Where spatial verification ran
just before, a result it verified (a box, and a score of at least `inliers`,
which no cosine reaches) is kept whatever its z: the geometry is evidence of
its own.

`keep=True` drops nothing and only labels: what "show everything" (`--all`)
asks for. The calibrated scores travel as the candidates' `confidence`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive

STATISTICS = ("mean", "median")


@dataclass
class Cutoff(Reranker):
    """Calibrated confidence z = (s - mu_q) / sigma_q over a gallery sample; drops z < threshold."""

    name: ClassVar[str] = "cutoff"
    may_drop: ClassVar[bool] = True
    depth: int = 100
    threshold: float = 4.0
    sample: int = 1000            # gallery vectors the query's mu and sigma are measured on
    seed: int = 0
    statistic: str = "mean"       # "median": median and 1.4826 * MAD instead of mean and std
    inliers: int = 15             # a spatially verified result with this many inliers stays
    keep: bool = False            # label only, drop nothing (show everything)

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, sample=self.sample, inliers=self.inliers)
        if self.statistic not in STATISTICS:
            raise ValueError(f"Cutoff: statistic must be one of {STATISTICS}, got {self.statistic!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """The candidates that clear the threshold (all with `keep`), in incoming order,
        each with its calibrated score as `confidence`."""
        if not len(candidates):
            return with_columns(candidates, confidence=np.zeros(0, np.float32))
        z = self.calibrate(query, candidates, store)
        keep = z >= self.threshold
        keep |= verified(candidates, self.inliers)
        if self.keep:
            keep[:] = True
        rows = np.flatnonzero(keep)
        return with_columns(take(candidates, rows), confidence=z[rows])

    def calibrate(self, query: Query, candidates: Candidates, store: Store) -> np.ndarray:
        """z of each candidate (float32, in the candidates' order)."""
        q = np.asarray(query.vector, np.float32).reshape(-1)
        mu, sigma = self.moments(q, store, query.exclude_ids)
        s = store.vectors(candidates.ids) @ q
        return ((s - mu) / sigma).astype(np.float32)

    def moments(self, q: np.ndarray, store: Store, exclude: frozenset[int] | set[int] = frozenset()
                ) -> tuple[float, float]:
        """mu_q and sigma_q of the query's scores against the gallery sample."""
        ids = sample_ids(store, self.sample, self.seed)
        if exclude:
            ids = ids[~np.isin(ids, np.fromiter(exclude, np.int64))]
        if len(ids) < 2:
            raise ValueError("Cutoff: the gallery sample needs at least 2 images to calibrate")
        scores = (store.vectors(ids) @ q).astype(np.float64)
        return moments(scores, self.statistic)


def moments(scores: np.ndarray, statistic: str = "mean") -> tuple[float, float]:
    """Location and scale of a score sample: mean and (population) standard deviation, or
    median and 1.4826 * median absolute deviation (the normal-consistent MAD)."""
    scores = np.asarray(scores, np.float64)
    if statistic == "median":
        mu = float(np.median(scores))
        sigma = 1.4826 * float(np.median(np.abs(scores - mu)))
    else:
        mu, sigma = float(scores.mean()), float(scores.std())
    return mu, max(sigma, 1e-6)


def verified(candidates: Candidates, inliers: int) -> np.ndarray:
    """Which candidates spatial verification confirmed: `Spatial` gives a verified candidate
    a box and its inlier count as score (>= its min_inliers >= 1, above any cosine)."""
    boxes = np.array([b is not None for b in candidates.boxes], dtype=bool)
    return boxes & (candidates.scores >= inliers) & (candidates.scores > 1.0 + 1e-6)


def sample_ids(store: Store, n: int, seed: int = 0) -> np.ndarray:
    """A fixed random sample of the gallery's ids: the same `n` ids for the same gallery and seed."""
    ids = np.sort(gallery_ids(store))
    if len(ids) <= n:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))


def gallery_ids(store: Any) -> np.ndarray:
    """Every searchable id of a store.

    `ids()` is what a store should answer; until the `Store` protocol has it, the two
    stores of the project are read through their public parts: a library's
    `CatalogStore.space_vectors.ids()`, an evaluation `MemoryStore.index.ids`."""
    for get in (
        lambda: store.ids(),
        lambda: store.space_vectors.ids(),
        lambda: store.index.ids,
        lambda: store.all_vectors()[0],
    ):
        try:
            ids = get()
        except AttributeError:
            continue
        return np.asarray(ids() if callable(ids) else ids, dtype=np.int64)
    raise TypeError(f"{type(store).__name__} cannot list its ids (give it an ids() method)")


# Per-candidate columns that answer stages add (calibrated confidence, group sizes).
COLUMNS = ("confidence", "group_size")


def columns_of(candidates: Candidates) -> dict[str, np.ndarray]:
    """The answer columns a candidate list carries."""
    return {k: v for k in COLUMNS if (v := getattr(candidates, k, None)) is not None}


def with_columns(candidates: Candidates, **columns: np.ndarray) -> Candidates:
    """The candidates with per-candidate answer columns set (`confidence`, `group_size`),
    keeping the ones they already carry.

    Where `Candidates` declares a column as a field it is passed to it (so `take` and
    `head` carry it); otherwise it is set as an attribute of the new object."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown answer columns {sorted(unknown)}")
    merged = {**columns_of(candidates), **columns}
    for key, value in merged.items():
        if len(value) != len(candidates):
            raise ValueError(f"{key}: {len(value)} values for {len(candidates)} candidates")
    fields = {f.name for f in dataclasses.fields(Candidates)}
    out = Candidates(candidates.ids, candidates.scores, list(candidates.boxes), candidates.groups,
                     **{k: v for k, v in merged.items() if k in fields})
    for key, value in merged.items():
        if key not in fields:
            setattr(out, key, np.asarray(value))
    return out


def take(candidates: Candidates, rows: np.ndarray) -> Candidates:
    """`candidates.take(rows)` that keeps the answer columns too."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = columns_of(candidates)
    return with_columns(candidates.take(rows), **{k: np.asarray(v)[rows] for k, v in cols.items()})
