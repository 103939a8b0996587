"""DISC21-style copy detection: micro-AP and recall at 90% precision.

Definitions of facebookresearch/isc2021 (isc/metrics.py evaluate): every
(query, reference, score) prediction of every query is pooled and sorted by
score (wrong ones first among equal scores); AP is the area under that one
precision-recall curve over all ground-truth pairs; recall@P90 is the best
recall among points with precision >= 0.9. Queries without a copy are in the
query set and anything they predict is a false positive. Predictions are made
as in its descriptor track (isc/descriptor_matching.py): the k nearest
references of each query, and at most `max_results` predictions overall (the
highest scores).

Layout (`--data DIR`, DISC21 as distributed)::

    images/queries/<id>.jpg         (or queries/)
    images/references/<id>.jpg      (or references/)
    list_files/public_ground_truth.csv   query_id,reference_id (reference_id empty: no copy)
    list_files/dev_queries          optional: query ids to use, one per line
    list_files/references           optional: reference ids to use
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loupe.core.types import Query
from loupe.eval.cache import annotation_digest, files_digest
from loupe.eval.common import (
    Curve,
    DatasetError,
    Embedder,
    EvalOptions,
    EvalResult,
    QueryRecord,
    ResultItem,
    base_config,
    load_rerankers,
    pct,
    progress_bar,
    ranked,
    require_files,
)
from loupe.eval.metrics import micro_average_precision, recall_at_precision
from loupe.storage.memory import MemoryStore, open_image

HOW_TO_GET = (
    "Get DISC21 from https://ai.meta.com/datasets/disc21-downloads/ (or the DrivenData "
    "'Image Similarity Challenge' data page): the query and reference image archives into "
    "images/queries/ and images/references/, and public_ground_truth.csv from "
    "https://github.com/facebookresearch/isc2021/tree/main/list_files into list_files/."
)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class CopyData:
    root: Path
    gt_file: Path
    queries: list[str]                 # paths relative to root
    references: list[str]
    pairs: set[tuple[str, str]]        # (query id, reference id)

    @staticmethod
    def ident(rel: str) -> str:
        return Path(rel).stem


def _folder(root: Path, name: str) -> Path:
    for cand in (root / "images" / name, root / name):
        if cand.is_dir():
            return cand
    raise DatasetError(f"disc21: no images/{name}/ (or {name}/) folder in {root}.\n{HOW_TO_GET}")


def _listing(folder: Path, root: Path, id_file: Path) -> list[str]:
    if id_file.exists():
        ids = [ln.strip() for ln in id_file.read_text().splitlines() if ln.strip()]
        rel = []
        for i in ids:
            found = next((folder / f"{i}{e}" for e in IMAGE_EXTS if (folder / f"{i}{e}").exists()),
                         folder / f"{i}.jpg")
            rel.append(str(found.relative_to(root)))
        require_files("disc21", root, [root / r for r in rel], HOW_TO_GET)
        return rel
    return sorted(str(p.relative_to(root)) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def load(data_dir: Path | str, gt_file: Path | str | None = None) -> CopyData:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"disc21: data folder {root} does not exist.\n{HOW_TO_GET}")
    gt = Path(gt_file).expanduser() if gt_file else root / "list_files" / "public_ground_truth.csv"
    require_files("disc21", gt.parent, [gt], HOW_TO_GET)
    queries = _listing(_folder(root, "queries"), root, root / "list_files" / "dev_queries")
    references = _listing(_folder(root, "references"), root, root / "list_files" / "references")
    pairs: set[tuple[str, str]] = set()
    for lineno, line in enumerate(gt.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line == "query_id,reference_id":
            continue
        parts = line.split(",")
        if len(parts) != 2:
            raise DatasetError(f"{gt}:{lineno}: expected 'query_id,reference_id', got {line[:80]!r}")
        if parts[1]:
            pairs.add((parts[0], parts[1]))
    if not queries or not references:
        raise DatasetError(f"disc21: no query or no reference images found in {root}.\n{HOW_TO_GET}")
    return CopyData(root, gt, queries, references, pairs)


def evaluate(data: CopyData, options: EvalOptions, embedder: Embedder | None = None, k: int = 10,
             max_results: int = 500_000, min_precision: float = 0.9) -> EvalResult:
    embedder = embedder or Embedder(options)
    R = embedder.images(data.root, data.references, description="disc21: references")
    Q = embedder.images(data.root, data.queries, description="disc21: queries")
    ref_ids = [CopyData.ident(r) for r in data.references]
    q_ids = [CopyData.ident(q) for q in data.queries]
    evaluated = set(q_ids)
    # ground truth of the evaluated queries only: a subset run is not charged for the rest
    pairs = {p for p in data.pairs if p[0] in evaluated}
    if not pairs:
        raise DatasetError(f"{data.gt_file}: no ground-truth pair involves the {len(q_ids)} evaluated queries")
    rerankers = load_rerankers(options.rerank)
    paths = [data.root / r for r in data.references]
    store = MemoryStore(paths, R, embedder.cache.root)

    pred_q, pred_r, pred_s = [], [], []
    tops: list[tuple[np.ndarray, np.ndarray]] = []
    with progress_bar(options.progress, "disc21: matching", len(Q)) as advance:
        for i in range(len(Q)):
            def make_query(i: int = i) -> Query:
                return Query(vector=Q[i], image=open_image(data.root / data.queries[i]))

            ranking, scores = ranked(Q[i], store, rerankers, options.rerank_depth, make_query)
            kk = min(k, len(ranking))
            pred_q.append(np.full(kk, i))
            pred_r.append(ranking[:kk])
            pred_s.append(scores[:kk].astype(np.float64))
            tops.append((ranking[:options.report_top], scores[:options.report_top]))
            advance(1)
    pq, pr, ps = np.concatenate(pred_q), np.concatenate(pred_r), np.concatenate(pred_s)
    if len(ps) > max_results:
        keep = np.argsort(-ps, kind="stable")[:max_results]
        pq, pr, ps = pq[keep], pr[keep], ps[keep]
    match = np.array([(q_ids[a], ref_ids[b]) in pairs for a, b in zip(pq, pr, strict=True)], bool)
    curve = micro_average_precision(ps, match, len(pairs))
    rec90, thr90 = recall_at_precision(curve["precision"], curve["recall"], curve["thresholds"], min_precision)

    # rank of each ground-truth pair among its query's predictions, counting ties against it
    by_query: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for qi in np.unique(pq):
        sel = pq == qi
        by_query[q_ids[qi]] = (pr[sel], ps[sel])
    ranks = []
    ref_pos = {r: n for n, r in enumerate(ref_ids)}
    for q, r in sorted(pairs):
        refs, sc = by_query.get(q, (np.empty(0, np.int64), np.empty(0)))
        hit = np.flatnonzero(refs == ref_pos.get(r, -1))
        ranks.append(int((sc >= sc[hit[0]]).sum()) - 1 if hit.size else 1 << 35)
    ranks_a = np.asarray(ranks)
    metrics = {
        "micro-AP": pct(curve["ap"]),
        f"recall@P{round(min_precision * 100)}": pct(rec90) if rec90 is not None else float("nan"),
        "recall@rank1": pct(np.mean(ranks_a == 0)),
        "recall@rank10": pct(np.mean(ranks_a < 10)),
    }
    records = []
    for i, (ids, scores) in enumerate(tops):
        gt_refs = {r for q, r in pairs if q == q_ids[i]}
        items = [ResultItem(ref_ids[j], paths[j], ref_ids[j] in gt_refs, float(s))
                 for j, s in zip(ids, scores, strict=True)]
        rank = next((n for n, j in enumerate(ids) if ref_ids[j] in gt_refs), None)
        records.append(QueryRecord(q_ids[i], {"copy rank": float(rank + 1) if rank is not None else float("nan")},
                                   data.root / data.queries[i], top=items, n_relevant=len(gt_refs)))
    step = max(1, len(curve["recall"]) // 500)
    curves = [Curve("micro precision-recall", curve["recall"][::step].tolist(),
                    curve["precision"][::step].tolist(), "recall", "precision")]
    dataset_info = {"name": "disc21", "root": str(data.root), "ground_truth_sha256": annotation_digest([data.gt_file]),
                    "queries_sha256": files_digest(data.root, data.queries),
                    "references_sha256": files_digest(data.root, data.references),
                    "queries": len(q_ids), "references": len(ref_ids), "ground_truth_pairs": len(pairs)}
    extra = {"matching": {"k": k, "max_results": max_results, "predictions": int(len(ps)),
                          "threshold_at_precision": thr90}}
    return EvalResult("disc21", metrics, base_config("disc21", options, embedder, dataset_info, rerankers, extra),
                      records, curves, per_query_metric="copy rank")
