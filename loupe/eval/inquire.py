"""INQUIRE (NeurIPS 2024): expert text-to-image queries over iNat24.

Two tasks, as in inquire-benchmark/INQUIRE (src/eval_fullrank.py,
src/eval_rerank_with_clip.py, src/metrics.py):

- fullrank: rank the whole gallery, score the top k = 50 of each query with
  AP@k = sklearn-AP(top k) * hits / min(#relevant, k) (tied scores form one
  threshold), nDCG@k (never-retrieved positives appended at the bottom), MRR.
- rerank: each query comes with a fixed list of 100 images labelled relevant
  or not; order them by similarity (and rerankers) and score the whole list
  with #relevant = the positives among the 100.

Layout (`--data DIR`)::

    inquire_queries_<split>.csv     # query_id, query_text, ...       (fullrank)
    inquire_annotations.csv         # query_id, image_path: the relevant pairs (fullrank)
    train/...                       # the iNat24 images, or --gallery DIR (fullrank)
    inquire_rerank.csv              # query, image_path, relevant[, split] (rerank)

Annotation images are matched to gallery files by file name without
extension (iNat24 names are unique UUIDs), so either relative-path style works.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loupe.core.types import Query
from loupe.eval.cache import annotation_digest, files_digest
from loupe.eval.common import (
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
from loupe.eval.metrics import ap_at_k_scored, ndcg_at_k_scored, reciprocal_rank
from loupe.search import pipeline
from loupe.storage.memory import MemoryStore

K = 50
HOW_TO_GET = (
    "Get INQUIRE from https://github.com/inquire-benchmark/INQUIRE (data/README.md): "
    "inquire_queries_{val,test}.csv and inquire_annotations.csv; iNat24 images from "
    "https://ml-inat-competition-datasets.s3.amazonaws.com/2024/train.tar.gz. For the rerank task "
    "export the Hugging Face dataset evendrow/INQUIRE-Rerank to inquire_rerank.csv + images "
    "(see the README section 'Evaluation')."
)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in required if c not in fields]
        if missing:
            raise DatasetError(f"{path}:1: missing column(s) {', '.join(missing)} (has {', '.join(fields)})")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if any(row.get(c) in (None, "") for c in required):
                raise DatasetError(f"{path}:{lineno}: empty {', '.join(c for c in required if not row.get(c))}")
            rows.append(row)
    return rows


def _truthy(value: str, path: Path, lineno: int) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "1.0"):
        return True
    if v in ("0", "false", "no", "0.0"):
        return False
    raise DatasetError(f"{path}:{lineno}: 'relevant' must be 0/1 or true/false, got {value!r}")


@dataclass
class FullrankData:
    root: Path
    files: list[Path]
    gallery_root: Path
    gallery: list[str]                  # paths relative to gallery_root
    query_ids: list[str]
    query_texts: list[str]
    relevant: list[set[str]]            # per query: relevant file stems


def load_fullrank(data_dir: Path | str, split: str = "test", gallery_dir: Path | str | None = None) -> FullrankData:
    root = Path(data_dir).expanduser()
    qfile, afile = root / f"inquire_queries_{split}.csv", root / "inquire_annotations.csv"
    require_files("inquire", root, [qfile, afile], HOW_TO_GET)
    queries = _read_csv(qfile, ("query_id", "query_text"))
    ann = _read_csv(afile, ("query_id", "image_path"))
    rel: dict[str, set[str]] = {}
    for lineno, a in enumerate(ann, start=2):
        if "relevant" in a and a["relevant"] not in (None, "") and not _truthy(a["relevant"], afile, lineno):
            continue
        rel.setdefault(a["query_id"], set()).add(Path(a["image_path"]).stem)
    groot = Path(gallery_dir).expanduser() if gallery_dir else root / "train"
    if not groot.is_dir():
        raise DatasetError(f"inquire: gallery folder {groot} does not exist (pass --gallery).\n{HOW_TO_GET}")
    gallery = sorted(str(p.relative_to(groot)) for p in groot.rglob("*.jpg"))
    if not gallery:
        raise DatasetError(f"inquire: no .jpg images under {groot}.\n{HOW_TO_GET}")
    return FullrankData(root, [qfile, afile], groot, gallery, [q["query_id"] for q in queries],
                        [q["query_text"] for q in queries], [rel.get(q["query_id"], set()) for q in queries])


def evaluate_fullrank(data: FullrankData, options: EvalOptions, embedder: Embedder | None = None,
                      k: int = K) -> EvalResult:
    embedder = embedder or Embedder(options)
    X = embedder.images(data.gallery_root, data.gallery, description="inquire: gallery")
    T = embedder.texts(data.query_texts, description="inquire: queries")
    stems = np.array([Path(g).stem for g in data.gallery])
    paths = [data.gallery_root / g for g in data.gallery]
    rerankers = load_rerankers(options.rerank)
    store = MemoryStore(paths, X, embedder.cache.root)
    rows, records = [], []
    with progress_bar(options.progress, "inquire: ranking", len(T)) as advance:
        for i, text in enumerate(data.query_texts):
            def make_query(i: int = i) -> Query:
                return Query(vector=T[i], text=data.query_texts[i])

            ranking, scores = ranked(T[i], store, rerankers, options.rerank_depth, make_query)
            top, top_scores = ranking[:k], scores[:k]
            rel = np.isin(stems[top], list(data.relevant[i]))
            n_rel = len(data.relevant[i])
            tie_scores = _tie_scores(top_scores, bool(rerankers))
            nan = float("nan")
            row = {f"AP@{k}": ap_at_k_scored(rel, tie_scores, n_rel, k),
                   f"nDCG@{k}": ndcg_at_k_scored(rel, tie_scores, n_rel, k),
                   "MRR": float(reciprocal_rank(rel[None])[0]) if n_rel else nan,
                   f"P@{k}": float(rel.sum() / k) if n_rel else nan,
                   f"R@{k}": float(rel.sum() / n_rel) if n_rel else nan}
            rows.append(row)
            items = [ResultItem(Path(data.gallery[j]).name, paths[j], bool(r), float(s))
                     for j, r, s in zip(top[:options.report_top], rel, top_scores, strict=False)]
            records.append(QueryRecord(text, {name: pct(v) for name, v in row.items()}, text=text, top=items,
                                       n_relevant=n_rel))
            advance(1)
    valid = [r for r in rows if not np.isnan(r[f"AP@{k}"])]
    metrics = {f"m{name}" if name.startswith("AP") else name:
               pct(np.mean([r[name] for r in valid])) if valid else float("nan")
               for name in (f"AP@{k}", f"nDCG@{k}", "MRR", f"P@{k}", f"R@{k}")}
    notes = [f"{len(rows) - len(valid)} queries without a relevant image are left out"] \
        if len(valid) < len(rows) else []
    dataset_info = {"name": "inquire-fullrank", "root": str(data.root),
                    "annotations_sha256": annotation_digest(data.files),
                    "gallery_sha256": files_digest(data.gallery_root, data.gallery),
                    "queries": len(T), "gallery": len(data.gallery)}
    config = base_config("inquire-fullrank", options, embedder, dataset_info, rerankers, {"k": k})
    return EvalResult("inquire-fullrank", metrics, config, records, notes=notes, per_query_metric=f"AP@{k}")


def _tie_scores(scores: np.ndarray, reranked: bool) -> np.ndarray:
    """Scores the tie-aware metrics read: the similarities of a first-stage ranking, or,
    after rerankers (whose head and tail scores are not on one scale), the positions."""
    return -np.arange(len(scores), dtype=np.float64) if reranked else np.asarray(scores, np.float64)


@dataclass
class RerankData:
    root: Path
    file: Path
    queries: list[str]
    images: list[str]                    # unique image paths relative to root
    lists: list[tuple[np.ndarray, np.ndarray]]   # per query: image indices, relevance


def load_rerank(data_dir: Path | str, split: str | None = None, check_images: bool = True) -> RerankData:
    root = Path(data_dir).expanduser()
    f = root / "inquire_rerank.csv"
    require_files("inquire", root, [f], HOW_TO_GET)
    rows = _read_csv(f, ("query", "image_path", "relevant"))
    index: dict[str, int] = {}
    per_query: dict[str, tuple[list[int], list[bool]]] = {}
    for lineno, r in enumerate(rows, start=2):
        if split is not None and r.get("split") not in (None, "", split):
            continue
        img = index.setdefault(r["image_path"], len(index))
        ids, rel = per_query.setdefault(r["query"], ([], []))
        ids.append(img)
        rel.append(_truthy(r["relevant"], f, lineno))
    if not per_query:
        raise DatasetError(f"{f}: no rows" + (f" for split {split!r}" if split else ""))
    images = list(index)
    if check_images:
        require_files("inquire", root, [root / p for p in images], HOW_TO_GET)
    return RerankData(root, f, list(per_query), images,
                      [(np.asarray(ids, np.int64), np.asarray(rel, bool)) for ids, rel in per_query.values()])


def evaluate_rerank(data: RerankData, options: EvalOptions, embedder: Embedder | None = None) -> EvalResult:
    embedder = embedder or Embedder(options)
    X = embedder.images(data.root, data.images, description="inquire-rerank: images")
    T = embedder.texts(data.queries, description="inquire-rerank: queries")
    paths = [data.root / p for p in data.images]
    rerankers = load_rerankers(options.rerank)
    rows, records = [], []
    for i, text in enumerate(data.queries):
        ids, rel = data.lists[i]
        # candidates carry positions in this query's fixed list: its store holds only
        # those images, so a reranker that searches again (alpha-QE) stays inside the task
        store = MemoryStore([paths[j] for j in ids], X[ids], embedder.cache.root)
        cands = pipeline.run(Query(vector=T[i], text=text), store, len(ids), rerankers,
                             options.rerank_depth)
        rel_sorted = rel[cands.ids]
        ranked_images = ids[cands.ids]
        n_rel = int(rel.sum())
        n = len(ids)
        tie_scores = _tie_scores(cands.scores, bool(rerankers))
        row = {"AP": ap_at_k_scored(rel_sorted, tie_scores, n_rel, n) if n_rel else float("nan"),
               "nDCG": ndcg_at_k_scored(rel_sorted, tie_scores, n_rel, n) if n_rel else float("nan"),
               "MRR": float(reciprocal_rank(rel_sorted[None])[0])}
        rows.append(row)
        items = [ResultItem(Path(data.images[j]).name, paths[j], bool(r), float(s))
                 for j, r, s in zip(ranked_images[:options.report_top], rel_sorted, cands.scores, strict=False)]
        records.append(QueryRecord(text, {k: pct(v) for k, v in row.items()}, text=text, top=items,
                                   n_relevant=n_rel))
    valid = [r for r in rows if not np.isnan(r["AP"])]
    metrics = {"mAP": pct(np.mean([r["AP"] for r in valid])) if valid else float("nan"),
               "nDCG": pct(np.mean([r["nDCG"] for r in valid])) if valid else float("nan"),
               "MRR": pct(np.mean([r["MRR"] for r in valid])) if valid else float("nan")}
    dataset_info = {"name": "inquire-rerank", "root": str(data.root), "annotations_sha256": annotation_digest([data.file]),
                    "images_sha256": files_digest(data.root, data.images), "queries": len(data.queries),
                    "images": len(data.images)}
    notes = [f"{len(rows) - len(valid)} queries without a relevant image are left out"] if len(valid) < len(rows) else []
    config = base_config("inquire-rerank", options, embedder, dataset_info, rerankers)
    return EvalResult("inquire-rerank", metrics, config, records, notes=notes, per_query_metric="AP")
