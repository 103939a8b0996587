"""Gain versus rerank depth on real photos, over a first stage that genuinely retrieves.

    flock /tmp/loupe-bench.lock python benchmarks/depth.py        # 11 min on 2 shared cores
    python benchmarks/depth.py --depths 5,20 --stride 4 --learned-queries 0 --compare ""   # a quick look

The question: how much does spatial verification add as it looks deeper into the first
stage's list (M = 5, 10, 20, 50, all), and what does each depth cost per query? The answer
depends on the first stage, so it must be one that retrieves. No trained global model can
be downloaded here, so the first stage is a classical, training-free global descriptor:

- `vlad` (default): VLAD (Jegou et al., CVPR 2010) of the same RootSIFT features that
  `spatial` matches (OpenCV SIFT, 1000 keypoints, longer side 1024), 64 visual words,
  signed square root, intra-normalised, L2-normalised (8192-d). The 64 words are k-means
  (faiss, fixed seed) on RootSIFT of the ten UKBench photos in
  ../shared/data/imagededup_testdata/base_images: photos that are not in the database, so
  nothing about the test set is learned. It lives in this script, not in `loupe.models`:
  it is a baseline for this measurement, not an encoder anyone should index a library with.
- `histogram`: the colour histogram of benchmarks/rerank.py (HSV 8x4x4, square-rooted), a
  weak first stage, for contrast.

`--compare` also scores each candidate first stage alone on the same queries
(`first_stage_alone` in the JSON): VLAD retrieves by content; the colour histogram does well
on the Strecha crops only because the scenes differ in colour, and fails on copies; a
ResNet-50 with random weights is near useless.

Database: every Strecha photo (93) and every Sacre Coeur photo (10 originals, 70 rotated,
70 scaled copies): 243 images. Queries (`--stride` keeps every n-th):
- strecha crops: one square crop of 300-800 px of each Strecha photo (seeded), the photo it
  was cut from left out of the ranking; relevant = the other photos of the same building.
- sacre coeur copies: each original, and one rotated and one scaled copy of each, left out
  of their own ranking; relevant = the other copies of the same original (other photos of
  the basilica are not copies, as in benchmarks/rerank.py).

Ground truth, Strecha: a scene without its -Pnn suffix is one building (Herz-Jesus-P8/P25
one church, castle-P19/P30 one castle). The data README's rule "another scene group is a
non-match" does not hold for castle, entry and fountain: they are one courtyard (entry-P10
is its gateway, the fountain stands in it, castle photos show both), and whether a given
pair shares content depends on the viewpoint. For a query from one of them the other two
are junk (removed from the ranking before scoring, as in the revisited Oxford/Paris
protocol): neither right nor wrong. Herz-Jesus and Sacre Coeur are non-matches for them.

Every ranking goes through the evaluation harness (`loupe.eval.common.ranked`, i.e.
`loupe.search.pipeline.run` over an in-memory gallery: the code path of `loupe eval` and of
`loupe search`); scores are `loupe.eval.metrics.revisitop_query` (AP with junk, mP@k).
Database local features are precomputed as `loupe index --local-features` does; a query's
own features are extracted inside each rerank call and counted in its time.

`spatial-learned` (DISK + LightGlue) runs with *random weights* (nothing can be
downloaded here): its rows are timing only, on `--learned-queries` queries at
`--learned-depths`; its rankings mean nothing and are not scored.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learned import load, machine  # noqa: E402  (the benchmarks' machine and load record)

from loupe.core.types import Query  # noqa: E402
from loupe.eval.common import ranked  # noqa: E402
from loupe.eval.metrics import revisitop_query  # noqa: E402
from loupe.search.stages.spatial import LocalFeatures, Spatial, SpatialLearned, precompute  # noqa: E402
from loupe.storage.memory import MemoryStore, open_image  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "depth.json"
COURTYARD = ("castle", "entry", "fountain")   # one castle courtyard: see the docstring
KAPPAS = (1, 5, 10)


# -- photos and ground truth ------------------------------------------------------------------------


@dataclass
class Photos:
    paths: list[Path]
    groups: list[str]        # a relevant set: a building (Strecha) or one original and its copies
    strecha: int             # paths[:strecha] are the Strecha photos


def photos() -> Photos:
    strecha = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    originals = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))
    copies = sorted((DATA / "sacre_coeur").glob("mapping_*/*.jpg"))
    if not strecha or not originals or not copies:
        raise SystemExit(f"photos not found under {DATA} (the Strecha and Sacre Coeur folders)")
    groups = [re.sub(r"-P\d+$", "", p.parent.name) for p in strecha]
    groups += [re.sub(r"_(rot|scale)[\d.]+$", "", p.stem) for p in originals + copies]
    return Photos(strecha + originals + copies, groups, len(strecha))


def truth(groups: list[str], source: int) -> dict[str, np.ndarray]:
    """Relevant ('ok') and junk ids for a query made from photo `source` (itself in neither)."""
    g = np.array(groups)
    ok = np.flatnonzero(g == g[source])
    ok = ok[ok != source]
    junk = np.empty(0, np.int64)
    if g[source] in COURTYARD:
        junk = np.flatnonzero(np.isin(g, COURTYARD) & (g != g[source]))
    return {"ok": ok, "junk": junk}


@dataclass
class QuerySpec:
    collection: str                       # "strecha crops" or "sacre coeur copies"
    source: int                           # the database photo it comes from (left out)
    box: tuple[int, int, int, int] | None # crop of the source, None: the whole photo

    def image(self, data: Photos) -> Image.Image:
        im = open_image(data.paths[self.source])
        return im.crop(self.box) if self.box else im


def queries(data: Photos, stride: int, seed: int = 0) -> list[QuerySpec]:
    rng = random.Random(seed)
    out = []
    for i in range(data.strecha):
        with Image.open(data.paths[i]) as im:
            width, height = im.size
        side = rng.randint(300, 800)
        x, y = rng.randint(0, width - side), rng.randint(0, height - side)
        out.append(QuerySpec("strecha crops", i, (x, y, x + side, y + side)))
    originals = [i for i in range(data.strecha, len(data.paths)) if data.paths[i].parent.name == "mapping"]
    for k, i in enumerate(originals):
        mine = [j for j, p in enumerate(data.paths) if p.stem.startswith(data.paths[i].stem + "_")]
        rot = [j for j in mine if "_rot" in data.paths[j].stem]
        scale = [j for j in mine if "_scale" in data.paths[j].stem]
        out += [QuerySpec("sacre coeur copies", j, None) for j in (i, rot[k % len(rot)], scale[k % len(scale)])]
    return out[::stride]


# -- first stages -----------------------------------------------------------------------------------


def _rootsift(desc: np.ndarray) -> np.ndarray:
    x = desc.astype(np.float32)
    return np.sqrt(x / np.maximum(x.sum(axis=1, keepdims=True), 1e-12))


class Vlad:
    """VLAD of RootSIFT over a small codebook learned on photos outside the database."""

    def __init__(self, spatial: Spatial, train: list[Path], words: int = 64, seed: int = 0):
        import faiss

        descriptors = np.concatenate([_rootsift(spatial.extract(open_image(p)).descriptors) for p in train])
        kmeans = faiss.Kmeans(descriptors.shape[1], words, niter=25, seed=seed)
        kmeans.train(descriptors)
        self.centroids = kmeans.centroids
        self.index = kmeans.index
        self.train_descriptors = len(descriptors)
        self.dim = words * descriptors.shape[1]

    def encode(self, feats: LocalFeatures) -> np.ndarray:
        words = len(self.centroids)
        out = np.zeros((words, self.centroids.shape[1]), np.float32)
        if len(feats):
            desc = _rootsift(feats.descriptors)
            _, nearest = self.index.search(desc, 1)
            np.add.at(out, nearest[:, 0], desc - self.centroids[nearest[:, 0]])
        out = np.sign(out) * np.sqrt(np.abs(out))                                   # power law
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)      # intra-norm
        vec = out.ravel()
        return vec / max(float(np.linalg.norm(vec)), 1e-12)


def histogram(image: Image.Image) -> np.ndarray:
    small = image.copy()
    small.thumbnail((128, 128))
    hsv = np.asarray(small.convert("HSV")).reshape(-1, 3).astype(np.float32)
    counts = np.histogramdd(hsv, bins=(8, 4, 4), range=((0, 256),) * 3)[0]
    vec = np.sqrt(counts.ravel() / counts.sum()).astype(np.float32)
    return vec / np.linalg.norm(vec)


def random_resnet() -> Callable[[Image.Image], np.ndarray]:
    """GeM-pooled last block of a ResNet-50 with random weights (timm, fixed seed), 384 px."""
    import timm
    import torch

    torch.manual_seed(0)
    net = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="").eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def encode(image: Image.Image) -> np.ndarray:
        small = image.copy()
        small.thumbnail((384, 384))
        x = torch.from_numpy(((np.asarray(small) / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)
        with torch.inference_mode():
            fmap = net.forward_features(x[None])
        vec = fmap.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3)[0].numpy()
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    return encode


def compare_first_stages(data: Photos, specs: list[QuerySpec], sift: Spatial, store: MemoryStore,
                         cache_root: Path, names: list[str]) -> dict[str, Any]:
    """First stage alone, same queries and ground truth: which descriptor retrieves."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        if name == "random-resnet50":
            encode = random_resnet()
            matrix = np.stack([encode(open_image(p)) for p in data.paths])
        else:
            matrix, encode, _ = first_stage(name, sift, store, data)
        gallery = MemoryStore(data.paths, matrix.astype(np.float32), cache_root)
        aps: dict[str, list[float]] = {}
        for spec in specs:
            ids, _ = ranked(encode(spec.image(data)), gallery, exclude=[spec.source])
            aps.setdefault(spec.collection, []).append(score(ids, truth(data.groups, spec.source))[0])
        out[name] = {**{c: 100 * float(np.mean(v)) for c, v in sorted(aps.items())},
                     "s": round(time.perf_counter() - t0, 1)}
        print(f"  first stage alone, {name}: " + ", ".join(f"{c} mAP {100 * np.mean(v):.1f}"
                                                          for c, v in sorted(aps.items())), flush=True)
    return out


