"""Model switch, measured: the bridge's retrieval quality, its dependence on the sample size, and
the time from `loupe models switch` to the first search that uses the new model.

Quality (real photos from ../shared/data, random weights: read the numbers as relations
between spaces, not as absolute quality). Two folds, each image a query against the rest of
its set, positives = same group, mAP through the search pipeline (`loupe.search.pipeline.run`
over in-memory galleries, as the eval harness does):
- strecha: the 93 Strecha photos, group = scene without its -Pnn suffix;
- sacre_coeur: the 10 Sacre Coeur photos with their 140 rotated / scaled copies, group = original.
The bridge of a fold is fitted on the other fold's photos and two random crops of each (never
on the images it is scored on). Pairs of models (old -> new):
- related: loupe-tiny:random -> the same weights with 30% relative Gaussian noise on every
  tensor (`loupe.switch.perturb`), the stand-in for a newer model of the same family;
- unrelated: loupe-tiny:random (ViT, 32-d) -> loupe-tiny-rn:random (a ResNet, 48-d).
Conditions: old x old, new x new, new query x old gallery with no map (same dimension only),
through each bridge candidate and through the one `fit` keeps, and a library half-way through a
switch (half the gallery in the new space, half bridged) merged by the product's rule
(`loupe.switch.search.BridgedStore`: bridged scores calibrated onto the new scale) and, as a
control, merged on raw scores.

Timing: a library of real photos plus generated pictures, indexed with the old model; then
`python -m loupe.cli models switch NEW` runs in a subprocess while this process searches the
library in a loop; recorded: seconds to the first search answered by the new model (the bridge
in place), to the swap, and to the end of the command, for two `bridge_sample` settings.

    flock /tmp/loupe-bench.lock python benchmarks/bridge.py            # writes results/bridge.json
    flock /tmp/loupe-bench.lock python benchmarks/bridge.py --quick    # fewer images, one seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LOUPE_BACKEND", "torch")

from loupe.core.types import Query  # noqa: E402
from loupe.eval.metrics import average_precision, relevance  # noqa: E402
from loupe.media.decode import load_image  # noqa: E402
from loupe.models import load_encoder  # noqa: E402
from loupe.search import pipeline  # noqa: E402
from loupe.storage.memory import MemoryStore  # noqa: E402
from loupe.switch import bridge as br  # noqa: E402
from loupe.switch.perturb import perturbed_copy  # noqa: E402
from loupe.switch.search import BridgedStore  # noqa: E402

DATA = REPO.parent / "shared" / "data"
OLD = "loupe-tiny:random"
UNRELATED = "loupe-tiny-rn:random"
NOISE = 0.3
SIZES = (8, 16, 32, 64, 128, 256)


# --- data ------------------------------------------------------------------------------------

def strecha() -> tuple[list[Path], list[str]]:
    paths = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    return paths, [p.parent.name.rsplit("-P", 1)[0] for p in paths]


def sacre_coeur() -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in (DATA / "sacre_coeur").rglob("*.jpg"))
    return paths, [p.stem.split("_rot")[0].split("_scale")[0] for p in paths]


def crops(paths: list[Path], per_image: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for p in paths:
        im = load_image(p, reduce_to=256)
        w, h = im.size
        for _ in range(per_image):
            s = int(rng.uniform(0.4, 0.8) * min(w, h))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            out.append(im.crop((x, y, x + s, y + s)))
    return out


class Embedder:
    def __init__(self, name: str, weights: Path | None = None):
        self.enc = load_encoder(name, weights, "cpu", backend="torch")

    def images(self, items: list[Any]) -> np.ndarray:
        size = self.enc.image_size
        pix = [self.enc.prepare(i if isinstance(i, Image.Image) else load_image(i, reduce_to=size))
               for i in items]
        return np.concatenate([self.enc.encode_pixels(np.stack(pix[i:i + 64]))
                               for i in range(0, len(pix), 64)])

    def texts(self, texts: list[str]) -> np.ndarray:
        return self.enc.encode_text(texts)


# --- quality ---------------------------------------------------------------------------------

class MemVectors:
    """The part of `SpaceVectors` that `BridgedStore` reads, over an in-memory gallery."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray):
        from loupe import index as ann

        self.index = ann.build("Exact", matrix.shape[1], np.asarray(ids, np.int64), matrix)

    def search(self, q: np.ndarray, k: int, allowed: Any = None, exclude: Any = ()) -> Any:
        excl = np.asarray(sorted(exclude), np.int64)
        ids, scores = self.index.search(np.asarray(q, np.float32).reshape(1, -1), k, allowed=allowed,
                                        exclude=excl if len(excl) else None)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def ids(self) -> np.ndarray:
        return np.array(self.index.ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.index.ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.vectors(np.asarray(ids, np.int64)), np.float32)


