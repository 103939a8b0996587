"""The answer stages on real photos: cut-off, duplicates, feedback, diversity, hubness, cost.

    python benchmarks/answers.py                       # every section, ~10 min on 2 CPU cores
    python benchmarks/answers.py --sections dups,cost  # some of them

Data: ../shared/data. The first stage is weight-free on purpose (no model can be
downloaded here): the colour histogram of benchmarks/rerank.py (HSV 8x4x4,
square-rooted, L2-normalised); spatial verification (SIFT + MAGSAC, the
`spatial` reranker) where a section says so. Absolute numbers say little about a
real model; the comparisons between settings are the point.

- cut-off: gallery = every Strecha photo (a scene name without -Pnn is one
  relevant set) and every Sacre Coeur photo (an original and its 14 copies are
  one set). Each of the four Strecha buildings is held out in turn (removed from
  the gallery through the query's exclusions): its photos become queries without
  a relevant result, as are the UKBench photos of imagededup_testdata (absent
  from the gallery) and 30 synthetic images. Queries with one: the other Strecha
  photos (every 2nd), the 10 originals and one rotated and one scaled copy of each.
  "Answered" = the stage kept at least one result; reported as precision/recall of
  "this query has a relevant result", and how often the first kept result is relevant.
- dups: imagededup_testdata (every file; ground truth below) and Sacre Coeur
  (10 originals, 7 rotated + 7 scaled copies each; originals are similar, not
  copies). Per method: pair precision/recall at its default threshold, micro-AP
  over every scored pair and recall at precision 0.9; then the default `find`.
- feedback, diversity: Strecha + Sacre Coeur gallery, queries as above, mAP
  before and after (feedback: the top 10 judged by an oracle user).
- hubness: every gallery image as a query (leave-one-out): k-occurrence N_10
  skewness and maximum, before and after, and mAP.
- cost: per query at 100,000 synthetic 512-d vectors in a MemoryStore (exact).

imagededup_testdata/evaluation_files/*.pkl name files that this folder does not
hold (ukbench09060_rotation.jpg, ...): they are fixtures of imagededup's own
evaluation tests, not the ground truth of these files. The ground truth used
here follows the file names, checked by content: files named after one UKBench
photo (copies in several folders, the same JPEG bytes under .png/.bmp/.svg
names, a WebP re-encoding, rotated, flipped, resized, greyscale versions) are
one group; the two byte-identical corrupt files are a group of their own; every
other file is alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rerank import histogram_encoder  # noqa: E402

from loupe import dups  # noqa: E402
from loupe.core.types import Query  # noqa: E402
from loupe.dups.find import hamming  # noqa: E402
from loupe.eval.metrics import micro_average_precision, recall_at_precision  # noqa: E402
from loupe.media.decode import decode, read_bytes  # noqa: E402
from loupe.models.device import cpu_info
from loupe.search import pipeline  # noqa: E402
from loupe.search.stages.collapse import Collapse, components  # noqa: E402
from loupe.search.stages.cutoff import Cutoff  # noqa: E402
from loupe.search.stages.feedback import rocchio  # noqa: E402
from loupe.search.stages.hubness import Hubness, image_bank  # noqa: E402
from loupe.search.stages.mmr import MMR  # noqa: E402
from loupe.search.stages.spatial import Spatial, precompute  # noqa: E402
from loupe.storage.memory import MemoryStore  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "answers.json"
SECTIONS = ("cutoff", "dups", "feedback", "diversity", "hubness", "cost")
ENCODE = histogram_encoder()


def load(path: Path) -> Image.Image:
    return decode(read_bytes(path), reduce_to=256).image


def encode_paths(paths: list[Path]) -> np.ndarray:
    return np.stack([ENCODE(load(p)) for p in paths]).astype(np.float32)


def labelled() -> dict:
    strecha = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    originals = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))
    copies = sorted((DATA / "sacre_coeur").glob("mapping_*/*.jpg"))
    if not strecha or not originals:
        raise SystemExit(f"photos not found under {DATA}")
    paths = strecha + originals + copies
    groups = [re.sub(r"-P\d+$", "", p.parent.name) for p in strecha]
    groups += [re.sub(r"_(rot|scale)[\d.]+$", "", p.stem) for p in originals + copies]
    n_s = len(strecha)
    queries_sc = list(range(n_s, n_s + len(originals)))
    for k, original in enumerate(originals):
        mine = [i for i, p in enumerate(paths) if p.stem.startswith(original.stem + "_")]
        rot = [i for i in mine if "_rot" in paths[i].stem]
        scale = [i for i in mine if "_scale" in paths[i].stem]
        queries_sc += [rot[k % len(rot)], scale[k % len(scale)]]
    return {"paths": paths, "groups": np.array(groups), "strecha": np.arange(n_s),
            "queries_sc": queries_sc, "vectors": encode_paths(paths)}


def synthetic_images(n: int = 30) -> list[Image.Image]:
    """Grids of random colours, noise, and two-colour gradients: nothing like a photo."""
    out = []
    for s in range(n):
        rng = np.random.default_rng(1000 + s)
        if s % 3 == 0:
            cells = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            out.append(Image.fromarray(cells).resize((256, 192), Image.Resampling.NEAREST))
        elif s % 3 == 1:
            out.append(Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)))
        else:
            c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, 256)[None, :, None]
            out.append(Image.fromarray((c0 * (1 - t) + c1 * t).repeat(192, 0).astype(np.uint8)))
    return out


def ukbench_photos() -> list[Path]:
    base = DATA / "imagededup_testdata"
    return sorted(base.glob("base_images/*.jpg")) + [base / "alpha_channel_image.png"]


def average_precision(ranking: np.ndarray, relevant: set[int]) -> float:
    hits = np.isin(ranking, list(relevant))
    ranks = np.flatnonzero(hits)
    return float(np.sum((np.arange(len(ranks)) + 1) / (ranks + 1)) / max(len(relevant), 1))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


# --- cut-off --------------------------------------------------------------------------------

class MemoSpatial(Spatial):
    """The spatial reranker with its features and verifications kept in memory: the same
    query meets the same candidates under each held-out building (same results, less time)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._extracted: dict[int, object] = {}
        self._features: dict[int, object] = {}
        self._verified: dict[tuple[int, int], tuple] = {}

    def extract(self, image):  # type: ignore[override]
        key = id(image)
        if key not in self._extracted:
            self._extracted[key] = (image, super().extract(image))
        return self._extracted[key][1]

    def features(self, store, id_, cache):  # type: ignore[override]
        if id_ not in self._features:
            self._features[id_] = super().features(store, id_, cache)
        return self._features[id_]

    def verify(self, query, target):  # type: ignore[override]
        key = (id(query), id(target))
        if key not in self._verified:
            self._verified[key] = super().verify(query, target)
        return self._verified[key]


