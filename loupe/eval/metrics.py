"""Retrieval metrics as plain numpy functions over rankings and ground truth.

Nothing here imports the rest of Loupe: a ranking is an array of gallery
indices (best first), ground truth is arrays of gallery indices or boolean
relevance, and every function returns fractions in [0, 1].

Tie convention where a function ranks scores itself: higher score first, then
lower gallery index first (what a stable sort of -score gives). Functions that
follow an official script with a different tie rule say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------
# Ranking helpers
# --------------------------------------------------------------------------


def rank_all(scores: np.ndarray) -> np.ndarray:
    """Full ranking of each row of `scores` (higher first, ties by lower index)."""
    scores = np.atleast_2d(np.asarray(scores))
    return np.argsort(-scores, axis=1, kind="stable")


def rank_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """The first `k` of `rank_all(scores)` per row, without sorting whole rows.

    Ties at the cut are resolved exactly like the full sort: every item scoring
    at least the k-th best score is kept before the final ordering.
    """
    scores = np.atleast_2d(np.asarray(scores))
    n = scores.shape[1]
    k = min(k, n)
    if k >= n or n <= 4096:
        return rank_all(scores)[:, :k]
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i, row in enumerate(scores):
        kth = np.partition(row, n - k)[n - k]
        cand = np.flatnonzero(row >= kth)
        order = np.lexsort((cand, -row[cand]))
        out[i] = cand[order[:k]]
    return out


def first_positive_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked positive in each row; -1 where a row has none.

    `scores` [nq, ng] and boolean `positives` [nq, ng]. Equivalent to finding
    the first positive in `rank_all(scores)` but O(ng) per row, which is what
    image-text recall over a 25k x 5k matrix needs.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positives = np.atleast_2d(np.asarray(positives, dtype=bool))
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    has = positives.any(axis=1)
    masked = np.where(positives, scores, -np.inf)
    best = masked.max(axis=1)
    # the lowest index among the positives that reach the best score
    best_idx = np.argmax(positives & (masked == best[:, None]), axis=1)
    idx = np.arange(scores.shape[1])
    above = (scores > best[:, None]).sum(axis=1)
    tied_before = ((scores == best[:, None]) & (idx[None, :] < best_idx[:, None])).sum(axis=1)
    return np.where(has, above + tied_before, -1).astype(np.int64)


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose first positive rank (0-based; -1 = none) is below k."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return {k: float("nan") for k in ks}
    found = ranks >= 0
    return {k: float(np.mean(found & (ranks < k))) for k in ks}


def relevance(rankings: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean [nq, depth]: whether each ranked item is a positive of its query."""
    rankings = np.atleast_2d(np.asarray(rankings))
    if len(positives) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but ground truth for {len(positives)} queries")
    return np.stack([np.isin(r, np.asarray(p)) for r, p in zip(rankings, positives, strict=True)]) \
        if len(rankings) else np.zeros((0, rankings.shape[1]), bool)


# --------------------------------------------------------------------------
# Ranked-list metrics over boolean relevance [nq, depth]
# --------------------------------------------------------------------------


def _rel2d(rel: np.ndarray, n_rel: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    rel = np.atleast_2d(np.asarray(rel, dtype=bool))
    n_rel = np.broadcast_to(np.asarray(n_rel, dtype=np.float64), (rel.shape[0],))
    return rel, n_rel


def _precision_at_hits(rel: np.ndarray) -> np.ndarray:
    """P(i) * rel(i) for every position i (1-based precision)."""
    hits = np.cumsum(rel, axis=1)
    return np.where(rel, hits / np.arange(1, rel.shape[1] + 1), 0.0)


def average_precision(rel: np.ndarray, n_rel: np.ndarray | int) -> np.ndarray:
    """Non-interpolated AP: sum_i P(i) rel(i) / n_rel.

    `n_rel` counts all positives of the query, so positives missing from a
    truncated ranking count as retrieved at infinity. NaN where n_rel == 0.
    """
    rel, n_rel = _rel2d(rel, n_rel)
    total = _precision_at_hits(rel).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / n_rel, np.nan)