def first_stage(name: str, sift: Spatial, store: MemoryStore, data: Photos
                ) -> tuple[np.ndarray, Callable[[Image.Image], np.ndarray], dict[str, Any]]:
    """Database matrix, the query encoder, and what the first stage is."""
    t0 = time.perf_counter()
    if name == "histogram":
        matrix = np.stack([histogram(open_image(p)) for p in data.paths])
        return matrix, histogram, {"name": "histogram", "what": "HSV 8x4x4 colour histogram, square-rooted",
                                   "database_s_per_image": (time.perf_counter() - t0) / len(data.paths)}
    train = sorted((DATA / "imagededup_testdata" / "base_images").glob("*.jpg"))
    vlad = Vlad(sift, train)
    cache = sift.cache(store)
    matrix = np.stack([vlad.encode(sift.features(store, i, cache)) for i in range(len(data.paths))])
    info = {"name": "vlad", "what": "VLAD-64 of RootSIFT (1000 keypoints, 1024 px), signed sqrt, "
            "intra-normalised, L2; codebook: k-means on the 10 UKBench photos of imagededup_testdata",
            "codebook_photos": [p.name for p in train], "codebook_descriptors": vlad.train_descriptors,
            "dim": vlad.dim, "database_s_per_image": (time.perf_counter() - t0) / len(data.paths),
            "note": "database SIFT features come from the spatial cache, precomputed"}
    return matrix, lambda image: vlad.encode(sift.extract(image)), info


