"""Composed image retrieval (reference image + text edit): CIRR, CIRCO, FashionIQ.

Queries go through the composed-query path of the core:
q = loupe.search.query.fuse(img(reference), txt(edit), weight) = normalise(w*img + (1-w)*txt).

Protocols follow the official evaluation code as read in miccunifi/SEARLE
(src/validate.py, src/datasets.py) and miccunifi/CIRCO (src/evaluation.py):

- CIRR: the reference image is removed from the ranking; Recall@1/5/10/50 on the
  target; Recall_subset@1/2/3 over the query's image group (img_set.members)
  without the reference. "Avg" is (R@5 + R_subset@1) / 2, the usual headline.
- CIRCO: no removal; mAP@5/10/25/50 over all ground truths with
  AP@K = sum_{k<=K} P(k) rel(k) / min(K, #gt); Recall@K on the target image.
- FashionIQ: per category (dress, shirt, toptee) against that category's
  gallery, no removal, the two captions joined as "<c1> and <c2>" (trailing
  punctuation stripped, as CLIP4Cir/SEARLE do); R@10 and R@50 and their means.

Only the validation splits carry ground truth; the test splits are scored by
the datasets' own servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

DEFAULT_WEIGHT = 0.5
FIQ_CATEGORIES = ("dress", "shirt", "toptee")

HOW_TO_GET = {
    "cirr": ("Annotations: https://github.com/Cuberick-Orion/CIRR (cirr/captions/cap.rc2.val.json, "
             "cirr/image_splits/split.rc2.val.json); images: NLVR2 (https://github.com/lil-lab/nlvr/tree/"
             "master/nlvr2#direct-image-download) unpacked so the split file's ./dev/... paths resolve."),
    "circo": ("Annotations: https://github.com/miccunifi/CIRCO (annotations/val.json); images: COCO 2017 "
              "unlabeled, http://images.cocodataset.org/zips/unlabeled2017.zip into "
              "COCO2017_unlabeled/unlabeled2017/, with "
              "http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip into "
              "COCO2017_unlabeled/annotations/."),
    "fashioniq": ("Annotations: https://github.com/XiaoxiaoGuo/fashion-iq (captions/cap.<category>.val.json, "
                  "image_splits/split.<category>.val.json); images into images/<name>.jpg (the image URLs "
                  "are in the same repository; mirrors are listed in its issues)."),
}


@dataclass
class ComposedQuery:
    qid: str
    reference: str                  # gallery name of the reference image
    text: str
    targets: list[str]              # names of the correct images (first = the target)
    subset: list[str] = field(default_factory=list)


@dataclass
class ComposedData:
    name: str
    root: Path
    annotations: list[Path]
    gallery: dict[str, list[str]]           # part (category or "all") -> gallery names
    queries: dict[str, list[ComposedQuery]]  # part -> queries
    paths: dict[str, str]                   # name -> path relative to root


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc


def _field(entry: dict, key: str, path: Path, i: int) -> Any:
    if key not in entry:
        raise DatasetError(f"{path}: entry {i} has no {key!r} field")
    return entry[key]


def load_cirr(data_dir: Path | str, check_images: bool = True) -> ComposedData:
    root = Path(data_dir).expanduser()
    cap = root / "cirr" / "captions" / "cap.rc2.val.json"
    split = root / "cirr" / "image_splits" / "split.rc2.val.json"
    require_files("cirr", root, [cap, split], HOW_TO_GET["cirr"])
    name_to_rel = {k: str(Path(v)) for k, v in _json(split).items()}
    queries = []
    for i, t in enumerate(_json(cap)):
        members = _field(t, "img_set", cap, i).get("members", [])
        queries.append(ComposedQuery(str(t.get("pairid", i)), _field(t, "reference", cap, i),
                                     _field(t, "caption", cap, i), [_field(t, "target_hard", cap, i)],
                                     list(members)))
    _check_names("cirr", cap, queries, name_to_rel)
    data = ComposedData("cirr", root, [cap, split], {"all": list(name_to_rel)}, {"all": queries}, name_to_rel)
    if check_images:
        require_files("cirr", root, [root / p for p in name_to_rel.values()], HOW_TO_GET["cirr"])
    return data


def load_circo(data_dir: Path | str, check_images: bool = True) -> ComposedData:
    root = Path(data_dir).expanduser()
    ann = root / "annotations" / "val.json"
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    require_files("circo", root, [ann, info], HOW_TO_GET["circo"])
    images = _json(info).get("images", [])
    name_to_rel = {str(im["id"]): f"COCO2017_unlabeled/unlabeled2017/{im['file_name']}" for im in images}
    queries = []
    for i, a in enumerate(_json(ann)):
        gts = [str(g) for g in _field(a, "gt_img_ids", ann, i)]
        target = str(_field(a, "target_img_id", ann, i))
        if not gts or gts[0] != target:
            gts = [target] + [g for g in gts if g != target]
        queries.append(ComposedQuery(str(a.get("id", i)), str(_field(a, "reference_img_id", ann, i)),
                                     _field(a, "relative_caption", ann, i), gts))
    _check_names("circo", ann, queries, name_to_rel)
    data = ComposedData("circo", root, [ann, info], {"all": list(name_to_rel)}, {"all": queries}, name_to_rel)
    if check_images:
        require_files("circo", root, [root / p for p in name_to_rel.values()], HOW_TO_GET["circo"])
    return data


def fiq_text(captions: Sequence[str]) -> str:
    """The two FashionIQ captions as one edit, as CLIP4Cir and SEARLE join them."""
    if len(captions) != 2:
        return " and ".join(c.strip(".?, ") for c in captions)
    return f"{captions[0].strip('.?, ')} and {captions[1].strip('.?, ')}"


def load_fashioniq(data_dir: Path | str, categories: Sequence[str] = FIQ_CATEGORIES,
                   check_images: bool = True) -> ComposedData:
    root = Path(data_dir).expanduser()
    for c in categories:
        if c not in FIQ_CATEGORIES:
            raise DatasetError(f"fashioniq: unknown category {c!r}; use {', '.join(FIQ_CATEGORIES)}")
    files = [root / "captions" / f"cap.{c}.val.json" for c in categories] + \
            [root / "image_splits" / f"split.{c}.val.json" for c in categories]
    require_files("fashioniq", root, files, HOW_TO_GET["fashioniq"])
    gallery, queries, anns = {}, {}, []
    names: set[str] = set()
    for c in categories:
        cap, split = root / "captions" / f"cap.{c}.val.json", root / "image_splits" / f"split.{c}.val.json"
        anns += [cap, split]
        gallery[c] = list(_json(split))
        queries[c] = [ComposedQuery(f"{c}-{i}", _field(t, "candidate", cap, i),
                                    fiq_text(_field(t, "captions", cap, i)), [_field(t, "target", cap, i)])
                      for i, t in enumerate(_json(cap))]
        names |= set(gallery[c]) | {q.reference for q in queries[c]} | {q.targets[0] for q in queries[c]}
    rel = {}
    for n in sorted(names):
        rel[n] = next((f"images/{n}{ext}" for ext in (".jpg", ".png") if (root / f"images/{n}{ext}").exists()),
                      f"images/{n}.jpg")
    data = ComposedData("fashioniq", root, anns, gallery, queries, rel)
    if check_images:
        require_files("fashioniq", root, [root / p for p in rel.values()], HOW_TO_GET["fashioniq"])
    return data


def _check_names(name: str, path: Path, queries: list[ComposedQuery], known: dict[str, str]) -> None:
    for q in queries:
        for n in [q.reference, *q.targets]:
            if n not in known:
                raise DatasetError(f"{path}: query {q.qid} names image {n!r}, which the image list lacks")


def _fuse(img: np.ndarray, txt: np.ndarray, weight: float) -> np.ndarray:
    from loupe.search.query import fuse

    return fuse(img, txt, weight)


def _rankings(data: ComposedData, part: str, options: EvalOptions, embedder: Embedder, weight: float,
              exclude_reference: bool, rerankers: list[Any]
              ) -> Iterator[tuple[ComposedQuery, np.ndarray, np.ndarray, list[str], list[Path]]]:
    """Yield (query, ranking, scores, gallery names, gallery paths) per query of one part."""
    names = data.gallery[part]
    rel = [data.paths[n] for n in names]
    X = embedder.images(data.root, rel, description=f"{data.name} {part}: gallery")
    queries = data.queries[part]
    pos = {n: i for i, n in enumerate(names)}
    outside = sorted({q.reference for q in queries if q.reference not in pos})
    R = embedder.images(data.root, [data.paths[n] for n in outside], description=f"{data.name}: references") \
        if outside else np.zeros((0, X.shape[1]), np.float32)
    ref_vec = {n: R[i] for i, n in enumerate(outside)}
    T = embedder.texts([q.text for q in queries], description=f"{data.name} {part}: edits")
    paths = [data.root / r for r in rel]
    store = MemoryStore(paths, X, embedder.cache.root)
    with progress_bar(options.progress, f"{data.name} {part}: ranking", len(queries)) as advance:
        for i, q in enumerate(queries):
            img = X[pos[q.reference]] if q.reference in pos else ref_vec[q.reference]
            vec = _fuse(img, T[i], weight)
            exclude = [pos[q.reference]] if exclude_reference and q.reference in pos else []

            def make_query(q: ComposedQuery = q, vec: np.ndarray = vec) -> Query:
                return Query(vector=vec, text=q.text, image=open_image(data.root / data.paths[q.reference]))

            ranking, scores = ranked(vec, store, rerankers, options.rerank_depth, make_query,
                                     exclude=exclude)
            yield q, ranking, scores, names, paths
            advance(1)


def _target_rank(ranking: np.ndarray, target: int | None) -> int:
    if target is None:
        return -1
    hit = np.flatnonzero(ranking == target)
    return int(hit[0]) if hit.size else -1


def _record(q: ComposedQuery, ranking: np.ndarray, scores: np.ndarray, names: list[str], paths: list[Path],
            correct: set[int], metrics: dict[str, float], data: ComposedData, top: int) -> QueryRecord:
    items = [ResultItem(names[j], paths[j], j in correct, float(s))
             for j, s in zip(ranking[:top], scores[:top], strict=True)]
    return QueryRecord(f"{q.reference} + {q.text!r}", metrics, data.root / data.paths[q.reference], text=q.text,
                       top=items, n_relevant=len(q.targets))


def evaluate(data: ComposedData, options: EvalOptions, embedder: Embedder | None = None,
             weight: float = DEFAULT_WEIGHT, exclude_reference: bool | None = None) -> EvalResult:
    """Score one composed dataset; `exclude_reference` defaults to the protocol's rule."""
    embedder = embedder or Embedder(options)
    if exclude_reference is None:
        exclude_reference = data.name == "cirr"
    rerankers = load_rerankers(options.rerank)
    metrics: dict[str, float] = {}
    records: list[QueryRecord] = []
    per_query_metric = "rank"
    if data.name == "cirr":
        ranks, sub_ranks = [], []
        for q, ranking, scores, names, paths in _rankings(data, "all", options, embedder, weight,
                                                          exclude_reference, rerankers):
            pos = {n: i for i, n in enumerate(names)}
            t = pos.get(q.targets[0])
            r = _target_rank(ranking, t)
            members = {pos[m] for m in q.subset if m in pos and m != q.reference}
            sub = ranking[np.isin(ranking, list(members))]
            sr = _target_rank(sub, t)
            ranks.append(r)
            sub_ranks.append(sr)
            records.append(_record(q, ranking, scores, names, paths, {t} if t is not None else set(),
                                   {"rank": float(r + 1) if r >= 0 else float("nan"),
                                    "subset rank": float(sr + 1) if sr >= 0 else float("nan")},
                                   data, options.report_top))
        ranks_a, sub_a = np.asarray(ranks), np.asarray(sub_ranks)
        for k in (1, 5, 10, 50):
            metrics[f"R@{k}"] = pct(np.mean((ranks_a >= 0) & (ranks_a < k)))
        for k in (1, 2, 3):
            metrics[f"R_subset@{k}"] = pct(np.mean((sub_a >= 0) & (sub_a < k)))
        metrics["Avg"] = (metrics["R@5"] + metrics["R_subset@1"]) / 2
    elif data.name == "circo":
        ks = (5, 10, 25, 50)
        aps = {k: [] for k in ks}
        recalls = {k: [] for k in ks}
        for q, ranking, scores, names, paths in _rankings(data, "all", options, embedder, weight,
                                                          exclude_reference, rerankers):
            pos = {n: i for i, n in enumerate(names)}
            gts = {pos[g] for g in q.targets if g in pos}
            rel = np.isin(ranking[:max(ks)], list(gts))
            r = _target_rank(ranking, pos.get(q.targets[0]))
            for k in ks:
                aps[k].append(ap_at_k(rel[None], len(q.targets), k)[0])
                recalls[k].append(float(0 <= r < k))
            records.append(_record(q, ranking, scores, names, paths, gts, {"AP@10": pct(aps[10][-1])},
                                   data, options.report_top))
        for k in ks:
            metrics[f"mAP@{k}"] = pct(np.mean(aps[k]))
        for k in ks:
            metrics[f"R@{k}"] = pct(np.mean(recalls[k]))
        per_query_metric = "AP@10"
    elif data.name == "fashioniq":
        for part in data.gallery:
            ranks = []
            for q, ranking, scores, names, paths in _rankings(data, part, options, embedder, weight,
                                                              exclude_reference, rerankers):
                t = {n: i for i, n in enumerate(names)}.get(q.targets[0])
                r = _target_rank(ranking, t)
                ranks.append(r)
                records.append(_record(q, ranking, scores, names, paths, {t} if t is not None else set(),
                                       {"rank": float(r + 1) if r >= 0 else float("nan")},
                                       data, options.report_top))
            ra = np.asarray(ranks)
            for k in (10, 50):
                metrics[f"{part} R@{k}"] = pct(np.mean((ra >= 0) & (ra < k)))
        parts = list(data.gallery)
        metrics["mean R@10"] = float(np.mean([metrics[f"{p} R@10"] for p in parts]))
        metrics["mean R@50"] = float(np.mean([metrics[f"{p} R@50"] for p in parts]))
        metrics["average"] = (metrics["mean R@10"] + metrics["mean R@50"]) / 2
    else:
        raise DatasetError(f"unknown composed dataset {data.name!r}")

    all_names = sorted({n for g in data.gallery.values() for n in g})
    dataset_info = {"name": data.name, "root": str(data.root), "split": "val",
                    "annotations_sha256": annotation_digest(data.annotations),
                    "images_sha256": files_digest(data.root, [data.paths[n] for n in all_names]),
                    "queries": sum(len(v) for v in data.queries.values()), "gallery": len(all_names)}
    extra = {"composed": {"fusion": "loupe.search.query.fuse: normalise(w*img + (1-w)*txt)", "weight": weight,
                          "exclude_reference": exclude_reference}}
    return EvalResult(data.name, metrics, base_config(data.name, options, embedder, dataset_info, rerankers, extra),
                      records, per_query_metric=per_query_metric)