def ap_at_k(rel: np.ndarray, n_rel: np.ndarray | int, k: int) -> np.ndarray:
    """AP@k = 1/min(n_rel, k) * sum_{i<=k} P(i) rel(i).

    The normalisation of GLDv2 (tensorflow/models delf metrics.py), CIRCO
    (miccunifi/CIRCO evaluation.py) and INQUIRE. NaN where n_rel == 0.
    """
    rel, n_rel = _rel2d(rel, n_rel)
    total = _precision_at_hits(rel[:, :k]).sum(axis=1)
    denom = np.minimum(n_rel, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / denom, np.nan)


def recall_at_k(rel: np.ndarray, n_rel: np.ndarray | int, k: int) -> np.ndarray:
    """|positives in the top k| / n_rel. NaN where n_rel == 0."""
    rel, n_rel = _rel2d(rel, n_rel)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, rel[:, :k].sum(axis=1) / n_rel, np.nan)


def hit_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """1.0 when a positive is in the top k (the recall of CLIP-style papers)."""
    rel = np.atleast_2d(np.asarray(rel, dtype=bool))
    return rel[:, :k].any(axis=1).astype(np.float64)


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """|positives in the top k| / k (a ranking shorter than k counts as padded with misses)."""
    rel = np.atleast_2d(np.asarray(rel, dtype=bool))
    return rel[:, :k].sum(axis=1) / float(k)


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def ndcg_at_k(rel: np.ndarray, n_rel: np.ndarray | int, k: int) -> np.ndarray:
    """Binary nDCG@k; the ideal list holds min(n_rel, k) positives. NaN where n_rel == 0."""
    rel, n_rel = _rel2d(rel, n_rel)
    disc = _discounts(k)
    top = rel[:, :k]
    dcg = (top * disc[: top.shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n_rel, k).astype(np.int64)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / idcg, np.nan)


def reciprocal_rank(rel: np.ndarray) -> np.ndarray:
    """1 / (1-based rank of the first positive); 0 when none is ranked."""
    rel = np.atleast_2d(np.asarray(rel, dtype=bool))
    has = rel.any(axis=1)
    first = np.argmax(rel, axis=1)
    return np.where(has, 1.0 / (first + 1), 0.0)


