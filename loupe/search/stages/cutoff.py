"""Relevance cut-off: a calibrated confidence per result, and "no confident match".

A raw cosine means different things for different queries and models. The
calibrated score of a result d for the query q is

    z(q, d) = (s(q, d) - mu_q) / sigma_q

with mu_q and sigma_q the mean and standard deviation of the query's scores
against a fixed random sample of the gallery (`sample` ids drawn with `seed`;
the query's own id, for a query by an indexed image, is left out): `side="query"`,
shared/methods.md's definition. Results with z below `threshold` are dropped, so
a query whose best z is below it returns nothing, and a result whose z clears it
is never dropped.

`side="gallery"` calibrates from the result's side instead (Z-norm in speaker
verification): z(q, d) = (s(q, d) - mu_d) / sigma_d with mu_d and sigma_d over the
scores d gets from a bank of typical queries (`hubness.QueryBank`: for an image
query the same gallery sample, used as queries, without d itself; for a text query
generic captions, `text_bank`, which the library makes once per model). "How
unusually close is this query to d, for d" instead of "how unusually close is d,
for this query". `side="both"` averages the two (S-norm). The default is the
gallery side: on the labelled photos of benchmarks/answers.py it separates
queries with and without a relevant result far better than the query side
(AUC 0.966 against 0.459: a dense cluster of relevant images inflates sigma_q,
and sparse or unusual queries get a heavy upper tail).

s is the cosine q . d recomputed from the stored vectors, whatever the stages
before did to the scores (their order is kept). Where spatial verification ran
just before, a result it verified is kept whatever its z: the geometry is
evidence of its own. `Spatial` marks what it verified with a box and its inlier
count as the score (above any cosine); `inliers` > 0 asks for at least that many
on top of its own decision.

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
SIDES = ("query", "gallery", "both")


@dataclass
class Cutoff(Reranker):
    """Calibrated confidence: z of each result's cosine against a gallery sample; drops z < threshold."""

    name: ClassVar[str] = "cutoff"
    may_drop: ClassVar[bool] = True
    depth: int = 100
    threshold: float = 2.0
    sample: int = 1000            # gallery vectors the query's mu and sigma are measured on
    seed: int = 0
    statistic: str = "mean"       # "median": median and 1.4826 * MAD instead of mean and std
    inliers: int = 0              # a result spatial verification confirmed (with at least this
                                  # many inliers, when > 0) stays whatever its z
    keep: bool = False            # label only, drop nothing (show everything)
    side: str = "gallery"         # "query": methods.md's z over the query's scores; "gallery":
                                  # z of s against the result's scores from a bank of typical
                                  # queries; "both": the mean of the two
    text_bank: Any = dataclasses.field(default=None, repr=False)   # QueryBank, text queries

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, sample=self.sample)
        if self.inliers < 0:
            raise ValueError(f"Cutoff: inliers must be >= 0, got {self.inliers!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"Cutoff: statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.side not in SIDES:
            raise ValueError(f"Cutoff: side must be one of {SIDES}, got {self.side!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """The candidates that clear the threshold (all with `keep`), in incoming order,
        each with its calibrated score as `confidence`."""
        if not len(candidates):
            return with_columns(candidates, confidence=np.zeros(0, np.float32))
        z = self.calibrate(query, candidates, store)
        keep = z >= self.threshold
        keep |= verified(candidates, self.inliers)
        if query.text_matches:   # the words matched (full-text channel): evidence of its own
            keep |= np.isin(candidates.ids, np.fromiter(query.text_matches, np.int64))
        if self.keep:
            keep[:] = True
        rows = np.flatnonzero(keep)
        return with_columns(take(candidates, rows), confidence=z[rows])

    def calibrate(self, query: Query, candidates: Candidates, store: Store) -> np.ndarray:
        """z of each candidate (float32, in the candidates' order)."""
        q = np.asarray(query.vector, np.float32).reshape(-1)
        vecs = store.vectors(candidates.ids)
        s = (vecs @ q).astype(np.float64)
        z = []
        if self.side in ("query", "both"):
            mu, sigma = self.moments(q, store, query.exclude_ids)
            z.append((s - mu) / sigma)
        if self.side in ("gallery", "both"):
            bank = self.bank(query, store)
            z.append(gallery_z(s, candidates.ids, vecs, bank.vectors, bank.ids, self.statistic,
                               query.exclude_ids))
        return np.mean(z, axis=0).astype(np.float32)

    def bank(self, query: Query, store: Store) -> Any:
        """The typical queries of the gallery side: captions for a text query (`text_bank`),
        the gallery sample for any other."""
        from loupe.search.stages.hubness import image_bank, is_text_query

        if is_text_query(query):
            if self.text_bank is None:
                raise ValueError("cutoff: side=gallery for a text query needs a text query bank "
                                 "(hubness.text_bank(encoder.encode_text))")
            return self.text_bank
        return image_bank(store, self.sample, self.seed, hubs=False)

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


def gallery_z(s: np.ndarray, ids: np.ndarray, vectors: np.ndarray, bank: np.ndarray,
              bank_ids: np.ndarray, statistic: str = "mean",
              exclude: frozenset[int] | set[int] = frozenset()) -> np.ndarray:
    """(s_d - mu_d) / sigma_d per result d, its moments over the scores the bank's queries give
    it (a bank query that is d itself, or an excluded id such as the query image, left out)."""
    sims = (np.asarray(vectors, np.float32) @ np.asarray(bank, np.float32).T).astype(np.float64)
    bank_ids = np.asarray(bank_ids, np.int64)
    own = np.asarray(ids, np.int64)[:, None] == bank_ids[None, :]
    if exclude:
        own |= np.isin(bank_ids, np.fromiter(exclude, np.int64))[None, :]
    s = np.asarray(s, np.float64)
    if statistic == "mean":                 # all rows at once: the same as `moments` per row
        keep = ~own
        count = keep.sum(axis=1)
        mu = np.where(keep, sims, 0.0).sum(axis=1) / count
        var = np.where(keep, (sims - mu[:, None]) ** 2, 0.0).sum(axis=1) / count
        return (s - mu) / np.maximum(np.sqrt(var), 1e-6)
    out = np.empty(len(sims))
    for row in range(len(sims)):
        mu_r, sigma_r = moments(sims[row][~own[row]], statistic)
        out[row] = (s[row] - mu_r) / sigma_r
    return out


def verified(candidates: Candidates, inliers: int = 0) -> np.ndarray:
    """Which candidates spatial verification confirmed (with at least `inliers`): `Spatial`
    gives a verified candidate a box and its inlier count as score (above any cosine)."""
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


# Per-candidate columns that answer stages add (calibrated confidence, group sizes and
# members): fields of `Candidates`, so `take`, `head` and the pipeline's merge carry them.
COLUMNS = ("confidence", "group_size", "members")


def columns_of(candidates: Candidates) -> dict[str, Any]:
    """The answer columns a candidate list carries."""
    return {k: v for k in COLUMNS if (v := getattr(candidates, k, None)) is not None}


def with_columns(candidates: Candidates, **columns: Any) -> Candidates:
    """The candidates with per-candidate answer columns set (`confidence`, `group_size`,
    `members`), keeping the ones they already carry."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown answer columns {sorted(unknown)}")
    merged = {**columns_of(candidates), **columns}
    for key, value in merged.items():
        if len(value) != len(candidates):
            raise ValueError(f"{key}: {len(value)} values for {len(candidates)} candidates")
    return dataclasses.replace(candidates, boxes=list(candidates.boxes), **merged)


def take(candidates: Candidates, rows: np.ndarray) -> Candidates:
    """`candidates.take(rows)` (kept for the stages written before the columns were fields)."""
    return candidates.take(np.asarray(rows, dtype=np.int64))
