"""Google Landmarks v2 retrieval: mAP@100 from the official CSVs.

Definition of tensorflow/models research/delf/.../google_landmarks_dataset/metrics.py
(MeanAveragePrecision, max_predictions=100) with its solution reader
(dataset_file_io.ReadSolution): `Ignored` rows are left out, Public and
Private queries are scored separately, AP@100 = sum_{k<=100} P(k) rel(k) /
min(#relevant, 100).

Layout (`--data DIR`, as the official download unpacks)::

    retrieval_solution_v2.1.csv    # id,images,Usage  (images space-separated)
    index.csv                      # optional: id column; else index/ is walked
    index/a/b/c/abc....jpg
    test/a/b/c/abc....jpg
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
from loupe.eval.metrics import ap_at_k
from loupe.storage.memory import MemoryStore, open_image

K = 100
SOLUTION = "retrieval_solution_v2.1.csv"
HOW_TO_GET = (
    "Get GLDv2 from https://github.com/cvdfoundation/google-landmark: the index and test "
    "image archives (download-dataset.sh / index_000.tar ... and test_000.tar ...), and "
    "https://s3.amazonaws.com/google-landmark/ground_truth/retrieval_solution_v2.1.csv."
)


def image_rel(folder: str, image_id: str) -> str:
    return f"{folder}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


@dataclass
class GLDv2Data:
    root: Path
    solution_file: Path
    queries: list[str]
    usage: list[str]                 # Public | Private
    relevant: list[list[str]]
    index_ids: list[str]


def load(data_dir: Path | str, check_images: bool = True) -> GLDv2Data:
    root = Path(data_dir).expanduser()
    sol = root / SOLUTION
    require_files("gldv2", root, [sol], HOW_TO_GET)
    queries, usage, relevant = [], [], []
    with open(sol, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["id", "images", "Usage"]:
            raise DatasetError(f"{sol}:1: expected the header 'id,images,Usage', got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 3:
                raise DatasetError(f"{sol}:{lineno}: expected 3 fields (id,images,Usage), got {len(row)}")
            qid, images, use = row
            if use == "Ignored":
                continue
            if use not in ("Public", "Private"):
                raise DatasetError(f"{sol}:{lineno}: unknown Usage {use!r} (Public, Private or Ignored)")
            queries.append(qid)
            usage.append(use)
            relevant.append(images.split(" "))
    index_csv = root / "index.csv"
    if index_csv.exists():
        with open(index_csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows and "id" not in rows[0]:
            raise DatasetError(f"{index_csv}:1: expected an 'id' column")
        index_ids = [r["id"] for r in rows]
    else:
        if not (root / "index").is_dir():
            raise DatasetError(f"gldv2: neither index.csv nor index/ in {root}.\n{HOW_TO_GET}")
        index_ids = sorted(p.stem for p in (root / "index").rglob("*.jpg"))
    if check_images:
        paths = [root / image_rel("test", q) for q in queries] + [root / image_rel("index", i) for i in index_ids]
        require_files("gldv2", root, paths, HOW_TO_GET)
    return GLDv2Data(root, sol, queries, usage, relevant, index_ids)


def evaluate(data: GLDv2Data, options: EvalOptions, embedder: Embedder | None = None) -> EvalResult:
    embedder = embedder or Embedder(options)
    index_rel = [image_rel("index", i) for i in data.index_ids]
    X = embedder.images(data.root, index_rel, description="gldv2: index")
    Q = embedder.images(data.root, [image_rel("test", q) for q in data.queries], description="gldv2: queries")
    rerankers = load_rerankers(options.rerank)
    paths = [data.root / r for r in index_rel]
    store = MemoryStore(paths, X, embedder.cache.root)
    position = {i: n for n, i in enumerate(data.index_ids)}

    aps = np.empty(len(data.queries))
    records = []
    with progress_bar(options.progress, "gldv2: ranking", len(data.queries)) as advance:
        for n, qid in enumerate(data.queries):
            def make_query(n: int = n) -> Query:
                return Query(vector=Q[n], image=open_image(data.root / image_rel("test", data.queries[n])))

            ranking, scores = ranked(Q[n], store, rerankers, options.rerank_depth, make_query)
            relevant = {position[r] for r in data.relevant[n] if r in position}
            rel = np.isin(ranking[:K], list(relevant))
            # the official count: every listed relevant image, even one missing from the index
            aps[n] = ap_at_k(rel[None, :], len(data.relevant[n]), K)[0]
            top = [ResultItem(data.index_ids[j], paths[j], bool(j in relevant), float(s))
                   for j, s in zip(ranking[:options.report_top], scores[:options.report_top], strict=True)]
            records.append(QueryRecord(qid, {"AP@100": pct(aps[n])}, data.root / image_rel("test", qid),
                                       top=top, n_relevant=len(data.relevant[n])))
            advance(1)
    usage = np.asarray(data.usage)
    metrics = {
        "mAP@100 Public": pct(aps[usage == "Public"].mean()) if (usage == "Public").any() else float("nan"),
        "mAP@100 Private": pct(aps[usage == "Private"].mean()) if (usage == "Private").any() else float("nan"),
        "mAP@100 all": pct(aps.mean()) if len(aps) else float("nan"),
    }
    dataset_info = {"name": "gldv2", "root": str(data.root), "solution_sha256": annotation_digest([data.solution_file]),
                    "index_sha256": files_digest(data.root, index_rel), "queries": len(data.queries),
                    "index": len(data.index_ids)}
    return EvalResult("gldv2", metrics, base_config("gldv2", options, embedder, dataset_info, rerankers),
                      records, per_query_metric="AP@100")