def precision_recall_points(rel: np.ndarray, n_rel: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each position of one ranked list (for PR plots)."""
    rel = np.asarray(rel, dtype=bool).ravel()
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    recall = hits / max(n_rel, 1)
    return precision, recall


def interpolated_pr(rels: Sequence[np.ndarray], n_rels: Sequence[int],
                    levels: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Mean interpolated precision at `levels` recall points over queries with positives."""
    grid = np.linspace(0.0, 1.0, levels)
    curves = []
    for rel, n in zip(rels, n_rels, strict=True):
        if n <= 0:
            continue
        precision, recall = precision_recall_points(rel, n)
        # interpolated precision: best precision at any recall >= r
        best = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        idx = np.searchsorted(recall, grid, side="left")
        curves.append(np.where(idx < len(best), best[np.minimum(idx, len(best) - 1)], 0.0))
    if not curves:
        return grid, np.zeros_like(grid)
    return grid, np.mean(curves, axis=0)


# --------------------------------------------------------------------------
# Score-aware AP and nDCG (INQUIRE uses sklearn, which treats tied scores
# as one threshold)
# --------------------------------------------------------------------------


def _tie_groups(scores_sorted: np.ndarray) -> np.ndarray:
    """Index one past the end of each run of equal scores in a descending array."""
    s = np.asarray(scores_sorted, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(np.diff(s) != 0) + 1
    return np.concatenate([change, [s.size]])


def ap_at_k_scored(rel: np.ndarray, scores: np.ndarray, n_rel: int, k: int) -> float:
    """INQUIRE's AP@k: sklearn average_precision over the top k, times hits/min(n_rel, k).

    `rel` and `scores` describe the retrieved list in ranked order (scores
    descending). Items with equal scores form one threshold: every positive of
    a tied group gets the precision measured after the whole group. That is
    sklearn.metrics.average_precision_score, re-derived (sklearn is not a
    dependency). 0 when no positive is in the top k; NaN when n_rel == 0.
    """
    rel = np.asarray(rel, dtype=bool)[:k]
    scores = np.asarray(scores, dtype=np.float64)[:k]
    if n_rel <= 0:
        return float("nan")
    if np.any(np.diff(scores) > 0):
        raise ValueError("scores must be in descending order (the ranked list)")
    hits = int(rel.sum())
    if hits == 0:
        return 0.0
    ends = _tie_groups(scores)
    tp = np.cumsum(rel)[ends - 1]
    precision = tp / ends
    recall = tp / hits
    unnormalised = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return unnormalised * hits / min(n_rel, k)


def ndcg_at_k_scored(rel: np.ndarray, scores: np.ndarray, n_rel: int, k: int) -> float:
    """Binary nDCG@k with tied scores sharing their average gain (sklearn's default).

    The ideal list holds min(n_rel, k) positives: positives never retrieved
    count, as in INQUIRE's ndcg_at_k which appends them at the bottom.
    """
    rel = np.asarray(rel, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if n_rel <= 0:
        return float("nan")
    if np.any(np.diff(scores) > 0):
        raise ValueError("scores must be in descending order (the ranked list)")
    # INQUIRE appends the positives it never retrieved below everything else
    missing = max(int(n_rel - rel.sum()), 0)
    rel = np.concatenate([rel, np.ones(missing)])
    low = (scores.min() if scores.size else 0.0) - 1.0
    scores = np.concatenate([scores, np.full(missing, low)])
    disc = np.zeros(max(len(rel), 1))
    disc[: min(k, len(rel))] = _discounts(min(k, len(rel)))
    dcg, start = 0.0, 0
    for end in _tie_groups(scores):
        dcg += rel[start:end].mean() * disc[start:end].sum()
        start = end
    idcg = float(_discounts(k)[: min(n_rel, k)].sum())
    return dcg / idcg


# --------------------------------------------------------------------------
# Revisited Oxford / Paris (filipradenovic/revisitop python/evaluate.py)
# --------------------------------------------------------------------------


def revisitop_query(ranking: np.ndarray, ok: np.ndarray, junk: np.ndarray,
                    kappas: Sequence[int] = (1, 5, 10)) -> tuple[float, np.ndarray]:
    """AP and mP@k terms of one query under the revisited protocol.

    Junk images are dropped from the ranking (positives after them move up),
    AP is the trapezoid rule of the official compute_ap over all `ok`
    positives (a truncated ranking loses the missing ones), and precision@k
    uses k_q = min(position of the last ranked positive, k). NaN for a query
    without positives (the official code leaves it out of the mean). A query
    with positives none of which are ranked scores 0 (the official code would
    fail on it).
    """
    ok = np.asarray(ok).ravel()
    junk = np.asarray(junk).ravel()
    kappas = list(kappas)
    if ok.size == 0:
        return float("nan"), np.full(len(kappas), np.nan)
    ranking = np.asarray(ranking).ravel()
    pos = np.flatnonzero(np.isin(ranking, ok))
    junk_pos = np.flatnonzero(np.isin(ranking, junk))
    # a positive moves up by the number of junk images strictly before it
    pos = pos - np.searchsorted(junk_pos, pos, side="left")
    if pos.size == 0:
        return 0.0, np.zeros(len(kappas))
    j = np.arange(pos.size, dtype=np.float64)
    r = pos.astype(np.float64)
    p0 = np.divide(j, r, out=np.ones_like(j), where=r > 0)
    p1 = (j + 1) / (r + 1)
    ap = float(np.sum((p0 + p1) / 2.0) / ok.size)
    pos1 = pos + 1
    prs = np.empty(len(kappas))
    for i, kappa in enumerate(kappas):
        kq = min(int(pos1.max()), kappa)
        prs[i] = np.count_nonzero(pos1 <= kq) / kq
    return ap, prs


def revisitop_map(rankings: Sequence[np.ndarray] | np.ndarray, gnd: Sequence[Mapping[str, np.ndarray]],
                  kappas: Sequence[int] = (1, 5, 10)) -> dict[str, object]:
    """mAP and mP@k over queries with positives; `gnd[i]` has 'ok' and optional 'junk'.

    `rankings` is one array of gallery indices per query (rows of an [nq, n]
    array, or a list of possibly truncated arrays). Note the official script
    takes the transposed [n, nq] array.
    """
    if len(rankings) != len(gnd):
        raise ValueError(f"{len(rankings)} rankings but {len(gnd)} ground-truth entries")
    aps = np.empty(len(gnd))
    prs = np.empty((len(gnd), len(kappas)))
    for i, (ranking, g) in enumerate(zip(rankings, gnd, strict=True)):
        aps[i], prs[i] = revisitop_query(ranking, g["ok"], g.get("junk", np.empty(0, np.int64)), kappas)
    valid = ~np.isnan(aps)
    if not valid.any():
        return {"map": float("nan"), "aps": aps, "mpr": np.full(len(kappas), np.nan), "prs": prs}
    return {"map": float(aps[valid].mean()), "aps": aps, "mpr": prs[valid].mean(axis=0), "prs": prs}


def revisitop_protocol(gnd_entry: Mapping[str, np.ndarray], protocol: str) -> dict[str, np.ndarray]:
    """Positives and ignored images of one query for protocol 'easy', 'medium' or 'hard'."""
    empty = np.empty(0, np.int64)
    easy = np.asarray(gnd_entry.get("easy", empty), np.int64)
    hard = np.asarray(gnd_entry.get("hard", empty), np.int64)
    junk = np.asarray(gnd_entry.get("junk", empty), np.int64)
    if protocol == "easy":
        return {"ok": easy, "junk": np.concatenate([junk, hard])}
    if protocol == "medium":
        return {"ok": np.concatenate([easy, hard]), "junk": junk}
    if protocol == "hard":
        return {"ok": hard, "junk": np.concatenate([junk, easy])}
    raise ValueError(f"unknown protocol {protocol!r}: use easy, medium or hard")


# --------------------------------------------------------------------------
# Copy detection, micro-AP (facebookresearch/isc2021 isc/metrics.py)
# --------------------------------------------------------------------------


def micro_average_precision(scores: np.ndarray, is_match: np.ndarray,
                            n_ground_truth: int) -> dict[str, np.ndarray | float]:
    """Micro-AP of pooled (query, reference, score) predictions.

    Predictions are sorted by score, descending; among equal scores the wrong
    ones come first (the official pessimistic order, so constant scores cannot
    buy AP). AP = sum_i (recall_i - recall_{i-1}) * precision_i with recall
    over `n_ground_truth` pairs, so a ground-truth pair never predicted caps
    recall below 1. Returns ap and the curve (precision, recall, thresholds).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_match = np.asarray(is_match, dtype=bool).ravel()
    if scores.shape != is_match.shape:
        raise ValueError("scores and is_match must have the same length")
    if n_ground_truth <= 0:
        raise ValueError("micro-AP needs at least one ground-truth pair")
    order = np.lexsort((is_match, -scores))
    y = is_match[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    recall = tp / n_ground_truth
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return {"ap": ap, "precision": precision, "recall": recall, "thresholds": scores[order]}


def recall_at_precision(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray,
                        min_precision: float = 0.9) -> tuple[float | None, float | None]:
    """Highest recall among curve points with precision >= `min_precision`, and its threshold.

    (None, None) when no point reaches the precision, as in the official code.
    """
    ok = np.asarray(precision) >= min_precision
    if not ok.any():
        return None, None
    rec = np.asarray(recall)[ok]
    best = int(np.argmax(rec))
    return float(rec[best]), float(np.asarray(thresholds)[ok][best])
