"""Metric functions against hand-computed values and an independent loop-by-loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loupe.eval import metrics as M

# --------------------------------------------------------------------------
# Revisited Oxford / Paris
# --------------------------------------------------------------------------


def test_revisitop_junk_above_positives_hand_computed():
    # positives 1, 3, 6 at 0-based positions 3, 4, 7; junk 2, 7 at positions 1, 2
    ranking = np.array([5, 2, 7, 1, 3, 0, 4, 6])
    ap, prs = M.revisitop_query(ranking, ok=[1, 3, 6], junk=[2, 7], kappas=(1, 5, 10))
    # after removing junk the positives sit at 1, 2, 5:
    # (0 + 1/2)/2 + (1/2 + 2/3)/2 + (2/5 + 3/6)/2 = 77/60, over 3 positives
    assert ap == pytest.approx(77 / 180, abs=1e-12)
    # 1-based positions 2, 3, 6: P@1 = 0/1, P@5 = 2/5, P@10 uses k_q = 6 -> 3/6
    assert prs == pytest.approx([0.0, 0.4, 0.5], abs=1e-12)


def test_revisitop_first_rank_and_truncation():
    ap, prs = M.revisitop_query(np.array([1, 0, 2]), ok=[1], junk=[], kappas=(1, 5))
    assert ap == 1.0 and list(prs) == [1.0, 1.0]
    # truncated ranking: only one of the three positives is ranked; the others count as lost
    ap, prs = M.revisitop_query(np.array([5, 2, 7, 1]), ok=[1, 3, 6], junk=[2, 7], kappas=(1, 5))
    assert ap == pytest.approx(0.25 / 3, abs=1e-12)
    assert prs == pytest.approx([0.0, 0.5], abs=1e-12)   # k_q = min(2, 5) = 2
    # positives exist but none is ranked: 0, not a crash
    ap, prs = M.revisitop_query(np.array([5, 2]), ok=[1], junk=[], kappas=(1,))
    assert ap == 0.0 and prs[0] == 0.0


def test_revisitop_query_without_positives_is_left_out():
    gnd = [{"ok": np.array([0]), "junk": np.array([], int)}, {"ok": np.array([], int), "junk": np.array([1])}]
    out = M.revisitop_map([np.array([0, 1, 2]), np.array([2, 1, 0])], gnd, kappas=(1,))
    assert math.isnan(out["aps"][1])
    assert out["map"] == 1.0                      # mean over the one query with positives
    assert out["mpr"][0] == 1.0


def test_revisitop_protocol_sets():
    g = {"easy": np.array([1, 2]), "hard": np.array([3]), "junk": np.array([4])}
    assert sorted(M.revisitop_protocol(g, "easy")["junk"]) == [3, 4]
    assert sorted(M.revisitop_protocol(g, "medium")["ok"]) == [1, 2, 3]
    assert sorted(M.revisitop_protocol(g, "hard")["junk"]) == [1, 2, 4]
    with pytest.raises(ValueError, match="unknown protocol"):
        M.revisitop_protocol(g, "extreme")


def _reference_revisitop(ranking, ok, junk, kappas):
    """The official definitions, one list position at a time (independent of Loupe's code)."""
    ok, junk = set(int(x) for x in ok), set(int(x) for x in junk)
    if not ok:
        return None, None
    positions = []          # 0-based positions of positives in the ranking without junk
    kept = 0
    for item in ranking:
        item = int(item)
        if item in ok:
            positions.append(kept)
            kept += 1
        elif item in junk:
            continue
        else:
            kept += 1
    ap = 0.0
    for j, r in enumerate(positions):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2.0 / len(ok)
    prs = []
    for k in kappas:
        if not positions:
            prs.append(0.0)
            continue
        last = max(positions) + 1
        kq = min(last, k)
        count = 0
        for r in positions:
            if r + 1 <= kq:
                count += 1
        prs.append(count / kq)
    return ap, prs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("truncate", [None, 60])
def test_revisitop_equals_reference_on_random_rankings(seed, truncate):
    rng = np.random.default_rng(seed)
    n_db, n_q, kappas = 300, 40, (1, 5, 10)
    rankings = [rng.permutation(n_db)[:truncate] for _ in range(n_q)]
    gnd = []
    for q in range(n_q):
        items = rng.permutation(n_db)
        ne, nh, nj = rng.integers(0, 12, size=3)
        if q % 7 == 0:
            ne = nh = 0                      # queries without positives in some protocols
        gnd.append({"easy": items[:ne], "hard": items[ne:ne + nh], "junk": items[ne + nh:ne + nh + nj]})
    for proto in ("easy", "medium", "hard"):
        g = [M.revisitop_protocol(x, proto) for x in gnd]
        ours = M.revisitop_map(rankings, g, kappas)
        ref_aps, ref_prs = [], []
        for r, x in zip(rankings, g, strict=True):
            ap, prs = _reference_revisitop(r, x["ok"], x["junk"], kappas)
            if ap is not None:
                ref_aps.append(ap)
                ref_prs.append(prs)
        assert abs(ours["map"] - float(np.mean(ref_aps))) < 1e-9
        assert np.max(np.abs(ours["mpr"] - np.mean(ref_prs, axis=0))) < 1e-9
        # per-query values too, not only the means
        valid = ~np.isnan(ours["aps"])
        assert np.max(np.abs(ours["aps"][valid] - np.array(ref_aps))) < 1e-9


# --------------------------------------------------------------------------
# Ranked-list metrics
# --------------------------------------------------------------------------


def test_ap_at_k_normalisation():
    rel = np.array([[1, 0, 1, 0, 0]], bool)
    assert M.ap_at_k(rel, 3, 5)[0] == pytest.approx((1 + 2 / 3) / 3)
    assert M.ap_at_k(rel, 3, 2)[0] == pytest.approx(1 / 2)        # min(n_rel, k) = 2
    # GLDv2: more relevant images than k -> divide by k
    assert M.ap_at_k(np.ones((1, 100), bool), 250, 100)[0] == pytest.approx(1.0)
    assert math.isnan(M.ap_at_k(rel, 0, 5)[0])


def test_average_precision_recall_ndcg_hand_computed():
    rel = np.array([[0, 1, 1, 0]], bool)
    assert M.average_precision(rel, 4)[0] == pytest.approx((1 / 2 + 2 / 3) / 4)
    assert M.recall_at_k(rel, 4, 2)[0] == pytest.approx(0.25)
    assert M.hit_at_k(rel, 1)[0] == 0.0 and M.hit_at_k(rel, 2)[0] == 1.0
    assert M.precision_at_k(rel, 10)[0] == pytest.approx(0.2)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(rel[:, :3], 2, 3)[0] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert M.reciprocal_rank(rel)[0] == 0.5
    assert M.reciprocal_rank(np.zeros((1, 3), bool))[0] == 0.0


def test_relevance_several_ground_truths():
    rel = M.relevance(np.array([[4, 2, 9], [1, 2, 3]]), [np.array([9, 4]), np.array([7])])
    assert rel.tolist() == [[True, False, True], [False, False, False]]


def test_rank_ties_break_by_index_and_topk_matches_full_sort():
    scores = np.array([[0.5, 0.9, 0.9, 0.1]])
    assert M.rank_all(scores)[0].tolist() == [1, 2, 0, 3]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 50, size=(3, 9000)).astype(np.float32)   # many ties
    assert np.array_equal(M.rank_topk(big, 37), M.rank_all(big)[:, :37])


