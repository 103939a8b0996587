"""Your own labelled queries against any Loupe library: mAP, Recall@K, nDCG@10.

The queries file is a CSV of `query,relevant` rows (the header is optional):

    query,relevant
    a red bicycle,bikes/IMG_0042.jpg
    a red bicycle,bikes/IMG_0043.jpg        # several rows = several relevant images
    queries/tower.jpg,paris/eiffel_01.jpg   # an image query (a path ending like an image)
    a unicorn,                              # no relevant image: counted, left out of the means

`query` is text, or the path of an image (absolute, or relative to the CSV's
folder, the current folder or the library root); `relevant` is a path of an
indexed image, relative to the library root. An image query that is itself
indexed is searched by its stored vector and never counts as its own result.

Definitions: AP = sum_k P(k) rel(k) / #relevant over the full ranking;
Recall@K = |relevant in the top K| / #relevant; nDCG@10 binary with the ideal
list holding min(#relevant, 10) positives; MRR = 1 / rank of the first hit.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loupe.core.config import IMAGE_SUFFIXES
from loupe.eval.cache import annotation_digest
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
)
from loupe.eval.metrics import (
    average_precision,
    interpolated_pr,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)

KS = (1, 5, 10)


@dataclass
class CustomQuery:
    line: int                       # first CSV line of this query
    query: str
    image: Path | None              # set for image queries
    relevant: list[tuple[int, str]] = field(default_factory=list)   # (CSV line, path relative to root)


@dataclass
class CustomData:
    csv_path: Path
    queries: list[CustomQuery]


def _image_path(value: str, csv_dir: Path, root: Path | None) -> Path | None:
    if not value.lower().endswith(IMAGE_SUFFIXES):
        return None
    p = Path(value).expanduser()
    cands = [p] if p.is_absolute() else [csv_dir / p, Path.cwd() / p] + ([root / p] if root else [])
    return next((c.resolve() for c in cands if c.is_file()), None)


def load(csv_path: Path | str, library_root: Path | None = None) -> CustomData:
    """Parse and check a queries CSV; errors name the line."""
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DatasetError(f"queries file {path} does not exist (a CSV of query,relevant rows)")
    by_query: dict[str, CustomQuery] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and [c.strip().lower() for c in row] == ["query", "relevant"]:
                continue
            if len(row) == 1 and (";" in row[0] or "\t" in row[0]):
                sep = "';'" if ";" in row[0] else "a tab"
                raise DatasetError(f"{path}:{lineno}: fields separated by {sep}: the queries file is a CSV "
                                   "with commas ('query,relevant'); quote a query that contains commas")
            if len(row) > 2:
                raise DatasetError(f"{path}:{lineno}: expected 'query,relevant', got {len(row)} fields "
                                   "(quote a query that contains commas)")
            query = row[0].strip()
            relevant = row[1].strip() if len(row) > 1 else ""
            if not query:
                raise DatasetError(f"{path}:{lineno}: empty query")
            q = by_query.get(query)
            if q is None:
                image = _image_path(query, path.parent, library_root)
                if image is None and query.lower().endswith(IMAGE_SUFFIXES) and " " not in query:
                    raise DatasetError(f"{path}:{lineno}: image query {query!r} not found (looked next to the "
                                       f"CSV, in the current folder and in the library root)")
                q = by_query[query] = CustomQuery(lineno, query, image)
            if relevant:
                q.relevant.append((lineno, _relative(relevant, library_root, path, lineno)))
    if not by_query:
        raise DatasetError(f"{path}: no queries")
    return CustomData(path, list(by_query.values()))


def _relative(value: str, root: Path | None, path: Path, lineno: int) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        if root is None:
            return p.as_posix()
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: relevant image {value} is outside the library root {root}") \
                from None
    return p.as_posix()


def evaluate(data: CustomData, library: object, options: EvalOptions) -> EvalResult:
    """Score the queries against `library` (a loupe.Library)."""
    from loupe.core.errors import QueryError

    lib = library
    ids = lib.vectors_of_space.ids()
    if len(ids) == 0:
        raise DatasetError(f"library {lib.path} has no indexed images: run `loupe index` first")
    rerankers = load_rerankers(options.rerank)
    need_pixels = any(getattr(r, "needs_pixels", False) for r in rerankers)
    rel_ids: list[set[int]] = []
    for q in data.queries:
        found = set()
        for lineno, rel in q.relevant:
            image_id = lib.id_of_path(rel)
            if image_id is None:
                raise DatasetError(f"{data.csv_path}:{lineno}: relevant image {rel!r} is not indexed in "
                                   f"{lib.path} (root {lib.root})")
            found.add(int(image_id))
        rel_ids.append(found)

    rows, records, pr_rels, pr_ns = [], [], [], []
    with progress_bar(options.progress, "custom: queries", len(data.queries)) as advance:
        for q, relevant in zip(data.queries, rel_ids, strict=True):
            try:
                if q.image is not None:
                    try:
                        like = lib.resolve(q.image)
                    except QueryError:
                        like = None
                    query = lib.make_query(like=like, need_pixels=need_pixels) if like is not None \
                        else lib.make_query(image=q.image, need_pixels=need_pixels)
                else:
                    query = lib.make_query(q.query)
            except QueryError as exc:
                raise DatasetError(f"{data.csv_path}:{q.line}: {exc}") from exc
            ranking, scores = ranked(query.vector, lib.store, rerankers, options.rerank_depth,
                                     lambda query=query: query, exclude=sorted(query.exclude_ids),
                                     k=len(ids))
            rel = np.isin(ranking, list(relevant))[None]
            n = len(relevant)
            row = {"AP": average_precision(rel, n)[0], **{f"R@{k}": recall_at_k(rel, n, k)[0] for k in KS},
                   "nDCG@10": ndcg_at_k(rel, n, 10)[0], "MRR": reciprocal_rank(rel)[0] if n else np.nan}
            rows.append(row)
            if n:
                last = int(np.flatnonzero(rel[0])[-1]) + 1 if rel.any() else 0
                pr_rels.append(rel[0][:last])
                pr_ns.append(n)
            top = [ResultItem(lib.record(int(i))["path"], lib.image_path(int(i)), bool(int(i) in relevant),
                              float(s))
                   for i, s in zip(ranking[:options.report_top], scores[:options.report_top], strict=True)]
            records.append(QueryRecord(q.query, {k: pct(v) for k, v in row.items()}, path=q.image,
                                       text=None if q.image is not None else q.query, top=top, n_relevant=n))
            advance(1)

    valid = [r for r in rows if not np.isnan(r["AP"])]
    names = ["AP", *[f"R@{k}" for k in KS], "nDCG@10", "MRR"]
    metrics = {("mAP" if k == "AP" else k): pct(np.mean([r[k] for r in valid])) if valid else float("nan")
               for k in names}
    notes = []
    if len(valid) < len(rows):
        notes.append(f"{len(rows) - len(valid)} of {len(rows)} queries have no relevant image and are "
                     "left out of the means")
    grid, curve = interpolated_pr(pr_rels, pr_ns)
    curves = [Curve("mean interpolated precision-recall", grid.tolist(), curve.tolist(), "recall", "precision")] \
        if pr_ns else []
    embedder = Embedder(EvalOptions(use_cache=False), lib.encoder)
    dataset_info = {"name": "custom", "queries_csv": str(data.csv_path),
                    "queries_sha256": annotation_digest([data.csv_path]), "queries": len(rows),
                    "library": str(lib.path), "library_root": str(lib.root), "library_images": int(len(ids)),
                    "library_model": lib.identity}
    config = base_config("custom", options, embedder, dataset_info, rerankers,
                         {"index": {**(lib.stats()["index"] or {}),
                                    "similarity": "inner product of L2-normalised vectors",
                                    "dba": lib.stats()["dba"]}})
    config["options"]["model"] = lib.identity.get("model_name") if lib.identity else options.model
    return EvalResult("custom", metrics, config, records, curves, notes, per_query_metric="AP")
