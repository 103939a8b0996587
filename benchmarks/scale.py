"""Scale-out benchmark: indexing on Ray vs the local executor, and Milvus Lite vs Loupe's FAISS index.

Part `ingest` (real photos from ../shared/data, ViT-B-32 with seeded random weights, the model
backend `load_encoder` picks on this CPU for both paths): the same photos indexed into a fresh
library by `Library.index` (local: a thread pool decodes, the model runs on every core) and by
`Library.index(runner="ray")` on a local Ray instance with this machine's cores (map tasks
decode, one actor embeds). The two are run in turns (--rounds), so a change of machine load hits both. Per run:
end-to-end seconds (model already loaded for the local path; the Ray actors load theirs inside
the run, as they must), and the steady rate between the first and the last commit. The Ray
start-up (`ray.init`) is timed apart.

Part `index` (n x 512 float32 vectors shaped like CLIP embeddings: Gaussian clusters in a 64-d
subspace plus a shared direction and noise, L2-normalised; queries from the same distribution,
not in the set): per size, each backend in a fresh process (so that its memory is its own):
- faiss: `loupe.index.build(choose_spec(n, 512))` (HNSW32,SQ8,Refine at these sizes), built
  with 2 threads;
- milvus-lite: `MilvusIndex` ("milvus:FILE.db?index=HNSW&M=32&efConstruction=40&ef=64": the same
  graph degree, build effort and search breadth as the FAISS kind), inserted, flushed (which
  builds the HNSW of each sealed segment);
build/insert seconds, single-query latency p50/p95 (one thread for FAISS; Milvus Lite answers
over gRPC in this process), batched queries (one call of 100), filtered queries (1% of the ids
allowed), recall@10 against exact search, and memory: "held" is the process's RSS growth from
before the build to after the input array is freed, plus that array (what the index keeps,
wherever it keeps it; Milvus Lite's imports and server are counted apart as fixed_rss_mib).

    python benchmarks/scale.py                        # both parts: 150 photos; 100k and 1M
    python benchmarks/scale.py --part ingest --photos 150 --rounds 2
    python benchmarks/scale.py --part index --sizes 100000 --queries 100
Results: benchmarks/results/scale.json (merged: each part keeps its last run) and a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
OUT = HERE / "results" / "scale.json"
DIM = 512
K = 10


# ---------------------------------------------------------------------------------------------
# the machine


def machine() -> dict:
    from loupe.models.device import cpu_info

    cpu = cpu_info()
    name = str(cpu["model"])
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "flags": cpu["flags"], "mem_gib": mem,
            "arch": platform.machine(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3), "n": len(a)}


# ---------------------------------------------------------------------------------------------
# part 1: ingest


def photo_paths(limit: int) -> list[Path]:
    sets = [sorted((DATA / "strecha" / "scenes").glob("*/*.jpg")),
            sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg")),
            sorted((DATA / "strecha" / "fullsize").glob("*.jpg")),
            sorted((DATA / "sacre_coeur" / "mapping_scale").glob("*.jpg"))]
    paths = [p for s in sets for p in s][:limit]
    if len(paths) < 20:
        raise SystemExit(f"too few photos under {DATA}: this part needs ../shared/data")
    return paths


def bench_ingest(args) -> dict:
    import ray

    from loupe import IndexOptions, Library
    from loupe.ingest.ray_runner import connect

    before = machine()
    work = Path(tempfile.mkdtemp(prefix="loupe-scale-"))
    os.environ.setdefault("LOUPE_MODEL_CACHE", str(args.model_cache or work / "models"))
    photos = work / "photos"
    photos.mkdir()
    paths = photo_paths(args.photos)
    for p in paths:
        shutil.copy(p, photos / f"{p.parent.parent.name}_{p.parent.name}_{p.name}")
    mb = sum(p.stat().st_size for p in photos.iterdir()) / 1024**2
    options = IndexOptions(batch_size=args.batch_size)

    # One export of the model (if this CPU's backend needs one), timed apart from every run.
    t = time.perf_counter()
    warm = Library.open(work / "warm", root=photos, model=args.model, device="cpu")
    enc = warm.encoder
    model_load = time.perf_counter() - t
    backend = enc.backend
    warm.close()

    t = time.perf_counter()
    connect(None, num_cpus=os.cpu_count(), object_store_memory=args.object_store_mb * 1024**2)
    ray_start = time.perf_counter() - t

    def fresh(name: str) -> Library:
        lib = Library.open(work / name, root=photos, model=args.model, device="cpu")
        _ = lib.encoder           # the space exists and the local model is loaded: not timed
        return lib

    def timed_progress(marks: list):
        return lambda done, total: marks.append((time.perf_counter(), done))

    def steady(marks: list) -> float | None:
        """Images per second between the first and the last commit."""
        firsts = [m for m in marks if m[1] > 0]
        if len(firsts) < 2:
            return None
        (t0, d0), (t1, d1) = firsts[0], firsts[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for r in range(args.rounds):
        for kind in ("local", "ray"):
            lib = fresh(f"{kind}-{r}")
            marks: list = []
            t = time.perf_counter()
            if kind == "local":
                report = lib.index(options, progress=timed_progress(marks))
            else:
                report = lib.index(options, progress=timed_progress(marks), runner="ray",
                                   ray_options={"actors": 1, "cpus_per_actor": 1.0})
            secs = time.perf_counter() - t
            assert report.embedded == len(paths), report.to_dict()
            runs[kind].append({"seconds": round(secs, 2), "img_s": round(len(paths) / secs, 2),
                               "steady_img_s": round(steady(marks) or 0.0, 2),
                               "load_avg": [round(x, 2) for x in os.getloadavg()],
                               **({"ray": {k: v for k, v in report.ray.items()
                                           if k != "resources"}} if kind == "ray" else {})})
            lib.close()
            print(f"  round {r} {kind}: {runs[kind][-1]}", flush=True)

    # The vectors of the two paths agree (the last round's libraries).
    a = Library.open(work / f"local-{args.rounds - 1}", model=args.model, device="cpu")
    b = Library.open(work / f"ray-{args.rounds - 1}", model=args.model, device="cpu")
    worst = 0.0
    for rel in sorted(p.name for p in photos.iterdir()):
        va = a.vectors([a.id_of_path(rel)])[0]
        vb = b.vectors([b.id_of_path(rel)])[0]
        worst = max(worst, float(np.abs(va - vb).max()))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    def med(kind, key):
        return float(np.median([x[key] for x in runs[kind]]))

    return {
        "model": args.model, "backend": backend, "photos": len(paths),
        "photo_mib": round(mb, 1), "batch_size": args.batch_size,
        "model_load_s": round(model_load, 2), "ray_init_s": round(ray_start, 2),
        "ray_config": {"num_cpus": os.cpu_count(), "embed_actors": 1, "cpus_per_actor": 1,
                       "read_tasks": "map tasks, 1 CPU each"},
        "runs": runs,
        "median": {k: {"img_s": med(k, "img_s"), "steady_img_s": med(k, "steady_img_s"),
                       "seconds": med(k, "seconds")} for k in runs},
        "ratio_ray_over_local": round(med("ray", "img_s") / med("local", "img_s"), 3),
        "ratio_steady": round(med("ray", "steady_img_s") / max(med("local", "steady_img_s"),
                                                               1e-9), 3),
        "max_abs_vector_diff": worst,
        "machine_before": before, "machine_after": machine(),
    }


def bench_decode(args) -> dict:
    """Read + hash + decode + prepare, one core: what one Ray read task does per photo."""
    from loupe.ingest import embed as emb
    from loupe.media.scan import FileEntry
    from loupe.models import preprocess
    from loupe.models.openclip import load_encoder as load_torch

    before = machine()
    identity = load_torch(args.model, device="cpu", towers=("image",)).identity
    paths = photo_paths(args.photos)
    secs = []
    for p in paths:
        entry = FileEntry(p.name, p.stat().st_size, p.stat().st_mtime)
        t = time.perf_counter()
        it = emb.read(entry, p.parent, known=set(), max_file_bytes=2**30, max_pixels=2**30,
                      image_size=int(identity["image_size"]),
                      prepare=lambda im: preprocess.prepare(im, identity))
        secs.append(time.perf_counter() - t)
        assert it.pixels is not None, it.error
    return {"model": args.model, "photos": len(paths),
            "img_s_one_core": round(len(secs) / sum(secs), 2),
            "ms_per_photo": pct([s * 1000 for s in secs]),
            "mean_file_mib": round(float(np.mean([p.stat().st_size for p in paths])) / 1024**2, 2),
            "machine_before": before, "machine_after": machine()}


def bench_commit(args) -> dict:
    """The driver's share of a Ray run: `apply.commit` of embedded 512-d rows into a fresh
    SQLite catalog, one transaction per batch: rows per second at a few batch sizes."""
    from loupe.ingest.apply import IndexReport, RunState, commit
    from loupe.ingest.embed import Item
    from loupe.media.scan import FileEntry
    from loupe.storage.catalog import Catalog

    before = machine()
    out = {"rows": args.commit_rows, "by_batch": {}}
    rng = np.random.default_rng(0)
    meta = {"width": 4000, "height": 3000, "format": "JPEG", "taken_at": None, "camera": None}
    for bs in (32, 256, 2048):
        work = Path(tempfile.mkdtemp(prefix="loupe-scale-commit-"))
        catalog = Catalog(work / "catalog.db")
        space = catalog.add_space("bench", {"arch": "bench", "dim": DIM, "image_size": 224},
                                  activate=True)
        state = RunState(space=space, known=set(), old_sha={}, left_behind={})
        report = IndexReport()
        n = args.commit_rows
        vecs = rng.standard_normal((bs, DIM)).astype(np.float32)
        t = time.perf_counter()
        for s in range(0, n, bs):
            batch = [Item(FileEntry(f"d{i // 1000}/img{i}.jpg", 3_000_000, 1.7e9),
                          sha=f"{i:064x}", meta=meta, vector=vecs[i - s])
                     for i in range(s, min(s + bs, n))]
            commit(catalog, batch, state, report)
        secs = time.perf_counter() - t
        catalog.close()
        size = sum(f.stat().st_size for f in work.iterdir())
        shutil.rmtree(work, ignore_errors=True)
        out["by_batch"][bs] = {"rows_s": round(n / secs, 1),
                               "catalog_bytes_per_row": round(size / n)}
    out["machine_before"], out["machine_after"] = before, machine()
    return out


# ---------------------------------------------------------------------------------------------
# part 2: the index


def make_vectors(n: int, seed: int, space_seed: int = 0) -> np.ndarray:
    """CLIP-like unit vectors: clusters (Zipf-like sizes) in a 64-d subspace, a direction every
    vector shares, small noise in all dimensions."""
    rng = np.random.default_rng(space_seed)
    intrinsic, clusters = 64, 4096
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, intrinsic + 1)))
    basis = basis.astype(np.float32)
    centres = rng.normal(size=(clusters, intrinsic)) / np.sqrt(intrinsic)
    w = 1.0 / np.arange(1, clusters + 1) ** 0.5
    rng = np.random.default_rng(seed)
    lab = rng.choice(clusters, size=n, p=w / w.sum())
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        lat = centres[lab[s: s + m]] + 0.7 * rng.normal(size=(m, intrinsic)) / np.sqrt(intrinsic)
        x = (lat.astype(np.float32) @ basis[:, :intrinsic].T + 0.8 * basis[:, intrinsic]
             + 0.02 * rng.normal(size=(m, DIM)).astype(np.float32))
        out[s: s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_topk(q: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int = K,
               allowed: np.ndarray | None = None) -> np.ndarray:
    from loupe.index.base import merge_topk, topk

    if allowed is not None:
        pos = np.searchsorted(ids, allowed)
        return topk(q @ x[pos].T, allowed, k)[0]
    best = topk(np.zeros((len(q), 0), np.float32), np.zeros(0, np.int64), k)
    for s in range(0, len(x), 100_000):
        best = merge_topk(best, topk(q @ x[s: s + 100_000].T, ids[s: s + 100_000], k), k)
    return best[0]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max((b >= 0).sum(), 1)
                          for a, b in zip(got, want, strict=True)]))


def dataset(work: Path, n: int, nq: int) -> dict:
    """Vectors, queries, a 1% filter and the exact answers, cached in `work` for the workers."""
    f = work / f"data-{n}-{nq}.npz"
    if not f.exists():
        x = make_vectors(n, seed=1)
        ids = np.arange(n, dtype=np.int64) * 2 + 1          # ids with gaps, as a catalog has
        q = make_vectors(nq, seed=2)
        allowed = np.sort(np.random.default_rng(3).choice(ids, max(n // 100, K), replace=False))
        gt = exact_topk(q, x, ids)
        gt_f = exact_topk(q, x, ids, allowed=allowed)
        np.savez(f, x=x, ids=ids, q=q, allowed=allowed, gt=gt, gt_f=gt_f)
    d = np.load(f)
    return {k: d[k] for k in d.files}


def run_backend(backend: str, n: int, nq: int, work: Path, batch: int) -> dict:
    """One backend at one size, in this (fresh) process."""
    import faiss

    d = dataset(work, n, nq)
    x, ids, q, allowed, gt, gt_f = d["x"], d["ids"], d["q"], d["allowed"], d["gt"], d["gt_f"]
    del d
    gc.collect()
    out: dict = {"backend": backend, "n": n, "queries": nq}
    rss_start = rss_bytes()
    if backend == "milvus":
        # Imports and the in-process Milvus Lite server are a fixed cost, counted apart.
        from loupe.index.milvus import MilvusIndex

        spec = (f"milvus:{work / f'milvus-{n}.db'}?index=HNSW&M=32&efConstruction=40&ef=64"
                "&collection=bench")
        index = MilvusIndex(spec, DIM)
        index.client.list_collections()
    rss0 = rss_bytes()
    out["fixed_rss_mib"] = round((rss0 - rss_start) / 1024**2, 1)
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    if backend == "faiss":
        from loupe.index import build, choose_spec

        spec = choose_spec(n, DIM)
        index = build(spec, DIM, ids, x, **({} if spec == "Exact" else {"build_threads": 2}))
        out["spec"] = spec
    else:
        # What `loupe.index.milvus.build` does, timed in its two parts: inserts into an
        # unindexed collection, then one index build (flush, create_index, load).
        t_ins = time.perf_counter()
        index._ensure(indexed=False)
        for s in range(0, n, 20_000):
            index.add(ids[s: s + 20_000], x[s: s + 20_000])
        out["insert_s"] = round(time.perf_counter() - t_ins, 1)
        t_fl = time.perf_counter()
        index._index_and_load()
        out["index_build_s"] = round(time.perf_counter() - t_fl, 1)
        out["spec"] = spec.replace(str(work), "WORK")
    out["build_s"] = round(time.perf_counter() - t, 1)
    faiss.omp_set_num_threads(1)
    x_bytes = x.nbytes
    del x
    gc.collect()
    out["rss_growth_mib"] = round((rss_bytes() - rss0) / 1024**2, 1)
    out["raw_vectors_mib"] = round(x_bytes / 1024**2, 1)
    st = index.stats()
    out["index_ram_mib"] = round(st["ram_bytes"] / 1024**2, 1)
    out["index_disk_mib"] = round(st["disk_bytes"] / 1024**2, 1)
    if backend == "milvus":
        seg = Path(index.uri) / "collections" / index.collection / "partitions"
        out["segments"] = len(list(seg.rglob("*.parquet"))) if seg.exists() else None
    index.search(q[:2], K)                               # warm

    lat, got = [], np.full((nq, K), -1, np.int64)
    for i in range(nq):
        t = time.perf_counter()
        got[i] = index.search(q[i], K)[0]
        lat.append((time.perf_counter() - t) * 1000)
    out["single"] = pct(lat)
    out["recall_at_10"] = round(recall(got, gt), 4)

    m = min(batch, nq)
    t = time.perf_counter()
    got_b = index.search(q[:m], K)[0]
    secs = time.perf_counter() - t
    out["batched"] = {"queries": m, "ms_per_query": round(secs * 1000 / m, 3),
                      "recall_at_10": round(recall(got_b, gt[:m]), 4)}

    nf = min(nq, 20)
    lat, got = [], np.full((nf, K), -1, np.int64)
    for i in range(nf):
        t = time.perf_counter()
        got[i] = index.search(q[i], K, allowed=allowed)[0]
        lat.append((time.perf_counter() - t) * 1000)
    out["filtered_1pct"] = {**pct(lat), "allowed": len(allowed),
                            "recall_at_10": round(recall(got, gt_f[:nf]), 4)}
    out["rss_after_queries_mib"] = round((rss_bytes() - rss0) / 1024**2, 1)
    if backend == "milvus":
        try:
            index.drop()
            index.close()
        except Exception as exc:  # noqa: BLE001 - a failed clean-up keeps the measurements
            out["drop_failed"] = str(exc)[-300:]
    return out


def bench_index(args) -> list[dict]:
    work = Path(args.work or tempfile.mkdtemp(prefix="loupe-scale-index-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        nq = args.queries if n <= 200_000 else args.queries_large
        t = time.perf_counter()
        dataset(work, n, nq)
        print(f"  data n={n}: {time.perf_counter() - t:.0f} s", flush=True)
        for backend in args.backends:
            before = machine()
            cmd = [sys.executable, __file__, "--worker", backend, "--n", str(n), "--nq", str(nq),
                   "--work", str(work), "--batch", str(args.batch)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                row = {"backend": backend, "n": n, "failed": proc.stderr[-2000:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_s"] = round(time.perf_counter() - t, 1)
            row["command"] = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
            row["machine_before"], row["machine_after"] = before, machine()
            rows.append(row)
            print(f"  {backend} n={n}: {json.dumps(row)[:400]}", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------
# output


def table(results: dict) -> str:
    lines = []
    ing = results.get("ingest")
    if ing:
        lines += [f"ingest: {ing['photos']} photos ({ing['photo_mib']} MiB), {ing['model']} "
                  f"({ing['backend']}), batch {ing['batch_size']}; ray.init {ing['ray_init_s']} s",
                  f"{'path':8} {'end-to-end img/s':>17} {'steady img/s':>13} {'seconds':>8}"]
        for k, v in ing["median"].items():
            lines.append(f"{k:8} {v['img_s']:17.2f} {v['steady_img_s']:13.2f} {v['seconds']:8.1f}")
        lines.append(f"ray / local: {ing['ratio_ray_over_local']} end-to-end, "
                     f"{ing['ratio_steady']} steady; max |vector diff| "
                     f"{ing['max_abs_vector_diff']:.2e}")
    dec = results.get("decode")
    if dec:
        lines.append(f"read+decode+prepare, one core: {dec['img_s_one_core']} photos/s "
                     f"(p50 {dec['ms_per_photo']['p50_ms']} ms, mean file "
                     f"{dec['mean_file_mib']} MiB)")
    com = results.get("commit")
    if com:
        for bs, v in com["by_batch"].items():
            lines.append(f"commit (driver, SQLite), batches of {bs}: {v['rows_s']} rows/s of "
                         f"512-d vectors, {v['catalog_bytes_per_row']} catalog bytes per image")
    idx = results.get("index")
    if idx:
        lines += ["", f"{'backend':7} {'n':>8} {'build s':>8} {'p50 ms':>8} {'p95 ms':>8} "
                  f"{'batch ms/q':>10} {'R@10':>6} {'filt p50':>9} {'filt R@10':>9} "
                  f"{'held MiB':>8}"]
        for r in idx:
            if "failed" in r:
                lines.append(f"{r['backend']:7} {r['n']:>8} failed: {r['failed'][-200:]}")
                continue
            lines.append(
                f"{r['backend']:7} {r['n']:>8} {r['build_s']:8.1f} {r['single']['p50_ms']:8.2f} "
                f"{r['single']['p95_ms']:8.2f} {r['batched']['ms_per_query']:10.2f} "
                f"{r['recall_at_10']:6.3f} {r['filtered_1pct']['p50_ms']:9.2f} "
                f"{r['filtered_1pct']['recall_at_10']:9.3f} "
                f"{r['rss_growth_mib'] + r['raw_vectors_mib']:8.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "ingest", "index", "decode", "commit", "table"),
                    default="all", help="table: print the table of the saved results")
    ap.add_argument("--commit-rows", type=int, default=50_000)
    ap.add_argument("--photos", type=int, default=150)
    ap.add_argument("--model", default="ViT-B-32:random")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--object-store-mb", type=int, default=1024)
    ap.add_argument("--model-cache", type=Path, default=None,
                    help="LOUPE_MODEL_CACHE for both paths (default: a temporary folder)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--backends", nargs="+", default=["faiss", "milvus"])
    ap.add_argument("--queries", type=int, default=100, help="queries at up to 200k vectors")
    ap.add_argument("--queries-large", type=int, default=20, help="queries above 200k")
    ap.add_argument("--batch", type=int, default=100, help="queries in the batched call")
    ap.add_argument("--work", type=Path, default=None, help="keep data here (reused)")
    ap.add_argument("--out", type=Path, default=OUT)
    # internal: one backend in a fresh process
    ap.add_argument("--worker", choices=("faiss", "milvus"))
    ap.add_argument("--n", type=int)
    ap.add_argument("--nq", type=int)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    if args.worker:
        print(json.dumps(run_backend(args.worker, args.n, args.nq, args.work, args.batch)))
        return 0
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.part == "table":
        print(table(results))
        return 0
    if args.part in ("all", "ingest"):
        print("ingest ...", flush=True)
        results["ingest"] = bench_ingest(args)
        results["ingest"]["command"] = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    if args.part in ("all", "decode"):
        print("decode ...", flush=True)
        results["decode"] = bench_decode(args)
    if args.part in ("all", "commit"):
        print("commit ...", flush=True)
        results["commit"] = bench_commit(args)
    if args.part in ("all", "index"):
        print("index ...", flush=True)
        rows = bench_index(args)
        keep = [r for r in results.get("index", [])
                if (r["backend"], r["n"]) not in {(x["backend"], x["n"]) for x in rows}]
        results["index"] = sorted(keep + rows, key=lambda r: (r["n"], r["backend"]))
        results["index_command"] = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
