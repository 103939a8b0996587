"""Revisited Oxford5k / Paris6k (+R1M distractors), the protocol of filipradenovic/revisitop.

Layout (what the official download scripts produce)::

    roxford5k/gnd_roxford5k.pkl      # or gnd_roxford5k.mat
    roxford5k/jpg/<name>.jpg
    revisitop1m/revisitop1m.txt      # optional distractors: one image name per line
    revisitop1m/jpg/<name>

Queries are cropped to their box; the gallery is `imlist` (+ the distractors
appended after it, so ground-truth indices are unchanged).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from loupe.eval.metrics import interpolated_pr, revisitop_protocol, revisitop_query
from loupe.storage.memory import MemoryStore, open_image

DATASETS = ("roxford5k", "rparis6k")
PROTOCOLS = {"easy": "E", "medium": "M", "hard": "H"}
KAPPAS = (1, 5, 10)

HOW_TO_GET = (
    "Get it with the official scripts of https://github.com/filipradenovic/revisitop "
    "(python/download.py: download_datasets): images from "
    "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/ (oxbuild_images.tgz) or "
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/ (paris_1.tgz, paris_2.tgz) into jpg/, "
    "and gnd_<dataset>.pkl from http://cmp.felk.cvut.cz/revisitop/data/datasets/<dataset>/."
)
HOW_TO_GET_R1M = (
    "Get the 1M distractors with download_distractors() of "
    "https://github.com/filipradenovic/revisitop (python/download.py): 100 archives from "
    "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/ into jpg/, and revisitop1m.txt."
)


@dataclass
class RevisitopData:
    name: str
    root: Path                       # folder holding gnd_<name>.pkl and jpg/
    gnd_file: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]
    distractor_root: Path | None = None
    distractors: list[str] = field(default_factory=list)   # paths relative to distractor_root

    @property
    def image_dir(self) -> Path:
        return self.root / "jpg"


def _find_root(name: str, data_dir: Path) -> Path:
    for cand in (data_dir, data_dir / name, data_dir / "datasets" / name):
        if any((cand / f"gnd_{name}{ext}").exists() for ext in (".pkl", ".mat")):
            return cand
    raise DatasetError(
        f"{name}: no gnd_{name}.pkl (or .mat) in {data_dir} or {data_dir / name}.\n{HOW_TO_GET}"
    )


def _read_gnd(path: Path) -> dict[str, Any]:
    if path.suffix == ".pkl":
        # The official ground truth is a pickle; only open files from the official source.
        with open(path, "rb") as fh:
            cfg = pickle.load(fh)
    else:
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise DatasetError(f"{path} is a .mat file: install scipy, or use the .pkl") from exc
        gt = loadmat(str(path))
        cfg = {
            "imlist": ["".join(im) for iml in np.squeeze(gt["imlist"]) for im in iml],
            "qimlist": ["".join(im) for iml in np.squeeze(gt["qimlist"]) for im in iml],
            "gnd": [_mat_entry(g) for g in np.squeeze(gt["gnd"])],
        }
    for key in ("imlist", "qimlist", "gnd"):
        if key not in cfg:
            raise DatasetError(f"{path}: ground truth has no {key!r} entry")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise DatasetError(f"{path}: {len(cfg['qimlist'])} queries but {len(cfg['gnd'])} gnd entries")
    return cfg


def _mat_entry(g: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("easy", "hard", "junk"):
        try:
            out[key] = np.asarray(g[key]).ravel().astype(np.int64) - 1  # .mat is 1-based
        except (ValueError, KeyError, IndexError):
            out[key] = np.empty(0, np.int64)
    out["bbx"] = np.asarray(g["bbx"]).ravel().astype(np.float64)
    return out


def load(name: str, data_dir: Path | str, distractors_dir: Path | str | None = None,
         check_images: bool = True) -> RevisitopData:
    """Read and check a revisited dataset folder (and optionally the R1M distractors)."""
    name = name.lower()
    if name not in DATASETS:
        raise DatasetError(f"unknown revisited dataset {name!r}: use one of {', '.join(DATASETS)}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DatasetError(f"{name}: data folder {data_dir} does not exist.\n{HOW_TO_GET}")
    root = _find_root(name, data_dir)
    gnd_file = next(root / f"gnd_{name}{ext}" for ext in (".pkl", ".mat") if (root / f"gnd_{name}{ext}").exists())
    cfg = _read_gnd(gnd_file)
    gnd = []
    n = len(cfg["imlist"])
    for i, g in enumerate(cfg["gnd"]):
        entry = {k: np.asarray(g.get(k, []), dtype=np.int64).ravel() for k in ("easy", "hard", "junk")}
        bbx = np.asarray(g.get("bbx", []), dtype=np.float64).ravel()
        if bbx.size != 4:
            raise DatasetError(f"{gnd_file}: query {i} ({cfg['qimlist'][i]}) has no 4-number bbx")
        for k in ("easy", "hard", "junk"):
            if entry[k].size and (entry[k].min() < 0 or entry[k].max() >= n):
                raise DatasetError(f"{gnd_file}: query {i} {k} index out of range 0..{n - 1}")
        entry["bbx"] = bbx
        gnd.append(entry)
    data = RevisitopData(name, root, gnd_file, list(cfg["imlist"]), list(cfg["qimlist"]), gnd)
    if check_images:
        wanted = sorted({*data.imlist, *data.qimlist})
        require_files(name, root, [data.image_dir / f"{im}.jpg" for im in wanted], HOW_TO_GET)
    if distractors_dir is not None:
        data.distractor_root, data.distractors = _load_distractors(Path(distractors_dir).expanduser(),
                                                                   check_images)
    return data


def _load_distractors(d: Path, check_images: bool) -> tuple[Path, list[str]]:
    listing = d / "revisitop1m.txt"
    require_files("revisitop1m", d, [listing], HOW_TO_GET_R1M)
    names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    rel = [f"jpg/{n}" if Path(n).suffix else f"jpg/{n}.jpg" for n in names]
    if check_images:
        require_files("revisitop1m", d, [d / r for r in rel], HOW_TO_GET_R1M)
    return d, rel


def load_features(path: Path | str, data: RevisitopData) -> tuple[np.ndarray, np.ndarray]:
    """Precomputed (Q, X) as rows: a .mat in the official layout (Q: d x nq, X: d x n, as
    revisitop's example features) or a .npz with arrays Q [nq, d] and X [n, d]."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"features file {path} does not exist")
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise DatasetError(f"{path} is a .mat file: install scipy, or save Q and X in a .npz") from exc
        mat = loadmat(str(path))
        if "Q" not in mat or "X" not in mat:
            raise DatasetError(f"{path}: needs arrays Q (d x queries) and X (d x images)")
        Q, X = np.asarray(mat["Q"]).T, np.asarray(mat["X"]).T
    elif path.suffix == ".npz":
        with np.load(path) as z:
            if "Q" not in z or "X" not in z:
                raise DatasetError(f"{path}: needs arrays Q [queries, d] and X [images, d]")
            Q, X = z["Q"], z["X"]
    else:
        raise DatasetError(f"{path}: features must be a .mat (official layout) or .npz file")
    n = len(data.imlist) + len(data.distractors)
    if Q.shape[0] != len(data.qimlist) or X.shape[0] != n or Q.shape[1] != X.shape[1]:
        raise DatasetError(f"{path}: Q {Q.shape} and X {X.shape} do not fit {len(data.qimlist)} queries and "
                           f"{n} gallery images of {data.name}")
    return np.ascontiguousarray(Q, np.float32), np.ascontiguousarray(X, np.float32)


def evaluate(data: RevisitopData, options: EvalOptions, embedder: Embedder | None = None,
             features: Path | str | None = None) -> EvalResult:
    """mAP (E/M/H) and mP@1/5/10 of the model in `options` on a loaded dataset.

    With `features` (see load_features) the given vectors are scored as they
    are (not re-normalised) and no model is loaded: the way to check the
    protocol against the official example features.
    """
    embedder = embedder or Embedder(options)
    gallery_rel = [f"{im}.jpg" for im in data.imlist]
    gallery_paths = [data.image_dir / r for r in gallery_rel]
    if data.distractor_root is not None:
        gallery_paths += [data.distractor_root / r for r in data.distractors]
    boxes = [tuple(g["bbx"]) for g in data.gnd]
    identity = None
    if features is not None:
        Q, X = load_features(features, data)
        identity = {"model": f"features:{Path(features).name}", "source": "precomputed",
                    "features_sha256": annotation_digest([Path(features).expanduser()]), "dim": int(X.shape[1])}
    else:
        X = embedder.images(data.image_dir, gallery_rel, description=f"{data.name}: gallery")
        if data.distractor_root is not None:
            D = embedder.images(data.distractor_root, data.distractors, description="revisitop1m: distractors")
            X = np.concatenate([X, D])
        Q = embedder.images(data.image_dir, [f"{q}.jpg" for q in data.qimlist], boxes=boxes,
                            description=f"{data.name}: queries (cropped)")

    rerankers = load_rerankers(options.rerank)
    store = MemoryStore(gallery_paths, X, embedder.cache.root)

    nq = len(data.qimlist)
    aps = {p: np.full(nq, np.nan) for p in PROTOCOLS}
    prs = {p: np.full((nq, len(KAPPAS)), np.nan) for p in PROTOCOLS}
    pr_sum, pr_count = None, 0
    records: list[QueryRecord] = []
    with progress_bar(options.progress, f"{data.name}: ranking", nq) as advance:
        for i in range(nq):
            def make_query(i: int = i) -> Query:
                im = open_image(data.image_dir / f"{data.qimlist[i]}.jpg").crop(boxes[i])
                return Query(vector=Q[i], image=im, box=boxes[i])

            ranking, ranked_scores = ranked(Q[i], store, rerankers, options.rerank_depth, make_query)
            per_q: dict[str, float] = {}
            for proto, letter in PROTOCOLS.items():
                g = revisitop_protocol(data.gnd[i], proto)
                aps[proto][i], prs[proto][i] = revisitop_query(ranking, g["ok"], g["junk"], KAPPAS)
                per_q[f"AP_{letter}"] = pct(aps[proto][i])
            med = revisitop_protocol(data.gnd[i], "medium")
            if med["ok"].size:
                kept = ranking[~np.isin(ranking, med["junk"])]
                rel = np.isin(kept, med["ok"])
                last = int(np.flatnonzero(rel)[-1]) + 1 if rel.any() else 0
                _, curve = interpolated_pr([rel[:last]], [med["ok"].size])
                pr_sum = curve if pr_sum is None else pr_sum + curve
                pr_count += 1
            records.append(_record(data, i, ranking, ranked_scores, gallery_paths, med, boxes[i],
                                   per_q, options.report_top))
            advance(1)

    metrics: dict[str, float] = {}
    for proto, letter in PROTOCOLS.items():
        valid = ~np.isnan(aps[proto])
        metrics[f"mAP_{letter}"] = pct(aps[proto][valid].mean()) if valid.any() else float("nan")
    for proto, letter in PROTOCOLS.items():
        valid = ~np.isnan(aps[proto])
        for j, k in enumerate(KAPPAS):
            metrics[f"mP@{k}_{letter}"] = pct(prs[proto][valid, j].mean()) if valid.any() else float("nan")

    curves = []
    if pr_count:
        grid = np.linspace(0, 1, len(pr_sum))
        curves.append(Curve("Medium: mean interpolated precision-recall", grid.tolist(),
                            (pr_sum / pr_count).tolist(), "recall", "precision"))
    dataset_info = {
        "name": data.name + ("+R1M" if data.distractor_root is not None else ""),
        "root": str(data.root),
        "ground_truth_sha256": annotation_digest([data.gnd_file]),
        "images_sha256": files_digest(data.image_dir, gallery_rel),
        "queries": nq,
        "gallery": int(len(X)),
        "distractors": len(data.distractors),
    }
    config = base_config(data.name, options, embedder, dataset_info, rerankers,
                         {"protocol_details": {"query_crop": "bbx", "junk": "removed before scoring",
                                               "kappas": list(KAPPAS)}}, identity=identity)
    return EvalResult(data.name, metrics, config, records, curves, per_query_metric="AP_M")


def _record(data: RevisitopData, i: int, ranking: np.ndarray, scores: np.ndarray,
            gallery_paths: list[Path], med: dict[str, np.ndarray], box: tuple, per_q: dict[str, float],
            top: int) -> QueryRecord:
    items = []
    for idx, s in zip(ranking[:top], scores[:top], strict=True):
        correct = True if idx in med["ok"] else (None if idx in med["junk"] else False)
        items.append(ResultItem(label=gallery_paths[idx].stem, path=gallery_paths[idx], correct=correct,
                                score=float(s)))
    return QueryRecord(name=data.qimlist[i], metrics=per_q, path=data.image_dir / f"{data.qimlist[i]}.jpg",
                       box=box, top=items, n_relevant=int(med["ok"].size))