# -- the measurement --------------------------------------------------------------------------------


def depth_label(m: int, n: int) -> str:
    return "all" if m >= n else str(m)


def score(ids: np.ndarray, gt: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    return revisitop_query(ids, gt["ok"], gt["junk"], KAPPAS)


def run_first_stage(name: str, data: Photos, specs: list[QuerySpec], depths: list[int], store: MemoryStore,
                    sift: Spatial, cache_root: Path) -> dict[str, Any]:
    matrix, encode, info = first_stage(name, sift, store, data)
    gallery = MemoryStore(data.paths, matrix.astype(np.float32), cache_root)   # shares the feature cache
    n = len(data.paths) - 1          # candidates per query (its source is left out)
    per_query: list[dict[str, Any]] = []
    for count, spec in enumerate(specs, start=1):
        image = spec.image(data)
        gt = truth(data.groups, spec.source)
        t0 = time.perf_counter()
        vec = encode(image)
        ids, _ = ranked(vec, gallery, exclude=[spec.source])
        first_ms = 1000 * (time.perf_counter() - t0)
        ap, prs = score(ids, gt)
        first_rank = [int(i) for i in ids]
        row: dict[str, Any] = {
            "collection": spec.collection, "source": str(data.paths[spec.source].relative_to(DATA)),
            "box": spec.box, "relevant": len(gt["ok"]), "junk": len(gt["junk"]), "first_stage_ms": first_ms,
            "depths": {"0": {"AP": ap, "P": prs.tolist()}},
        }
        for m in depths:
            label = depth_label(m, n)
            ids, _ = ranked(vec, gallery, [sift], min(m, n), lambda image=image, vec=vec: Query(vector=vec, image=image),
                            exclude=[spec.source])
            ap, prs = score(ids, gt)
            row["depths"][label] = {
                "AP": ap, "P": prs.tolist(),
                # positives the first stage put inside the reranked head: spatial can only reorder these
                "recall_in_head": len(set(first_rank[:min(m, n)]) & set(gt["ok"].tolist())) / max(len(gt["ok"]), 1),
                "wall_ms": 1000 * sift.timings["total_s"], "cpu_ms": 1000 * sift.timings["cpu_s"],
                "verified": sift.evidence.get("verified"), "threshold": sift.evidence.get("min_inliers_needed"),
            }
        per_query.append(row)
        if count % 10 == 0 or count == len(specs):
            print(f"  [{name}] {count}/{len(specs)} queries, load {load()}", flush=True)
    return {"first_stage": info, "summary": summarise(per_query, depths, n), "per_query": per_query}


def summarise(rows: list[dict[str, Any]], depths: list[int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for collection in sorted({r["collection"] for r in rows}) + ["all"]:
        sel = [r for r in rows if collection in ("all", r["collection"])]
        table = []
        for label in ["0"] + [depth_label(m, n) for m in depths]:
            cells = [r["depths"][label] for r in sel]
            entry = {
                "depth": "first stage" if label == "0" else label, "queries": len(sel),
                "mAP": 100 * float(np.mean([c["AP"] for c in cells])),
                **{f"mP@{k}": 100 * float(np.mean([c["P"][j] for c in cells])) for j, k in enumerate(KAPPAS)},
            }
            if label != "0":
                entry.update({
                    "recall_in_head": 100 * float(np.mean([c["recall_in_head"] for c in cells])),
                    "wall_ms_median": statistics.median(c["wall_ms"] for c in cells),
                    "wall_ms_p95": float(np.percentile([c["wall_ms"] for c in cells], 95)),
                    "cpu_ms_median": statistics.median(c["cpu_ms"] for c in cells),
                })
            table.append(entry)
        out[collection] = {"first_stage_ms_median": statistics.median(r["first_stage_ms"] for r in sel),
                           "rows": table}
    return out


def learned_timing(data: Photos, specs: list[QuerySpec], depths: list[int], gallery: MemoryStore,
                   encode: Callable[[Image.Image], np.ndarray]) -> dict[str, Any]:
    """spatial-learned with random weights, through the same harness: cost only."""
    learned = SpatialLearned(weights="random", device="cpu")
    heads = set()
    vecs = []
    for spec in specs:
        vec = encode(spec.image(data))
        vecs.append(vec)
        ids, _ = ranked(vec, gallery, exclude=[spec.source])
        heads.update(int(i) for i in ids[:max(depths)])
    t0, c0 = time.perf_counter(), time.process_time()
    counts = precompute(gallery, sorted(heads), reranker=learned)
    extract = {"images": len(heads), "wall_s_per_image": (time.perf_counter() - t0) / max(len(heads), 1),
               "cpu_s_per_image": (time.process_time() - c0) / max(len(heads), 1), "counts": counts}
    rows = []
    for spec, vec in zip(specs, vecs, strict=True):
        image = spec.image(data)
        for m in depths:
            ranked(vec, gallery, [learned], m, lambda image=image, vec=vec: Query(vector=vec, image=image),
                   exclude=[spec.source])
            t = learned.timings
            rows.append({"source": str(data.paths[spec.source].relative_to(DATA)), "depth": m,
                         "wall_ms": 1000 * t["total_s"], "cpu_ms": 1000 * t["cpu_s"],
                         "query_features_ms": 1000 * t.get("query_features_s", 0.0),
                         "verify_ms_per_candidate": 1000 * t.get("verify_s", 0.0) / m})
        print(f"  [spatial-learned] {spec.source} done, load {load()}", flush=True)
    return {"weights": "random (timing only: the matches mean nothing)", "settings": learned.params(),
            "database_features": extract, "queries": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "command": "python benchmarks/depth.py " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_average_1min": {"start": load()},
    }
    data = photos()
    specs = queries(data, args.stride)
    depths = [int(d) for d in args.depths.split(",")]
    sift = Spatial()
    result.update({"images": len(data.paths), "queries": len(specs), "depths": depths,
                   "spatial": sift.params(), "ground_truth": __doc__.split("Ground truth, Strecha: ")[1]
                   .split("\n\n")[0].replace("\n", " ")})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loupe-depth-") as tmp:
        cache_root = Path(tmp)
        store = MemoryStore(data.paths, np.zeros((len(data.paths), 1), np.float32), cache_root)
        t0 = time.perf_counter()
        counts = precompute(store, range(len(data.paths)), reranker=sift)
        result["sift_database_features"] = {"s_per_image": (time.perf_counter() - t0) / len(data.paths),
                                            "counts": counts}
        print(f"{len(data.paths)} images, {len(specs)} queries, depths {depths}; SIFT features cached",
              flush=True)
        result["runs"] = {}
        for name in args.first_stage.split(","):
            result["runs"][name] = run_first_stage(name, data, specs, depths, store, sift, cache_root)
            result["load_average_1min"][f"after_{name}"] = load()
            save(result, args.out)       # each part is kept even if a later one is interrupted
        if args.compare:
            result["first_stage_alone"] = compare_first_stages(data, specs, sift, store, cache_root,
                                                               args.compare.split(","))
            result["load_average_1min"]["after_compare"] = load()
            save(result, args.out)
        if args.learned_queries:
            matrix, encode, _ = first_stage("vlad", sift, store, data)
            gallery = MemoryStore(data.paths, matrix.astype(np.float32), cache_root)
            picked = [s for s in specs if s.collection == "strecha crops"][:args.learned_queries]
            learned_depths = [int(d) for d in args.learned_depths.split(",")]
            result["spatial_learned"] = learned_timing(data, picked, learned_depths, gallery, encode)
            result["load_average_1min"]["after_learned"] = load()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def save(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(out)


def table(result: dict[str, Any]) -> str:
    lines = []
    for name, run_ in result["runs"].items():
        for collection, block in run_["summary"].items():
            rows = block["rows"]
            base = rows[0]["mAP"]
            lines += [f"first stage {name}, {collection}: {rows[0]['queries']} queries, first stage "
                      f"{block['first_stage_ms_median']:.0f} ms per query (median)", "",
                      "| M | mAP | change | mP@1 | mP@5 | mP@10 | positives in the head | added ms per query "
                      "(median / p95) | added CPU ms (median) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in rows:
                timing = (f"{r['recall_in_head']:.1f}% | {r['wall_ms_median']:.0f} / {r['wall_ms_p95']:.0f} | "
                          f"{r['cpu_ms_median']:.0f}") if "wall_ms_median" in r else "- | - | -"
                lines.append(f"| {r['depth']} | {r['mAP']:.1f} | {r['mAP'] - base:+.1f} | {r['mP@1']:.1f} | "
                             f"{r['mP@5']:.1f} | {r['mP@10']:.1f} | {timing} |")
            lines.append("")
    if "first_stage_alone" in result:
        lines += ["first stage alone (mAP): " + "; ".join(
            f"{name}: " + ", ".join(f"{c} {v:.1f}" for c, v in r.items() if c != "s")
            for name, r in result["first_stage_alone"].items()), ""]
    if "spatial_learned" in result:
        sl = result["spatial_learned"]
        ext = sl["database_features"]
        lines.append(f"spatial-learned, random weights (timing only): database features "
                     f"{ext['wall_s_per_image']:.1f} s per image (CPU {ext['cpu_s_per_image']:.1f} s)")
        lines += ["", "| query | M | ms per query | CPU ms | query features ms | verify ms per candidate |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in sl["queries"]:
            lines.append(f"| {r['source']} | {r['depth']} | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | "
                         f"{r['query_features_ms']:.0f} | {r['verify_ms_per_candidate']:.0f} |")
    lines.append(f"load average (1 min): {result['load_average_1min']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--first-stage", default="vlad", help="vlad, histogram, or both comma-separated")
    parser.add_argument("--depths", default="5,10,20,50,1000",
                        help="rerank depths M (a depth past the gallery is 'all')")
    parser.add_argument("--stride", type=int, default=2, help="keep every n-th query (1: all 123)")
    parser.add_argument("--learned-queries", type=int, default=1,
                        help="Strecha crop queries timed with spatial-learned (random weights); 0: skip")
    parser.add_argument("--learned-depths", default="5", help="depths for the spatial-learned timing")
    parser.add_argument("--compare", default="histogram,vlad,random-resnet50",
                        help="first stages scored alone first (no reranking), to show which retrieves; '' skips")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    unknown = set(args.first_stage.split(",")) - {"vlad", "histogram"}
    unknown |= set(filter(None, args.compare.split(","))) - {"vlad", "histogram", "random-resnet50"}
    if unknown:
        parser.error(f"unknown first stage(s) {sorted(unknown)}; known: vlad, histogram "
                     "(and random-resnet50 for --compare)")
    try:
        if any(int(d) < 1 for d in args.depths.split(",") + args.learned_depths.split(",")):
            raise ValueError
    except ValueError:
        parser.error("--depths and --learned-depths are comma-separated positive integers")
    if args.stride < 1 or args.learned_queries < 0:
        parser.error("--stride must be at least 1 and --learned-queries at least 0")
    result = run(args)
    print(table(result))
    save(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