def test_first_positive_rank_ties_and_no_positive():
    scores = np.array([[0.5, 0.9, 0.9, 0.1], [0.5, 0.9, 0.9, 0.1], [0.1, 0.2, 0.3, 0.4]])
    pos = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    assert M.first_positive_rank(scores, pos).tolist() == [1, 0, -1]
    # agrees with the position of the first positive in the full ranking
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(50, 40)).astype(float)
    p = rng.random((50, 40)) < 0.1
    ranks = M.first_positive_rank(s, p)
    full = M.rank_all(s)
    for i in range(50):
        hits = np.flatnonzero(p[i][full[i]])
        assert ranks[i] == (hits[0] if hits.size else -1)
    assert M.recall_from_ranks(np.array([0, 3, -1, 9]), [1, 5, 10]) == {1: 0.25, 5: 0.5, 10: 0.75}


def test_interpolated_pr_is_monotone_and_exact_on_simple_list():
    grid, curve = M.interpolated_pr([np.array([1, 0, 1], bool)], [2], levels=3)
    # recall 0 -> best precision anywhere = 1; recall .5 -> 1; recall 1 -> 2/3
    assert curve == pytest.approx([1.0, 1.0, 2 / 3])
    assert np.all(np.diff(curve) <= 1e-12)


# --------------------------------------------------------------------------
# Score-aware (INQUIRE / sklearn conventions)
# --------------------------------------------------------------------------