class RawMerge(BridgedStore):
    """The control: the same two searches merged on raw scores (no calibration)."""

    def search_vector(self, vec: np.ndarray, k: int, filters: Any = None, exclude: Any = ()) -> Any:
        saved = self.bridge.calibrate
        self.bridge.calibrate = lambda q, s: np.asarray(s, np.float32)   # type: ignore[method-assign]
        try:
            return super().search_vector(vec, k, filters, exclude)
        finally:
            self.bridge.calibrate = saved   # type: ignore[method-assign]


def mean_ap(store: Any, queries: np.ndarray, groups: list[str]) -> float:
    """mAP over every image as a query against the rest (itself excluded), via the pipeline."""
    n = len(groups)
    labels = np.asarray(groups)
    rankings, positives = [], []
    for i, q in enumerate(queries):
        cands = pipeline.run(Query(np.asarray(q, np.float32), exclude_ids=frozenset({i})), store, n - 1)
        rankings.append(np.pad(cands.ids, (0, n - 1 - len(cands.ids)), constant_values=-1))
        positives.append(np.flatnonzero((labels == labels[i]) & (np.arange(n) != i)))
    rel = relevance(np.stack(rankings), positives)
    return round(float(np.nanmean(average_precision(rel, np.array([len(p) for p in positives])))), 4)


def quality(old: Embedder, new: Embedder, folds: dict[str, Any], seeds: int, tmp: Path) -> dict[str, Any]:
    from loupe.search.stages.hubness import CAPTIONS

    text_pairs = (new.texts(list(CAPTIONS)), old.texts(list(CAPTIONS)))
    out: dict[str, Any] = {}
    for fold, (paths, groups, pool) in folds.items():
        g_old, g_new = old.images(paths), new.images(paths)
        p_old, p_new = old.images(pool), new.images(pool)
        store_old = MemoryStore(paths, g_old, tmp)
        res: dict[str, Any] = {"images": len(paths), "fit_pool": len(pool),
                               "old_x_old": mean_ap(store_old, g_old, groups),
                               "new_x_new": mean_ap(MemoryStore(paths, g_new, tmp), g_new, groups)}
        if g_new.shape[1] == g_old.shape[1]:
            res["new_query_x_old_no_map"] = mean_ap(store_old, g_new, groups)
        chosen = br.fit(p_new, p_old, text_pairs=text_pairs)
        res["kept"] = chosen.method
        res["holdout"] = chosen.holdout
        for method in br.METHODS:
            w = br.procrustes(*text_pairs) if method == "text-procrustes" else \
                {"procrustes": br.procrustes, "lstsq": br.least_squares}[method](br._unit(p_new), br._unit(p_old))
            res[f"bridge_{method}"] = mean_ap(store_old, br._unit(g_new @ w), groups)
        res["bridge_kept"] = res[f"bridge_{chosen.method}"]
        # half-way through a switch: even ids filled, odd ones bridged
        ids = np.arange(len(paths))
        filled = ids % 2 == 0
        new_half = MemVectors(ids[filled], g_new[filled])
        old_all = MemVectors(ids, g_old)
        # as the product does it: the bridge fitted on what is in both spaces (the filled half)
        half = br.fit(g_new[filled], g_old[filled], text_pairs=text_pairs)
        res["mixed_half_kept"] = half.method
        res["mixed_half_calibrated"] = mean_ap(BridgedStore(None, new_half, old_all, half), g_new, groups)
        res["mixed_half_raw_scores"] = mean_ap(RawMerge(None, new_half, old_all, half), g_new, groups)
        curve = []
        for size in [s for s in SIZES if s <= len(pool)] + [len(pool)]:
            runs: dict[str, list[float]] = {"kept": [], "procrustes": [], "lstsq": []}
            for seed in range(seeds):
                pick = np.random.default_rng(seed).permutation(len(pool))[:size]
                b = br.fit(p_new[pick], p_old[pick], text_pairs=text_pairs, seed=seed)
                runs["kept"].append(mean_ap(store_old, b.to_old(g_new), groups))
                for m, f in (("procrustes", br.procrustes), ("lstsq", br.least_squares)):
                    w = f(br._unit(p_new[pick]), br._unit(p_old[pick]))
                    runs[m].append(mean_ap(store_old, br._unit(g_new @ w), groups))
            curve.append({"sample": size, **{k: round(float(np.mean(v)), 4) for k, v in runs.items()}})
        res["by_sample_size"] = curve
        out[fold] = res
        print(f"  {fold}: old x old {res['old_x_old']:.3f}, new x new {res['new_x_new']:.3f}, "
              f"bridge ({chosen.method}) {res['bridge_kept']:.3f}, half-way {res['mixed_half_calibrated']:.3f}",
              flush=True)
    return out


