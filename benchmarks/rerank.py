"""What each reranker adds on real photos: mAP, and latency as a multiple of the first stage.

    python benchmarks/rerank.py                  # a few minutes on 2 CPU cores
    python benchmarks/rerank.py --first-stage histogram,loupe-tiny   # both, one table each
    python benchmarks/rerank.py --spatial-depth 100 --strecha-stride 1  # spatial's default M, all queries

Data: ../shared/data. Database = every Strecha photo (93; a scene name without
its -Pnn suffix is one relevant set) and every Sacre Coeur photo (10
originals, each with its 7 rotated and 7 scaled copies as one relevant set):
243 images. Queries: every other Strecha photo (`--strecha-stride`), every
original, and one rotated and one scaled copy of each original (77), each left
out of its own ranking. mAP is also given per collection: Strecha is instance
retrieval (same building, other viewpoints); Sacre Coeur is copy retrieval
(the other originals show the same landmark but are not relevant).

Castle, entry and fountain are one courtyard (entry-P10 is its gateway, the
fountain stands in it, castle photos show both; spatial verification finds
them, with boxes): the data README's "another scene group is a non-match" is
wrong for them, and whether a given pair shares content depends on the
viewpoint. For a query from one of them the other two are junk: removed from
the ranking before AP, as in the revisited Oxford/Paris protocol.

The first stage is weight-free on purpose (no model can be downloaded here):
`histogram` is a colour histogram (HSV 8x4x4, square-rooted, L2-normalised);
`loupe-tiny` is the project's random-weight test model. Absolute mAP says
little about a real model; the point is the relative gain of each reranker
and what it costs per query.

First-stage latency per query = decode the query file + encode + search.
Added latency = the rerank chain alone (`loupe.search.pipeline.apply`), with database
local features already cached on disk (as after `loupe index --local-features`);
query features are extracted per query and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loupe.core.types import Query  # noqa: E402
from loupe.index import dba  # noqa: E402
from loupe.search import pipeline  # noqa: E402
from loupe.search import stages as rerank  # noqa: E402
from loupe.search.stages.spatial import Spatial, precompute  # noqa: E402
from loupe.storage.memory import MemoryStore  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COURTYARD = ("castle", "entry", "fountain")   # one castle courtyard: see the docstring
OUT = Path(__file__).resolve().parent / "results" / "rerank.json"


def dataset(strecha_stride: int = 1) -> tuple[list[Path], np.ndarray, list[int]]:
    strecha = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    originals = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))
    copies = sorted((DATA / "sacre_coeur").glob("mapping_*/*.jpg"))
    if not strecha or not originals:
        raise SystemExit(f"photos not found under {DATA}")
    paths = strecha + originals + copies
    groups = [re.sub(r"-P\d+$", "", p.parent.name) for p in strecha]
    groups += [re.sub(r"_(rot|scale)[\d.]+$", "", p.stem) for p in originals + copies]
    # Queries: all of Strecha, each original, and one rotated and one scaled copy
    # of each original (the k-th original gets the k-th angle and scale).
    queries = list(range(0, len(strecha), strecha_stride))
    queries += list(range(len(strecha), len(strecha) + len(originals)))
    for k, original in enumerate(originals):
        mine = [i for i, p in enumerate(paths) if p.stem.startswith(original.stem + "_")]
        rot = [i for i in mine if "_rot" in paths[i].stem]
        scale = [i for i in mine if "_scale" in paths[i].stem]
        queries += [rot[k % len(rot)], scale[k % len(scale)]]
    return paths, np.array(groups), queries


def histogram_encoder() -> Callable[[Image.Image], np.ndarray]:
    def encode(image: Image.Image) -> np.ndarray:
        small = image.copy()
        small.thumbnail((128, 128))
        hsv = np.asarray(small.convert("HSV")).reshape(-1, 3)
        counts = np.histogramdd(hsv.astype(np.float32), bins=(8, 4, 4), range=((0, 256),) * 3)[0]
        vec = np.sqrt(counts.ravel() / counts.sum()).astype(np.float32)
        return vec / np.linalg.norm(vec)

    return encode


def tiny_model_encoder() -> Callable[[Image.Image], np.ndarray]:
    from loupe.models.openclip import load_encoder

    encoder = load_encoder("loupe-tiny:random", device="cpu")
    return lambda image: encoder.encode_images([image])[0]


FIRST_STAGES = {"histogram": histogram_encoder, "loupe-tiny": tiny_model_encoder}


def average_precision(ranking: np.ndarray, relevant: set[int]) -> float:
    hits = np.isin(ranking, list(relevant))
    ranks = np.flatnonzero(hits)
    return float(np.sum((np.arange(len(ranks)) + 1) / (ranks + 1)) / len(relevant))


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    data = dataset(args.strecha_stride)
    paths = data[0]
    sift = Spatial(depth=args.spatial_depth)
    orb = Spatial(depth=args.spatial_depth, detector="orb")
    with tempfile.TemporaryDirectory(prefix="loupe-rerank-bench-") as tmp:
        features = MemoryStore(paths, np.zeros((len(paths), 1), np.float32), Path(tmp))
        offline = {}
        for name, spatial in (("sift", sift), ("orb", orb)):
            t0 = time.perf_counter()
            counts = precompute(features, range(len(paths)), reranker=spatial)
            offline[f"local_features_{name}_s_per_image"] = (time.perf_counter() - t0) / len(paths)
            assert counts["failed"] == 0, counts
        runs = [evaluate(name, data, Path(tmp), sift, orb) for name in args.first_stage.split(",")]
    return {
        "command": "python benchmarks/rerank.py " + " ".join(sys.argv[1:]),
        "images": len(paths),
        "queries": len(data[2]),
        "spatial_depth": args.spatial_depth,
        "offline": offline,
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, {os.cpu_count()} cores",
        # Other work on the same machine inflates every latency; this says how much there was.
        "load_average_1min_start_end": [load_before, os.getloadavg()[0]],
        "runs": runs,
    }


def evaluate(first_stage: str, data: tuple, cache_root: Path, sift: Spatial, orb: Spatial) -> dict:
    paths, groups, queries = data
    encode = FIRST_STAGES[first_stage]()
    print(f"{len(paths)} images, {len(queries)} queries, first stage: {first_stage}", flush=True)

    t0 = time.perf_counter()
    matrix = np.stack([encode(Image.open(p).convert("RGB")) for p in paths]).astype(np.float32)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    augmented = dba.augment(matrix, dba.DEFAULT_K, dba.DEFAULT_ALPHA)
    dba_s = time.perf_counter() - t0
    plain = MemoryStore(paths, matrix, cache_root)
    with_dba = MemoryStore(paths, augmented, cache_root)

    m = sift.depth
    configs: list[tuple[str, MemoryStore, list]] = [
        ("first stage", plain, []),
        ("+ superglobal", plain, rerank.get("superglobal")),
        ("+ qe", plain, rerank.get("qe")),
        ("DBA index", with_dba, []),
        ("DBA index + qe", with_dba, rerank.get("qe")),
        (f"+ spatial (M={m})", plain, [sift]),
        (f"+ spatial-orb (M={m})", plain, [orb]),
        (f"+ superglobal,spatial (M={m})", plain, [rerank.get("superglobal")[0], sift]),
    ]
    aps: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    added: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    first_ms: list[float] = []

    for n, qi in enumerate(queries):
        relevant = set(np.flatnonzero(groups == groups[qi]).tolist()) - {qi}
        junk = np.flatnonzero(np.isin(groups, COURTYARD) & (groups != groups[qi])) \
            if groups[qi] in COURTYARD else np.empty(0, np.int64)
        t0 = time.perf_counter()
        image = Image.open(paths[qi]).convert("RGB")
        vec = encode(image)
        plain.search_vector(vec, len(paths), exclude=(qi,))
        first_ms.append((time.perf_counter() - t0) * 1000)
        query = Query(vector=vec, image=image, exclude_ids=frozenset({qi}))  # no filters
        for label, store, chain in configs:
            candidates = store.search_vector(vec, len(paths), exclude=(qi,))
            t0 = time.perf_counter()
            ranked = pipeline.apply(chain, query, candidates, store)
            added[label].append((time.perf_counter() - t0) * 1000)
            assert len(ranked) == len(paths) - 1 and len(set(ranked.ids.tolist())) == len(ranked)
            aps[label].append(average_precision(ranked.ids[~np.isin(ranked.ids, junk)], relevant))
        if (n + 1) % 20 == 0:
            print(f"  {n + 1}/{len(queries)} queries", flush=True)

    first_median = statistics.median(first_ms)
    in_strecha = np.array(["strecha" in str(paths[q]) for q in queries])
    rows = []
    for label, _, chain in configs:
        ms = np.array(added[label])
        ap = np.array(aps[label])
        rows.append({
            "config": label,
            "rerankers": [repr(r) for r in chain],
            "mAP": float(ap.mean()),
            "mAP_strecha": float(ap[in_strecha].mean()),
            "mAP_sacre_coeur": float(ap[~in_strecha].mean()),
            "added_ms_median": float(np.median(ms)),
            "added_ms_p95": float(np.percentile(ms, 95)),
            "added_x_first_stage_median": float(np.median(ms) / first_median),
            "added_x_first_stage_p95": float(np.percentile(ms, 95) / first_median),
        })
    return {
        "first_stage": first_stage,
        "first_stage_ms_median": first_median,
        "first_stage_ms_p95": float(np.percentile(first_ms, 95)),
        "encode_s_per_image": encode_s / len(paths),
        "dba_build_s": dba_s,
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = []
    for run_ in result["runs"]:
        base = run_["rows"][0]["mAP"]
        lines += [
            f"first stage: {run_['first_stage']}, {result['images']} images, "
            f"{result['queries']} queries; first-stage latency median "
            f"{run_['first_stage_ms_median']:.1f} ms; DBA build {run_['dba_build_s']:.3f} s",
            "",
            "| configuration | mAP | change | Strecha | Sacre Coeur "
            "| added ms (median / p95) | added x first stage (median / p95) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in run_["rows"]:
            lines.append(
                f"| {row['config']} | {100 * row['mAP']:.1f} | {100 * (row['mAP'] - base):+.1f} | "
                f"{100 * row['mAP_strecha']:.1f} | "
                f"{100 * row['mAP_sacre_coeur']:.1f} | "
                f"{row['added_ms_median']:.1f} / {row['added_ms_p95']:.1f} | "
                f"{row['added_x_first_stage_median']:.2f} / {row['added_x_first_stage_p95']:.2f} |"
            )
        lines.append("")
    off = result["offline"]
    lines.append("local features, s per image: " + ", ".join(f"{k} {v:.3f}" for k, v in off.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-stage", default="histogram",
                        help="histogram, loupe-tiny, or both comma-separated (one table each)")
    parser.add_argument("--spatial-depth", type=int, default=20,
                        help="rerank depth M for spatial verification (its default is 100)")
    parser.add_argument("--strecha-stride", type=int, default=2,
                        help="query every n-th Strecha photo (1: all 93)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    unknown = set(args.first_stage.split(",")) - set(FIRST_STAGES)
    if unknown:
        parser.error(f"unknown first stage(s) {sorted(unknown)}; known: {', '.join(FIRST_STAGES)}")
    result = run(args)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