def test_ap_scored_ties_share_one_threshold():
    rel = np.array([1, 0, 1])
    # distinct scores: ordinary AP = (1 + 2/3) / 2
    assert M.ap_at_k_scored(rel, np.array([0.9, 0.8, 0.5]), 2, 3) == pytest.approx(5 / 6)
    # the first two tie: precision after the tied pair is 1/2 for the first positive
    assert M.ap_at_k_scored(rel, np.array([0.9, 0.9, 0.5]), 2, 3) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # INQUIRE normalisation: hits in top k / min(n_rel, k)
    assert M.ap_at_k_scored(rel, np.array([0.9, 0.8, 0.5]), 4, 3) == pytest.approx(5 / 6 * 2 / 3)
    assert M.ap_at_k_scored(np.array([0, 0]), np.array([0.2, 0.1]), 3, 2) == 0.0
    with pytest.raises(ValueError, match="descending"):
        M.ap_at_k_scored(rel, np.array([0.1, 0.8, 0.5]), 2, 3)


def test_ndcg_scored_ties_and_missing_positives():
    # a tie between a miss and a hit shares the gain over both positions
    assert M.ndcg_at_k_scored(np.array([0, 1]), np.array([0.7, 0.7]), 1, 2) == \
        pytest.approx(0.5 * (1 + 1 / math.log2(3)))
    # two positives never retrieved are appended at the bottom, inside k = 3
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k_scored(np.array([1, 0]), np.array([0.9, 0.8]), 3, 3) == pytest.approx(dcg / idcg)


# --------------------------------------------------------------------------
# Copy detection micro-AP
# --------------------------------------------------------------------------


def test_micro_ap_hand_computed_with_unpredicted_ground_truth():
    out = M.micro_average_precision(np.array([0.6, 0.9, 0.7, 0.8]), np.array([0, 1, 1, 0], bool), 3)
    # order T F T F over 3 ground-truth pairs: 1/3 * 1 + 1/3 * 2/3
    assert out["ap"] == pytest.approx(5 / 9)
    rec, thr = M.recall_at_precision(out["precision"], out["recall"], out["thresholds"], 0.9)
    assert rec == pytest.approx(1 / 3) and thr == pytest.approx(0.9)
    assert M.recall_at_precision(np.array([0.5]), np.array([1.0]), np.array([0.1]), 0.9) == (None, None)


def test_micro_ap_ties_are_pessimistic():
    out = M.micro_average_precision(np.array([0.5, 0.5]), np.array([1, 0], bool), 1)
    assert out["ap"] == pytest.approx(0.5)           # the wrong one is counted first
    with pytest.raises(ValueError):
        M.micro_average_precision(np.array([0.5]), np.array([True]), 0)