# --- time to the first new-model search --------------------------------------------------------

def build_library(folder: Path, n: int) -> Path:
    root = folder / "photos"
    real = strecha()[0] + sacre_coeur()[0]
    for p in real[:n]:
        dest = root / "real" / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    rng = np.random.default_rng(0)
    for i in range(max(0, n - len(real))):
        cells = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        path = root / "generated" / f"{i // 500:02d}" / f"g{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cells).resize((96, 80), Image.Resampling.NEAREST).save(path)
    return root


def time_switch(root: Path, weights: Path, sample: int) -> dict[str, Any]:
    from loupe import IndexOptions, Library
    from loupe.switch import bridged

    lib_path = root / ".loupe"
    shutil.rmtree(lib_path, ignore_errors=True)
    Library.open(lib_path, model=OLD, device="cpu").index(IndexOptions())
    reader = Library.open(lib_path, device="cpu")
    reader.search("a church", k=10)                        # warm: the old model is loaded
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOUPE_BRIDGE_SAMPLE": str(sample)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "loupe.cli", "models", "switch", "loupe-tiny",
                             "--weights", str(weights), "--json"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_new = swapped = fill_started = bridge_seen = None
    searches = failures = 0
    while True:
        try:
            status = reader.switch_status()
            now = time.perf_counter() - t0
            if fill_started is None and status and status["embedded"]:
                fill_started = now
            if bridge_seen is None and status and status["bridge"]:
                bridge_seen = now
            uses_new = bridged(reader) is not None or reader.catalog.active_space() != 1
            reader.search("a church", k=10)
            searches += 1
            if uses_new and first_new is None:
                first_new = time.perf_counter() - t0
            if swapped is None and reader.catalog.active_space() != 1:
                swapped = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - counted: the target is none
            failures += 1
        if proc.poll() is not None and swapped is not None:
            break
        if proc.poll() is not None and searches > 0 and reader.catalog.active_space() == 1:
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    ended = time.perf_counter() - t0
    report = json.loads(out) if proc.returncode == 0 else {"error": err[-2000:]}
    return {"images": reader.counts()["indexed"], "bridge_sample": sample,
            "to_first_vector_committed_s": _r(fill_started), "to_bridge_recorded_s": _r(bridge_seen),
            "to_first_new_model_search_s": round(first_new, 2) if first_new else None,
            "to_swap_s": round(swapped, 2) if swapped else None, "command_s": round(ended, 2),
            "searches_during_switch": searches, "failed_searches": failures,
            "bridge": report.get("bridge"), "fill_s": report.get("seconds")}


