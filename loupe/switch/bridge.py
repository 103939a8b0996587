"""A linear bridge from a new embedding space into an old one, fitted on contents embedded by both.

    bridge = fit(X_new, X_old)                 # rows: the same images in both spaces
    q_old = bridge.to_old(q_new)               # a new-model query, searchable against old vectors
    s = bridge.calibrate(q_new, raw_old_scores)  # bridged scores on the new space's scale

Candidates (``../shared/methods.md``, "Model upgrades without re-embedding everything"):

- ``procrustes``: the orthogonal W minimising ||X_new W - X_old||_F, W = U V^T from the SVD of
  X_new^T X_old (semi-orthogonal when the dimensions differ). Rotations keep angles, so one
  space's geometry is carried over whole; with few pairs it cannot overfit.
- ``lstsq``: the unconstrained least-squares W (ridge-regularised, so a sample smaller than the
  dimension stays defined). It can fit a non-rigid relation, and overfit a small sample.
- ``text-procrustes``: Procrustes on the two text towers' vectors of a fixed caption bank. It needs
  no image embedded by the new model, so it is ready at once; the spaces' image-text geometry
  must agree for it to transfer.

`fit` scores each candidate on held-out pairs (the mean reciprocal rank of a held-out image's
own old vector among the held-out old vectors, ties broken by mean cosine) and refits the best
on the whole sample: the method kept is the one that measured best, and it is recorded.

Scores through a bridge are not on the new space's scale (a mapped query is not a new-model
vector). `calibrate` moves them there per query: on the calibration sample S (contents in both
spaces) the query has a bridged score and a new-space score for every content; the least-squares
line from the first to the second (slope kept positive) turns any bridged score into the
new-space score it predicts, E[s_new | s_bridged]. A bridge that agrees poorly with the new space
for this query gets a flat line: its results are pulled towards the query's typical score and
cannot outrank confident new-space matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("procrustes", "lstsq", "text-procrustes")
HOLDOUT_SHARE = 0.25
CALIBRATION_MAX = 512      # rows of S kept for per-query calibration
MIN_SLOPE = 1e-3           # calibration: a bridge no better than chance still keeps its order
RIDGE = 1e-3               # lstsq regulariser, relative to the mean squared norm of X_new


def procrustes(x_new: np.ndarray, x_old: np.ndarray) -> np.ndarray:
    """W (d_new x d_old) with orthonormal rows or columns minimising ||x_new W - x_old||_F."""
    u, _, vt = np.linalg.svd(np.asarray(x_new, np.float64).T @ np.asarray(x_old, np.float64),
                             full_matrices=False)
    return (u @ vt).astype(np.float32)


def least_squares(x_new: np.ndarray, x_old: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """W minimising ||x_new W - x_old||^2 + ridge * n * ||W||^2 (normal equations)."""
    a = np.asarray(x_new, np.float64)
    b = np.asarray(x_old, np.float64)
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    return np.linalg.solve(gram, a.T @ b).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def match_score(mapped: np.ndarray, x_old: np.ndarray) -> tuple[float, float]:
    """(mean reciprocal rank of each row's own old vector among all rows, mean cosine)."""
    mapped, x_old = _unit(mapped), _unit(x_old)
    sims = mapped @ x_old.T
    own = np.diag(sims)
    ranks = 1 + (sims > own[:, None]).sum(axis=1)
    return float(np.mean(1.0 / ranks)), float(np.mean(own))


@dataclass
class Bridge:
    method: str
    w: np.ndarray                 # d_new x d_old: x_old ~ unit(x_new @ w)
    cal_new: np.ndarray           # S in the new space (rows: contents)
    cal_old: np.ndarray           # the same contents in the old space
    n: int                        # pairs the map was fitted on
    holdout: dict[str, dict[str, float]] = field(default_factory=dict)
    back: np.ndarray = field(init=False, repr=False)   # old -> new (pseudo-inverse)

    def __post_init__(self) -> None:
        self.w = np.asarray(self.w, np.float32)
        self.back = np.linalg.pinv(self.w.astype(np.float64)).astype(np.float32)

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.w.shape[0]), int(self.w.shape[1])

    def to_old(self, q_new: np.ndarray) -> np.ndarray:
        """A new-space vector (or rows) mapped into the old space, unit length."""
        return _unit(np.asarray(q_new, np.float32) @ self.w)

    def to_new(self, x_old: np.ndarray) -> np.ndarray:
        """Old-space rows mapped into the new space (the inverse map), unit length."""
        return _unit(np.asarray(x_old, np.float32) @ self.back)

    def calibrate(self, q_new: np.ndarray, bridged: np.ndarray) -> np.ndarray:
        """Bridged scores of one query (q_new's mapped vector against old vectors) on the new
        space's scale for that query: the least-squares line from the query's bridged scores
        on the calibration sample to its new-space scores on the same contents (see the
        module's docstring). The slope is kept positive, so the bridged order never flips."""
        q = np.asarray(q_new, np.float32).reshape(-1)
        s_new = (self.cal_new @ q).astype(np.float64)
        s_bri = (self.cal_old @ self.to_old(q)).astype(np.float64)
        sd_bri, sd_new = float(s_bri.std()), float(s_new.std())
        if sd_bri < 1e-9:   # a degenerate sample: shift only
            return (np.asarray(bridged, np.float64) - s_bri.mean() + s_new.mean()).astype(np.float32)
        slope = float(np.mean((s_bri - s_bri.mean()) * (s_new - s_new.mean()))) / sd_bri ** 2
        slope = max(slope, MIN_SLOPE * max(sd_new, 1e-9) / sd_bri)
        return (s_new.mean() + slope * (np.asarray(bridged, np.float64) - s_bri.mean())).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "n": self.n, "dims": list(self.dims),
                "calibration": len(self.cal_new), "holdout": self.holdout}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "cal_new": self.cal_new, "cal_old": self.cal_old}