SIDES = ("query", "gallery", "both")


def section_cutoff(data: dict, tmp: Path, spatial_depth: int) -> dict:
    paths, groups, vecs = data["paths"], data["groups"], data["vectors"]
    store = MemoryStore(paths, vecs, tmp)
    spatial = MemoSpatial(depth=spatial_depth)
    t0 = time.perf_counter()
    precompute(store, np.arange(len(paths)), reranker=spatial)
    features_s = time.perf_counter() - t0
    ukb = [(p.name, load(p)) for p in ukbench_photos()]
    syn = [(f"synthetic-{i}", im) for i, im in enumerate(synthetic_images())]
    strecha = data["strecha"]
    buildings = sorted(set(groups[strecha].tolist()))
    default = Cutoff()
    labellers = {side: Cutoff(keep=True, side=side) for side in SIDES}
    labellers["gallery, median"] = Cutoff(keep=True, statistic="median", side="gallery")
    rows = []
    t_first, t_spatial, t_cut = [], [], []
    images = {int(i): Image.open(paths[i]).convert("RGB")
              for i in list(strecha[::2]) + list(data["queries_sc"])}
    for held in buildings:
        held_ids = frozenset(np.flatnonzero(groups == held).tolist())
        queries = []
        for i in strecha[::2]:
            queries.append(("strecha-held" if groups[i] == held else "strecha", int(i),
                            images[int(i)]))
        for i in data["queries_sc"]:
            queries.append(("sacre-coeur", int(i), images[int(i)]))
        queries += [("ukbench", -1, im) for _, im in ukb]
        queries += [("synthetic", -1, im) for _, im in syn]
        for kind, qi, image in queries:
            exclude = held_ids | ({qi} if qi >= 0 else set())
            q = ENCODE(load(paths[qi])) if qi >= 0 else ENCODE(_small(image))
            relevant = set(np.flatnonzero(groups == groups[qi]).tolist()) - exclude if qi >= 0 \
                else set()
            query = Query(vector=q, image=image, exclude_ids=frozenset(exclude))
            t0 = time.perf_counter()
            first = store.search_vector(q, default.depth, exclude=exclude)
            t_first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            spatial_first = pipeline.apply([spatial], query, first, store)
            t_spatial.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            default.rerank(query, spatial_first, store)
            t_cut.append(time.perf_counter() - t0)
            # Per query: each calibration's z over the head in spatial's order, spatial's marks,
            # relevance; any threshold is then evaluated exactly as the stage decides.
            z = {name: stage.rerank(query, spatial_first, store).confidence
                 for name, stage in labellers.items()}
            s = store.vectors(spatial_first.ids) @ q
            rows.append({
                "held": held, "kind": kind, "has_relevant": bool(relevant),
                "z": z, "raw": s, "verified": verified_mask(spatial_first),
                "inliers": np.where(verified_mask(spatial_first), spatial_first.scores, 0.0),
                "relevant": np.isin(spatial_first.ids, list(relevant)),
            })
        print(f"  cut-off: held out {held}", flush=True)
    has = np.array([r["has_relevant"] for r in rows])

    def decide(side: str, t: float, with_spatial: bool) -> dict:
        answered = np.zeros(len(rows), bool)
        first_ok = np.zeros(len(rows), bool)
        for k, r in enumerate(rows):
            keep = r["z"][side] >= t
            if with_spatial:
                keep = keep | r["verified"]
            answered[k] = keep.any()
            first_ok[k] = answered[k] and r["relevant"][np.flatnonzero(keep)[0]]
        tp = int((answered & has).sum())
        return {"precision": tp / max(int(answered.sum()), 1), "recall": tp / int(has.sum()),
                "answered": int(answered.sum()),
                "first_kept_relevant_of_answered": float(first_ok.sum()
                                                          / max(int(answered.sum()), 1))}

    thresholds = [1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0]
    auc_rows = {"raw cosine": auc([r["raw"].max() for r in rows], has),
                "inliers of the best verified result (spatial)":
                    auc([r["inliers"].max() for r in rows], has)}
    for name in labellers:
        auc_rows[f"z, {name} side" if name in SIDES else f"z, {name}"] = auc(
            [r["z"][name].max() for r in rows], has)
    kinds = sorted({r["kind"] for r in rows})
    return {
        "queries": len(rows),
        "with_relevant": int(has.sum()),
        "without_relevant": int((~has).sum()),
        "default": {k: v for k, v in default.params().items() if k != "text_bank"},
        "spatial": {"depth": spatial_depth, "decision": spatial.decision},
        "auc_has_relevant": auc_rows,
        "at_default": {
            f"z ({default.side} side) only": decide(default.side, default.threshold, False),
            f"z ({default.side} side) or verified (spatial first)":
                decide(default.side, default.threshold, True),
            "verified only (spatial first)": decide(default.side, np.inf, True),
        },
        "sweep": {side: [{"threshold": t, **decide(side, t, False)} for t in thresholds]
                  for side in SIDES},
        "sweep_with_spatial": {side: [{"threshold": t, **decide(side, t, True)}
                                      for t in thresholds] for side in SIDES},
        "best_z_by_kind_p10_p50_p90": {
            side: {k: np.percentile([r["z"][side].max() for r in rows if r["kind"] == k],
                                    [10, 50, 90]).round(2).tolist() for k in kinds}
            for side in SIDES},
        "first_stage_ms_median": 1000 * float(np.median(t_first)),
        "cutoff_ms_median": 1000 * float(np.median(t_cut)),
        "spatial_ms_median_memoised": 1000 * float(np.median(t_spatial)),
        "local_features_s": features_s,
    }