def _r(x: float | None) -> float | None:
    return round(x, 2) if x is not None else None


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, a smaller timing library")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bridge.json")
    ap.add_argument("--timing-images", type=int, default=3000)
    ap.add_argument("--no-timing", action="store_true", help="quality only")
    ap.add_argument("--timing-only", action="store_true",
                    help="measure the timing again, keep the quality results already in --out")
    args = ap.parse_args()
    seeds = 1 if args.quick else 3
    load_before = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {"command": "python benchmarks/bridge.py " + " ".join(sys.argv[1:]),
                              "weights": "random (no trained weights can be downloaded here)",
                              "machine": machine(), "load_average_before": load_before}
    tmp = Path(tempfile.mkdtemp(prefix="loupe-bridge-"))
    try:
        weights = perturbed_copy(OLD, tmp / "tiny-perturbed.pt", NOISE)
        s_paths, s_groups = strecha()
        c_paths, c_groups = sacre_coeur()
        folds = {"strecha": (s_paths, s_groups, list(c_paths) + crops(c_paths, 1, 0)),
                 "sacre_coeur": (c_paths, c_groups, list(s_paths) + crops(s_paths, 2, 1))}
        old = Embedder(OLD)
        result["quality"] = {}
        if args.timing_only:   # the quality part as measured before, with that run's load
            before = json.loads(args.out.read_text())
            result["quality"] = before["quality"]
            result["quality_run"] = before.get("quality_run") or {
                k: before.get(k) for k in ("command", "load_average_before", "load_average_after")}
        for pair, new in () if args.timing_only else (("related", Embedder("loupe-tiny", weights)), ("unrelated", Embedder(UNRELATED))):
            print(f"{pair}: {OLD} -> {new.enc.identity['model']}", flush=True)
            result["quality"][pair] = {"old": OLD, "new": new.enc.identity["model"],
                                       "noise": NOISE if pair == "related" else None,
                                       **quality(old, new, folds, seeds, tmp)}
        root = build_library(tmp, 600 if args.quick else args.timing_images)
        result["timing"] = []
        for sample in () if args.no_timing else (128, 512):
            row = time_switch(root, weights, sample)
            print(f"switch of {row['images']} images, bridge_sample {sample}: first vector after "
                  f"{row['to_first_vector_committed_s']} s, bridge after {row['to_bridge_recorded_s']} s, "
                  f"first new-model search after {row['to_first_new_model_search_s']} s, swap after "
                  f"{row['to_swap_s']} s", flush=True)
            result["timing"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)


def print_tables(result: dict[str, Any]) -> None:
    print("\nmAP (random weights; each image a query against the rest of its set)")
    print(f"{'pair':10} {'fold':12} {'old x old':>9} {'new x new':>9} {'no map':>7} {'procr.':>7} "
          f"{'lstsq':>7} {'text':>7} {'kept':>16} {'half-way':>9} {'raw merge':>9}")
    for pair, q in result["quality"].items():
        for fold in ("strecha", "sacre_coeur"):
            r = q[fold]
            print(f"{pair:10} {fold:12} {r['old_x_old']:9.3f} {r['new_x_new']:9.3f} "
                  f"{r.get('new_query_x_old_no_map', float('nan')):7.3f} {r['bridge_procrustes']:7.3f} "
                  f"{r['bridge_lstsq']:7.3f} {r['bridge_text-procrustes']:7.3f} "
                  f"{r['kept'] + ' ' + format(r['bridge_kept'], '.3f'):>16} {r['mixed_half_calibrated']:9.3f} "
                  f"{r['mixed_half_raw_scores']:9.3f}")
    print("\nbridge mAP by sample size (kept / procrustes / lstsq), strecha fold")
    for pair, q in result["quality"].items():
        print(pair + ": " + ", ".join(f"{c['sample']}: {c['kept']:.3f}/{c['procrustes']:.3f}/{c['lstsq']:.3f}"
                                      for c in q["strecha"]["by_sample_size"]))
    print("\ntime from `loupe models switch` to the first search answered by the new model")
    for t in result["timing"]:
        print(f"{t['images']} images, bridge_sample {t['bridge_sample']}: {t['to_first_new_model_search_s']} s; "
              f"first vector {t.get('to_first_vector_committed_s')} s, bridge {t.get('to_bridge_recorded_s')} s "
              f"(swap after {t['to_swap_s']} s; {t['searches_during_switch']} searches, "
              f"{t['failed_searches']} failed)")


if __name__ == "__main__":
    main()