def fit(x_new: np.ndarray, x_old: np.ndarray, *,
        text_pairs: tuple[np.ndarray, np.ndarray] | None = None,
        methods: tuple[str, ...] = METHODS, seed: int = 0) -> Bridge:
    """Fit every candidate on 75% of the pairs, score them on the other 25%, refit the best
    on all pairs. `text_pairs`: (new text vectors, old text vectors) of one caption bank, for
    the text-only candidate (which never sees the image pairs, so it is scored on all of them).
    """
    x_new = _unit(x_new)
    x_old = _unit(x_old)
    if len(x_new) != len(x_old) or len(x_new) < 2:
        raise ValueError(f"a bridge needs at least 2 pairs of the same contents, got "
                         f"{len(x_new)} and {len(x_old)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_new))
    n_test = max(1, int(round(HOLDOUT_SHARE * len(x_new))))
    test, train = order[:n_test], order[n_test:]
    fitters: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "procrustes": procrustes, "lstsq": least_squares}
    scores: dict[str, dict[str, float]] = {}
    for method in methods:
        if method == "text-procrustes":
            if text_pairs is None:
                continue
            w = procrustes(*text_pairs)
            mrr, cos = match_score(x_new[test] @ w, x_old[test])
        else:
            w = fitters[method](x_new[train], x_old[train])
            mrr, cos = match_score(x_new[test] @ w, x_old[test])
        scores[method] = {"mrr": round(mrr, 4), "cosine": round(cos, 4)}
    best = max(scores, key=lambda m: (scores[m]["mrr"], scores[m]["cosine"]))
    w = procrustes(*text_pairs) if best == "text-procrustes" else fitters[best](x_new, x_old)
    cal = order[:CALIBRATION_MAX]
    return Bridge(best, w, x_new[cal], x_old[cal], n=len(x_new), holdout=scores)


def from_arrays(summary: dict[str, Any], arrays: Any) -> Bridge:
    return Bridge(summary["method"], arrays["w"], arrays["cal_new"], arrays["cal_old"],
                  n=int(summary["n"]), holdout=summary.get("holdout", {}))
