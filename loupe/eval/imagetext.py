"""Flickr30k (1k test) and MSCOCO (5k test) image-text retrieval, Karpathy splits.

Conventions of LAION's CLIP_benchmark (clip_benchmark/metrics/zeroshot_retrieval.py):
score the full text x image matrix; text->image R@K counts a caption as a hit
when its image is in its top K; image->text R@K counts an image as a hit when
any of its captions is in its top K. Captions are used as written, no prompt.

Accepted layouts (`--data DIR`):

    flickr30k: flickr30k_test_karpathy.txt  (CLIP_benchmark: header, then `image.jpg,caption`)
               or dataset_flickr30k.json    (Karpathy's caption_datasets, split == "test")
               images in flickr30k-images/, Images/, images/ or DIR itself
    coco:      coco_test_karpathy.json      (CLIP_benchmark: COCO captions format)
               or dataset_coco.json         (Karpathy's caption_datasets, split == "test")
               images in val2014/ (or as the annotation's path says)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    pct,
    progress_bar,
    require_files,
)
from loupe.eval.metrics import first_positive_rank, rank_topk, recall_from_ranks

KS = (1, 5, 10)

HOW_TO_GET = {
    "flickr30k": (
        "Images: the Flickr30k request form at https://shannon.cs.illinois.edu/DenotationGraph/ "
        "(flickr30k-images/). Test split: "
        "https://github.com/mehdidc/retrieval_annotations/releases/download/1.0.0/flickr30k_test_karpathy.txt "
        "(CLIP_benchmark), or dataset_flickr30k.json from "
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip."
    ),
    "coco": (
        "Images: http://images.cocodataset.org/zips/val2014.zip (unpack to val2014/). Test split: "
        "https://github.com/mehdidc/retrieval_annotations/releases/download/1.0.0/coco_test_karpathy.json "
        "(CLIP_benchmark), or dataset_coco.json from "
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip."
    ),
}


@dataclass
class ImageTextData:
    name: str
    root: Path
    annotation: Path
    images: list[str]              # paths relative to root
    captions: list[str]
    caption_image: np.ndarray      # image index of each caption


def load(name: str, data_dir: Path | str, check_images: bool = True) -> ImageTextData:
    name = name.lower()
    if name not in HOW_TO_GET:
        raise DatasetError(f"unknown image-text dataset {name!r}: use flickr30k or coco")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{name}: data folder {root} does not exist.\n{HOW_TO_GET[name]}")
    if name == "flickr30k":
        candidates = [root / "flickr30k_test_karpathy.txt", root / "dataset_flickr30k.json"]
    else:
        candidates = [root / "coco_test_karpathy.json", root / "dataset_coco.json"]
    ann = next((p for p in candidates if p.exists()), None)
    if ann is None:
        raise DatasetError(
            f"{name}: no test split annotation in {root} (looked for "
            f"{', '.join(p.name for p in candidates)}).\n{HOW_TO_GET[name]}"
        )
    if ann.suffix == ".txt":
        pairs = _read_clip_benchmark_txt(ann)
    elif ann.name.startswith("dataset_"):
        pairs = _read_karpathy_json(ann)
    else:
        pairs = _read_coco_captions(ann)
    image_names: list[str] = []
    index: dict[str, int] = {}
    captions, owner = [], []
    for img, cap in pairs:
        if img not in index:
            index[img] = len(image_names)
            image_names.append(img)
        captions.append(cap)
        owner.append(index[img])
    if not captions:
        raise DatasetError(f"{ann}: no test captions found")
    rel = [_resolve(root, name, im) for im in image_names]
    if check_images:
        require_files(name, root, [root / r for r in rel], HOW_TO_GET[name])
    return ImageTextData(name, root, ann, rel, captions, np.asarray(owner, np.int64))


def _resolve(root: Path, name: str, image: str) -> str:
    folders = ["flickr30k-images", "Images", "images", ""] if name == "flickr30k" else ["val2014", ""]
    for f in folders:
        rel = f"{f}/{image}" if f else image
        if (root / rel).exists():
            return rel
    return f"{folders[0]}/{image}" if folders[0] else image   # reported as missing by the caller


def _read_clip_benchmark_txt(path: Path) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        fh.readline()  # header
        for lineno, line in enumerate(fh, start=2):
            line = line.strip()
            if not line:
                continue
            # captions may hold commas: split at the image name's ending, as CLIP_benchmark does
            img, sep, cap = line.partition(".jpg,")
            if not sep:
                raise DatasetError(f"{path}:{lineno}: expected 'image.jpg,caption', got {line[:80]!r}")
            out.append((img + ".jpg", cap))
    return out


def _read_karpathy_json(path: Path) -> list[tuple[str, str]]:
    data = _json(path)
    out = []
    for im in data.get("images", []):
        if im.get("split") != "test":
            continue
        name = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        out.extend((name, s["raw"]) for s in im.get("sentences", []))
    return out


def _read_coco_captions(path: Path) -> list[tuple[str, str]]:
    data = _json(path)
    try:
        files = {im["id"]: im["file_name"] for im in data["images"]}
        anns = data["annotations"]
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a COCO captions file (needs images[].file_name, "
                           f"annotations[].image_id/caption)") from exc
    # captions grouped by image in the order of `images`, like torchvision's CocoCaptions
    by_image: dict[int, list[str]] = {i: [] for i in files}
    for a in anns:
        if a["image_id"] not in by_image:
            raise DatasetError(f"{path}: caption {a.get('id')} names unknown image {a['image_id']}")
        by_image[a["image_id"]].append(a["caption"])
    return [(files[i], c) for i in files for c in by_image[i]]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc


def evaluate(data: ImageTextData, options: EvalOptions, embedder: Embedder | None = None,
             chunk: int = 1024) -> EvalResult:
    embedder = embedder or Embedder(options)
    img = embedder.images(data.root, data.images, description=f"{data.name}: images")
    T = embedder.texts(data.captions, description=f"{data.name}: captions")
    n_img, n_txt = len(img), len(T)
    t2i = np.empty(n_txt, np.int64)
    top_t2i = np.empty((n_txt, min(options.report_top, n_img)), np.int64)
    with progress_bar(options.progress, f"{data.name}: text->image", n_txt) as advance:
        for s in range(0, n_txt, chunk):
            S = T[s:s + chunk] @ img.T
            pos = np.zeros_like(S, dtype=bool)
            pos[np.arange(len(S)), data.caption_image[s:s + chunk]] = True
            t2i[s:s + chunk] = first_positive_rank(S, pos)
            top_t2i[s:s + chunk] = rank_topk(S, top_t2i.shape[1])
            advance(len(S))
    i2t = np.empty(n_img, np.int64)
    with progress_bar(options.progress, f"{data.name}: image->text", n_img) as advance:
        for s in range(0, n_img, chunk):
            S = img[s:s + chunk] @ T.T
            pos = data.caption_image[None, :] == np.arange(s, s + len(S))[:, None]
            i2t[s:s + chunk] = first_positive_rank(S, pos)
            advance(len(S))

    metrics = {}
    for direction, ranks in (("text->image", t2i), ("image->text", i2t)):
        for k, v in recall_from_ranks(ranks, KS).items():
            metrics[f"{direction} R@{k}"] = pct(v)
    metrics["mean recall"] = float(np.mean(list(metrics.values())))

    kmax = 50
    curves = [
        Curve(f"{d} Recall@K", list(range(1, kmax + 1)),
              [pct(v) for v in recall_from_ranks(r, range(1, kmax + 1)).values()], "K", "recall (%)")
        for d, r in (("text->image", t2i), ("image->text", i2t))
    ]
    records = []
    for c in range(n_txt):
        top = [ResultItem(label=Path(data.images[j]).name, path=data.root / data.images[j],
                          correct=bool(j == data.caption_image[c])) for j in top_t2i[c]]
        records.append(QueryRecord(name=data.captions[c], text=data.captions[c],
                                   metrics={"rank": float(t2i[c] + 1)}, top=top, n_relevant=1))
    dataset_info = {
        "name": data.name, "root": str(data.root), "annotation": data.annotation.name,
        "annotation_sha256": annotation_digest([data.annotation]),
        "images_sha256": files_digest(data.root, data.images),
        "images": n_img, "captions": n_txt,
    }
    config = base_config(data.name, options, embedder, dataset_info, [],
                         {"protocol_details": {"conventions": "LAION CLIP_benchmark zeroshot_retrieval",
                                               "ties": "higher score first, then lower index"}})
    return EvalResult(data.name, metrics, config, records, curves,
                      notes=["per-query 'rank' is the 1-based rank of the caption's image (text->image)"],
                      per_query_metric="rank")