def verified_mask(candidates) -> np.ndarray:
    from loupe.search.stages.cutoff import verified

    return verified(candidates)


def _small(image: Image.Image) -> Image.Image:
    small = image.copy()
    small.thumbnail((256, 256))
    return small


# --- duplicates -----------------------------------------------------------------------------

def dedup_ground_truth(paths: list[Path]) -> np.ndarray:
    labels = []
    for p in paths:
        m = re.match(r"(ukbench\d+)", p.name)
        if m and "_corrupt" in p.name:
            labels.append(m.group(1) + "-corrupt")
        elif m:
            labels.append(m.group(1))
        else:
            labels.append("alone:" + str(p))
    return np.array(labels)


def section_dups(tmp: Path) -> dict:
    sets = {}
    base = DATA / "imagededup_testdata"
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() != ".pkl"
                   and p.name != "LICENSE")
    sets["imagededup_testdata"] = (files, dedup_ground_truth(files))
    sc = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg")) + \
        sorted((DATA / "sacre_coeur").glob("mapping_*/*.jpg"))
    sets["sacre_coeur"] = (sc, np.array([re.sub(r"_(rot|scale)[\d.]+$", "", p.stem) for p in sc]))
    spatial = Spatial()
    defaults = {"phash": 10, "dhash": 10, "embedding": 0.95, "verified": 15}
    out = {}
    for name, (paths, labels) in sets.items():
        t0 = time.perf_counter()
        items = dups.scan_files(paths)
        scan_s = time.perf_counter() - t0
        vectors = np.zeros((len(items), 128), np.float32)
        for k, it in enumerate(items):
            if it.error is None:
                vectors[k] = ENCODE(load(it.path))
        n = len(items)
        iu, ju = np.triu_indices(n, k=1)
        truth = labels[iu] == labels[ju]
        n_gt = int(truth.sum())
        decodable = np.array([it.error is None for it in items])
        both = decodable[iu] & decodable[ju]
        scores = {
            "exact": np.array([items[a].sha256 is not None and items[a].sha256 == items[b].sha256
                               for a, b in zip(iu, ju, strict=True)], np.float64),
        }
        for h in ("phash", "dhash"):
            codes = [getattr(it, h) for it in items]
            d = np.array([hamming(codes[a], codes[b]) if both[k] else 65
                          for k, (a, b) in enumerate(zip(iu, ju, strict=True))], np.float64)
            scores[h] = -d
        scores["embedding"] = np.where(both, np.einsum("ij,ij->i", vectors[iu], vectors[ju]), -2)
        # Verification runs on candidates, as in `find`: each image's 10 nearest by embedding
        # and the pairs within Hamming 16 of either hash; other pairs score 0.
        sim = vectors @ vectors.T
        np.fill_diagonal(sim, -np.inf)
        near = np.zeros((n, n), bool)
        for a in range(n):
            near[a, np.argsort(-sim[a])[:10]] = True
        cand = both & (near[iu, ju] | near[ju, iu] | (scores["phash"] >= -16)
                       | (scores["dhash"] >= -16) | (scores["embedding"] >= 0.8))
        t0 = time.perf_counter()
        feats = _features_of(items, spatial)
        found = dups.verify_pairs(np.stack([iu, ju], axis=1)[cand], feats, spatial)
        verify_s = time.perf_counter() - t0
        inliers, matches = np.zeros(len(iu)), np.zeros(len(iu))
        inliers[cand], matches[cand] = found[:, 0], found[:, 1]
        ratio = inliers / np.maximum(matches, 1)
        scores["verified: inliers"] = inliers
        scores["verified: inliers/matches, inliers >= 15"] = np.where(inliers >= 15, ratio, 0.0)
        methods = {}
        for method, s in scores.items():
            cut = {"exact": 0.5, "phash": -defaults["phash"], "dhash": -defaults["dhash"],
                   "embedding": defaults["embedding"], "verified: inliers": defaults["verified"],
                   "verified: inliers/matches, inliers >= 15": 0.95}[method]
            found = s >= cut
            tp = int((found & truth).sum())
            ap = micro_average_precision(s, truth, n_gt)
            r90, _ = recall_at_precision(ap["precision"], ap["recall"], ap["thresholds"], 0.9)
            methods[method] = {
                "threshold": {"exact": "same SHA-256", "phash": "Hamming <= 10",
                              "dhash": "Hamming <= 10", "embedding": "cosine >= 0.95",
                              "verified: inliers": "inliers >= 15",
                              "verified: inliers/matches, inliers >= 15": "ratio >= 0.95"}[method],
                "precision": tp / max(int(found.sum()), 1), "recall": tp / n_gt,
                "micro_ap": ap["ap"], "recall_at_p90": r90,
            }
        found_default = {}
        for label, options in (
            ("default Options()", dups.Options()),
            ("exact + phash<=10 + embedding>=0.95",
             dups.Options(embedding=0.95)),
            ("exact + phash<=10 + embedding>=0.9, verified (inliers >= 15, ratio >= 0.95)",
             dups.Options(embedding=0.9, verify=True)),
        ):
            t0 = time.perf_counter()
            result = dups.find(items, vectors, options, features=feats)
            elapsed = time.perf_counter() - t0
            same = np.zeros(len(iu), bool)
            group_of = {i: g for g, members in enumerate(result.groups) for i in members}
            for k, (a, b) in enumerate(zip(iu, ju, strict=True)):
                same[k] = a in group_of and group_of.get(a) == group_of.get(b)
            tp = int((same & truth).sum())
            found_default[label] = {
                "pair_precision": tp / max(int(same.sum()), 1), "pair_recall": tp / n_gt,
                "groups": len(result.groups), "seconds_after_scan": elapsed,
            }
        # The verification decision: edges kept at each inlier ratio among find's candidates
        # (exact, pHash <= 10, cosine >= 0.9), and the groups they make.
        find_cands = (scores["phash"] >= -10) | (scores["embedding"] >= 0.9)
        ratio_sweep = []
        for r in (0.8, 0.85, 0.9, 0.95):
            edge = (scores["exact"] > 0) | (find_cands & (inliers >= 15) & (ratio >= r))
            labels_found = components(n, np.stack([iu, ju], axis=1)[edge])
            same = labels_found[iu] == labels_found[ju]
            ratio_sweep.append({
                "min_inlier_ratio": r,
                "edge_precision": int((edge & truth).sum()) / max(int(edge.sum()), 1),
                "edge_recall": int((edge & truth).sum()) / n_gt,
                "group_pair_precision": int((same & truth).sum()) / max(int(same.sum()), 1),
                "group_pair_recall": int((same & truth).sum()) / n_gt,
                "groups": int(sum(np.bincount(labels_found) > 1)),
            })
        out[name] = {
            "ratio_sweep": ratio_sweep,
            "images": n, "ground_truth_pairs": n_gt, "undecodable": int((~decodable).sum()),
            "scan_s": scan_s, "verify_candidates_s": verify_s, "verified_pairs": int(cand.sum()),
            "methods": methods, "find": found_default,
        }
        print(f"  dups: {name}", flush=True)
    return out


def _features_of(items: list, spatial: Spatial):
    cache: dict[int, object] = {}

    def features(i: int):
        if i not in cache:
            try:
                image = decode(read_bytes(items[i].path), reduce_to=spatial.max_side).image
            except Exception:  # noqa: BLE001 - an undecodable file has no features
                cache[i] = None
            else:
                cache[i] = spatial.extract(image)
        return cache[i]

    return features


# --- feedback and diversity -----------------------------------------------------------------

def _queries(data: dict) -> list[int]:
    return list(data["strecha"]) + list(data["queries_sc"])


def section_feedback(data: dict, tmp: Path) -> dict:
    groups, vecs = data["groups"], data["vectors"]
    store = MemoryStore(data["paths"], vecs, tmp)
    n = len(vecs)
    before, after, before_res, after_res = [], [], [], []
    for qi in _queries(data):
        relevant = set(np.flatnonzero(groups == groups[qi]).tolist()) - {qi}
        first = store.search_vector(vecs[qi], n, exclude=(qi,))
        judged = first.ids[:10]
        liked = [int(i) for i in judged if i in relevant]
        unliked = [int(i) for i in judged if i not in relevant]
        q2 = rocchio(vecs[qi], store.vectors(liked) if liked else (),
                     store.vectors(unliked) if unliked else ())
        second = store.search_vector(q2, n, exclude=(qi,))
        before.append(average_precision(first.ids, relevant))
        after.append(average_precision(second.ids, relevant))
        rest = relevant - set(judged.tolist())
        if rest:   # residual collection: the judged images leave both rankings
            keep1 = first.ids[~np.isin(first.ids, judged)]
            keep2 = second.ids[~np.isin(second.ids, judged)]
            before_res.append(average_precision(keep1, rest))
            after_res.append(average_precision(keep2, rest))
    return {"queries": len(before), "judged_top": 10,
            "mAP_before": float(np.mean(before)), "mAP_after": float(np.mean(after)),
            "residual_queries": len(before_res),
            "residual_mAP_before": float(np.mean(before_res)),
            "residual_mAP_after": float(np.mean(after_res))}


def section_diversity(data: dict, tmp: Path) -> dict:
    groups, vecs = data["groups"], data["vectors"]
    store = MemoryStore(data["paths"], vecs, tmp)
    n = len(vecs)
    rows = []
    for lam in (1.0, 0.9, 0.7, 0.5, 0.3):
        stage = MMR(lam=lam)
        aps, distinct, ils, ms = [], [], [], []
        for qi in _queries(data):
            relevant = set(np.flatnonzero(groups == groups[qi]).tolist()) - {qi}
            first = store.search_vector(vecs[qi], n, exclude=(qi,))
            query = Query(vector=vecs[qi], exclude_ids=frozenset({qi}))
            t0 = time.perf_counter()
            ranked = pipeline.apply([stage], query, first, store)
            ms.append(1000 * (time.perf_counter() - t0))
            aps.append(average_precision(ranked.ids, relevant))
            top = ranked.ids[:10]
            distinct.append(len(set(groups[top].tolist())))
            v = vecs[top]
            sim = v @ v.T
            ils.append(float((sim.sum() - np.trace(sim)) / (len(top) * (len(top) - 1))))
        rows.append({"lam": lam, "mAP": float(np.mean(aps)),
                     "distinct_groups_top10": float(np.mean(distinct)),
                     "mean_pairwise_cosine_top10": float(np.mean(ils)),
                     "ms_median": float(np.median(ms))})
    return {"queries": len(_queries(data)), "depth": MMR().depth, "rows": rows}


# --- hubness --------------------------------------------------------------------------------

def k_occurrence(rankings: list[np.ndarray], n: int, k: int = 10) -> dict:
    counts = np.zeros(n)
    for r in rankings:
        counts[r[:k]] += 1
    c = counts - counts.mean()
    skew = float((c ** 3).mean() / max((c ** 2).mean(), 1e-12) ** 1.5)
    return {"skewness": skew, "max": int(counts.max()),
            "never_in_top": int((counts == 0).sum())}


def section_hubness(data: dict, tmp: Path) -> dict:
    groups, vecs = data["groups"], data["vectors"]
    out = {}
    rng = np.random.default_rng(7)
    # A synthetic high-dimensional set where hubs are known to form (Radovanovic et al. 2010).
    synth = rng.standard_normal((2000, 256)).astype(np.float32) + 0.4
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    for name, matrix, labels in (("strecha+sacre_coeur (histogram)", vecs, groups),
                                 ("synthetic 2000 x 256-d", synth, None)):
        store = MemoryStore([Path(f"x{i}") for i in range(len(matrix))] if labels is None
                            else data["paths"], matrix, tmp / name.split()[0])
        n = len(matrix)
        bank = image_bank(store, 1000, 0, hubs=True)
        configs = [("cosine", None)]
        for t in (0.02, 0.05, 0.1):
            configs.append((f"full T={t}", Hubness(depth=100, temperature=t, mode="full",
                                                   image_bank=bank)))
        configs.append(("dynamic T=0.05", Hubness(depth=100, temperature=0.05, mode="dynamic",
                                                  image_bank=bank)))
        configs.append(("dynamic-item T=0.05", Hubness(depth=100, temperature=0.05,
                                                       mode="dynamic-item", image_bank=bank)))
        rows = []
        queries = range(n) if labels is not None else range(0, n, 4)
        for label, stage in configs:
            rankings, aps, ms = [], [], []
            for qi in queries:
                first = store.search_vector(matrix[qi], 100, exclude=(qi,))
                query = Query(vector=matrix[qi], exclude_ids=frozenset({qi}))
                t0 = time.perf_counter()
                ranked = pipeline.apply([stage], query, first, store) if stage else first
                ms.append(1000 * (time.perf_counter() - t0))
                rankings.append(ranked.ids)
                if labels is not None:
                    relevant = set(np.flatnonzero(labels == labels[qi]).tolist()) - {qi}
                    aps.append(average_precision(ranked.ids, relevant))
            row = {"config": label, **k_occurrence(rankings, n), "ms_median": float(np.median(ms))}
            if labels is not None:
                row["mAP@100"] = float(np.mean(aps))
            rows.append(row)
        out[name] = {"queries": len(queries), "bank": len(bank), "hubs_in_bank_activation_set":
                     len(bank.hubs), "rows": rows}
        print(f"  hubness: {name}", flush=True)
    return out


# --- cost at 100k ---------------------------------------------------------------------------

def section_cost(tmp: Path, n: int = 100_000, dim: int = 512, queries: int = 30) -> dict:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    # near-duplicates so that collapse has groups to form: every 50th vector has a copy
    matrix[1::50] = matrix[0::50][: len(matrix[1::50])] + 0.01 * rng.standard_normal(
        (len(matrix[1::50]), dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    store = MemoryStore([Path(f"v{i}") for i in range(n)], matrix, tmp / "cost")
    qs = matrix[rng.choice(n, queries, replace=False)] + 0.05 * rng.standard_normal(
        (queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    t0 = time.perf_counter()
    bank = image_bank(store, 1000, 0, hubs=True)
    bank_s = time.perf_counter() - t0
    stages = {
        "cutoff (sample 1000, M=100)": Cutoff(),
        "collapse (M=100)": Collapse(),
        "mmr (M=100)": MMR(),
        "hubness full (bank 1000, M=100)": Hubness(mode="full", image_bank=bank),
        "hubness dynamic (bank 1000, M=100)": Hubness(mode="dynamic", image_bank=bank),
    }
    first_ms, rows = [], {}
    for q in qs:
        t0 = time.perf_counter()
        store.search_vector(q, 100)
        first_ms.append(1000 * (time.perf_counter() - t0))
    for label, stage in stages.items():
        ms = []
        for q in qs:
            first = store.search_vector(q, 100)
            query = Query(vector=q)
            t0 = time.perf_counter()
            pipeline.apply([stage], query, first, store)
            ms.append(1000 * (time.perf_counter() - t0))
        rows[label] = {"ms_median": float(np.median(ms)), "ms_p95": float(np.percentile(ms, 95))}
    ms = []
    for q in qs:
        first = store.search_vector(q, 10)
        t0 = time.perf_counter()
        q2 = rocchio(q, store.vectors(first.ids[:3]), store.vectors(first.ids[7:10]))
        store.search_vector(q2, 100)
        ms.append(1000 * (time.perf_counter() - t0))
    rows["feedback (rocchio + second search)"] = {"ms_median": float(np.median(ms)),
                                                   "ms_p95": float(np.percentile(ms, 95))}
    t0 = time.perf_counter()
    dups.embedding_pairs(matrix[:20_000], 0.95)
    emb_s = time.perf_counter() - t0
    codes = [int(c) for c in rng.integers(0, 2**63, 20_000, dtype=np.int64)]
    t0 = time.perf_counter()
    dups.hamming_pairs(codes, 10)
    ham_s = time.perf_counter() - t0
    return {"vectors": n, "dim": dim, "queries": queries,
            "first_stage_ms_median": float(np.median(first_ms)), "stages": rows,
            "hubness_image_bank_build_s": bank_s,
            "dups_embedding_pairs_20k_s": emb_s, "dups_hamming_pairs_20k_s": ham_s}


# --- report ---------------------------------------------------------------------------------

def machine() -> str:
    cpu = str(cpu_info()["model"])   # /proc/cpuinfo's model name
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores"


def tables(result: dict) -> str:
    lines = [f"machine: {result['machine']}; load average (1 min) start/end: "
             f"{result['load_average_1min_start_end']}", ""]
    c = result.get("cutoff")
    if c:
        lines += [f"## Cut-off: {c['queries']} queries ({c['with_relevant']} with a relevant "
                  f"result, {c['without_relevant']} without); default {c['default']}; "
                  f"spatial {c['spatial']}", "",
                  "| detector (best result of the head) | AUC of 'has a relevant result' |",
                  "| --- | ---: |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in c["auc_has_relevant"].items()]
        lines += ["", "| at the default | precision | recall | answered | first kept relevant |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for k, v in c["at_default"].items():
            lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['answered']} | "
                         f"{v['first_kept_relevant_of_answered']:.3f} |")
        for title, key in (("z alone", "sweep"), ("z or verified", "sweep_with_spatial")):
            lines += ["", f"{title}: precision / recall (answered) per threshold", "",
                      "| threshold | " + " | ".join(f"{s} side" for s in c[key]) + " |",
                      "| ---: |" + " ---: |" * len(c[key])]
            for n, t in enumerate(c[key]["query"]):
                cells = [f"{c[key][s][n]['precision']:.3f} / {c[key][s][n]['recall']:.3f} "
                         f"({c[key][s][n]['answered']})" for s in c[key]]
                lines.append(f"| {t['threshold']} | " + " | ".join(cells) + " |")
        lines += ["", "best z by query kind (p10, p50, p90): "
                  + json.dumps(c["best_z_by_kind_p10_p50_p90"]),
                  f"cut-off {c['cutoff_ms_median']:.1f} ms median per query (243 images)", ""]
    d = result.get("dups")
    if d:
        for name, r in d.items():
            lines += [f"## Duplicates: {name}: {r['images']} files ({r['undecodable']} undecodable), "
                      f"{r['ground_truth_pairs']} duplicate pairs; scan {r['scan_s']:.2f} s, "
                      f"verifying {r['verified_pairs']} candidate pairs {r['verify_candidates_s']:.1f} s", "",
                      "| method | threshold | precision | recall | micro-AP | recall at P90 |",
                      "| --- | --- | ---: | ---: | ---: | ---: |"]
            for m, v in r["methods"].items():
                r90 = "-" if v["recall_at_p90"] is None else f"{v['recall_at_p90']:.3f}"
                lines.append(f"| {m} | {v['threshold']} | {v['precision']:.3f} | {v['recall']:.3f} | "
                             f"{v['micro_ap']:.3f} | {r90} |")
            lines += ["", "| find (groups = connected components) | pair precision | pair recall "
                      "| groups | s after scan |", "| --- | ---: | ---: | ---: | ---: |"]
            for k, v in r["find"].items():
                lines.append(f"| {k} | {v['pair_precision']:.3f} | {v['pair_recall']:.3f} | "
                             f"{v['groups']} | {v['seconds_after_scan']:.2f} |")
            lines += ["", "| verified: min inliers/matches (exact, pHash<=10, cosine>=0.9 as "
                      "candidates) | edge precision | edge recall | group pair precision "
                      "| group pair recall | groups |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
            for v in r["ratio_sweep"]:
                lines.append(f"| {v['min_inlier_ratio']} | {v['edge_precision']:.3f} | "
                             f"{v['edge_recall']:.3f} | {v['group_pair_precision']:.3f} | "
                             f"{v['group_pair_recall']:.3f} | {v['groups']} |")
            lines.append("")
    f = result.get("feedback")
    if f:
        lines += [f"## Feedback (Rocchio a=1, b=0.75, c=0.25; oracle judges the top {f['judged_top']}):"
                  f" {f['queries']} queries", "",
                  "| | before | after |", "| --- | ---: | ---: |",
                  f"| mAP | {f['mAP_before']:.3f} | {f['mAP_after']:.3f} |",
                  f"| residual mAP ({f['residual_queries']} queries) | "
                  f"{f['residual_mAP_before']:.3f} | {f['residual_mAP_after']:.3f} |", ""]
    v = result.get("diversity")
    if v:
        lines += [f"## Diversity (MMR over the top {v['depth']}): {v['queries']} queries", "",
                  "| lam | mAP | distinct groups in top 10 | mean pairwise cosine top 10 | ms |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['lam']} | {r['mAP']:.3f} | {r['distinct_groups_top10']:.2f} | "
                  f"{r['mean_pairwise_cosine_top10']:.3f} | {r['ms_median']:.2f} |" for r in v["rows"]]
        lines.append("")
    h = result.get("hubness")
    if h:
        for name, r in h.items():
            lines += [f"## Hubness: {name}: {r['queries']} queries, bank {r['bank']} "
                      f"({r['hubs_in_bank_activation_set']} items in the activation set)", "",
                      "| config | N_10 skewness | max N_10 | never in a top 10 | mAP@100 | ms |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for row in r["rows"]:
                m = f"{row['mAP@100']:.3f}" if "mAP@100" in row else "-"
                lines.append(f"| {row['config']} | {row['skewness']:.2f} | {row['max']} | "
                             f"{row['never_in_top']} | {m} | {row['ms_median']:.2f} |")
            lines.append("")
    k = result.get("cost")
    if k:
        lines += [f"## Cost per query at {k['vectors']} x {k['dim']}-d (exact index), "
                  f"first stage {k['first_stage_ms_median']:.1f} ms median", "",
                  "| stage | ms median | ms p95 |", "| --- | ---: | ---: |"]
        lines += [f"| {s} | {r['ms_median']:.2f} | {r['ms_p95']:.2f} |" for s, r in k["stages"].items()]
        lines += ["", f"one-off: hubness image bank (1000 top-1 searches) "
                  f"{k['hubness_image_bank_build_s']:.1f} s; dups embedding pairs over 20k vectors "
                  f"{k['dups_embedding_pairs_20k_s']:.1f} s; Hamming pairs over 20k hashes "
                  f"{k['dups_hamming_pairs_20k_s']:.1f} s", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--spatial-depth", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    wanted = args.sections.split(",")
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    result: dict = {"command": "python benchmarks/answers.py " + " ".join(sys.argv[1:]),
                    "machine": machine()}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="loupe-answers-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = labelled() if set(wanted) & {"cutoff", "feedback", "diversity", "hubness"} else None
        for section in wanted:
            t0 = time.perf_counter()
            print(f"{section} ...", flush=True)
            if section == "cutoff":
                result["cutoff"] = section_cutoff(data, tmp, args.spatial_depth)
            elif section == "dups":
                result["dups"] = section_dups(tmp)
            elif section == "feedback":
                result["feedback"] = section_feedback(data, tmp)
            elif section == "diversity":
                result["diversity"] = section_diversity(data, tmp)
            elif section == "hubness":
                result["hubness"] = section_hubness(data, tmp)
            elif section == "cost":
                result["cost"] = section_cost(tmp)
            result.setdefault("section_seconds", {})[section] = time.perf_counter() - t0
    result["load_average_1min_start_end"] = [load_start, os.getloadavg()[0]]
    print(tables(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run = {k: result[k] for k in ("command", "machine", "load_average_1min_start_end")}
    run["sections"] = wanted
    result["runs"] = [run]
    if args.out.exists() and set(wanted) != set(SECTIONS):   # keep the sections not re-run
        old = json.loads(args.out.read_text())
        old_runs = old.get("runs") or [{k: old[k] for k in
                                        ("command", "machine", "load_average_1min_start_end")
                                        if k in old} | {"sections": [s for s in SECTIONS
                                                                     if s in old]}]
        result = {**old, **result, "runs": old_runs + [run]}
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
