"""ANN benchmark: the kinds of loupe.index against exact search, hnswlib and usearch, in one run.

Data: n x 512 float32 vectors shaped like CLIP embeddings (not uniform noise): a mixture of 4096
Gaussian clusters (Zipf-like sizes) in a random 64-d subspace, a shared offset direction (CLIP
vectors share a large common component), plus small isotropic noise in all 512 dimensions,
L2-normalised. Random pairs have cosine ~0.3, nearest neighbours ~0.8. Queries (1000) come from
the same distribution but are not in the set.

Per kind: build time (2 threads), RAM and disk bytes per vector, single-threaded p50/p99 query
latency (k=10), recall@10 against exact, filtered queries at 1% and 10% selectivity, and the RSS
of a fresh process that loads the saved index (memory-mapped) and answers 1000 queries. Search
knobs (efSearch, nprobe, k_factor) are swept and the fastest setting with recall@10 >= 0.95 is
kept. hnswlib and usearch are built with the same M (32) and efConstruction (40, FAISS's default)
and searched at the efSearch chosen for FAISS HNSW.

    python benchmarks/ann.py                 # 1,000,000 vectors (a long run on 2 cores)
    python benchmarks/ann.py --quick         # 100,000
    python benchmarks/ann.py --n 200000 --no-libs
"""

from __future__ import annotations

import os

# Single-threaded BLAS everywhere: latencies are per query on one core; builds use FAISS's OpenMP.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("LOUPE_REPO", HERE.parent))  # where `loupe` is imported from
sys.path.insert(0, str(REPO))

from loupe.index import base as ix_base  # noqa: E402
from loupe.index import build, choose_spec, measure_recall  # noqa: E402
from loupe.index.base import topk  # noqa: E402

DIM = 512
K = 10
BUILD_THREADS = 2
HNSW_M = 32
EF_CONSTRUCTION = 40


# ---------------------------------------------------------------------------------------------
# data


def make_space(dim: int, intrinsic: int = 64, clusters: int = 4096, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, intrinsic + 1)))
    centers = rng.normal(size=(clusters, intrinsic)) / np.sqrt(intrinsic)
    w = 1.0 / np.arange(1, clusters + 1) ** 0.5
    return {"basis": basis.astype(np.float32), "centers": centers, "w": w / w.sum()}


def sample(space: dict, n: int, seed: int, spread: float = 0.7, shared: float = 0.8,
           noise: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, centers = space["basis"], space["centers"]
    intr, dim = centers.shape[1], basis.shape[0]
    lab = rng.choice(len(centers), size=n, p=space["w"])
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        lat = centers[lab[s: s + m]] + spread * rng.normal(size=(m, intr)) / np.sqrt(intr)
        x = (lat.astype(np.float32) @ basis[:, :intr].T + shared * basis[:, intr]
             + noise * rng.normal(size=(m, dim)).astype(np.float32))
        out[s: s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_topk(q: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int = K) -> np.ndarray:
    best = topk(np.zeros((len(q), 0), np.float32), np.zeros(0, np.int64), k)
    for s in range(0, len(x), 65536):
        sc = q @ x[s: s + 65536].T
        part = topk(sc, ids[s: s + 65536], k)
        best = ix_base.merge_topk(best, part, k)
    return best[0]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in zip(got, want, strict=True)]))


def latencies(fn, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        fn(q)
        out[i] = time.perf_counter() - t
    return out * 1e3


def pct(ms: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4)}


# ---------------------------------------------------------------------------------------------
# a fresh process that loads the index


CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from loupe.index import load
import faiss
faiss.omp_set_num_threads(1)
def status():
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(line.split()[1]) * 1024
    return out
def mapped(names=("vectors.npy", "index.faiss")):
    # resident bytes per mapped file of the saved index, from /proc/self/smaps
    out, cur = {name: 0 for name in names}, None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            cur = next((n for n in names if len(head) > 5 and head[-1].endswith(n)), None)
        elif cur and line.startswith("Rss:"):
            out[cur] += int(head[1]) * 1024
    return out
before = status()
t = time.perf_counter()
index = load(sys.argv[2], mmap=True)
load_s = time.perf_counter() - t
q = np.load(sys.argv[3])
t = time.perf_counter()
index.search(q[0], 10)
first_ms = (time.perf_counter() - t) * 1e3
lat = []
for row in q:
    t = time.perf_counter()
    index.search(row, 10)
    lat.append(time.perf_counter() - t)
after = status()
after["mapped"] = mapped()
st = index.stats()
print(json.dumps({"load_s": load_s, "first_query_ms": first_ms, "ram_bytes": st["ram_bytes"],
                  "recall_at_10": st.get("recall_at_10"),
                  "p50_ms": float(np.median(lat)) * 1e3, "before_load": before, "after": after,
                  "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def fresh_process(folder: Path, queries_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(folder), str(queries_path)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------
# loupe kinds


def sweep(index, q: np.ndarray, gt: np.ndarray) -> tuple[dict, list]:
    """Try search knobs; keep the fastest setting whose recall@10 >= 0.95."""
    if index.kind == "hnsw":
        grid = [{"ef_search": ef, "k_factor": kf} for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256)
                for kf in ((1, 2) if index.refine else (1,))]
    elif index.kind == "ivf":
        grid = [{"nprobe": p, "k_factor": kf} for p in (4, 8, 16, 32, 64) for kf in (5, 10, 20, 40)]
    else:
        return {}, []
    tried = []
    for g in grid:
        for key, v in g.items():
            setattr(index, key, v)
        got, _ = index.search(q, K)
        r = recall(got, gt)
        entry = {**g, "recall_at_10": round(r, 4)}
        if r >= 0.95:
            entry["p50_ms"] = round(float(np.median(latencies(lambda x: index.search(x, K),
                                                              q[:200]))), 4)
        tried.append(entry)
    ok = [t for t in tried if "p50_ms" in t]
    best = min(ok, key=lambda t: t["p50_ms"]) if ok else max(tried, key=lambda t: t["recall_at_10"])
    chosen = {key: best[key] for key in best if key in ("ef_search", "nprobe", "k_factor")}
    for key, v in chosen.items():
        setattr(index, key, v)
    return chosen, tried


def bench_loupe(spec: str, x: np.ndarray, ids: np.ndarray, q: np.ndarray, gt: np.ndarray,
                filters: dict, work: Path, qpath: Path) -> tuple[dict, object]:
    faiss.omp_set_num_threads(BUILD_THREADS)
    t = time.perf_counter()
    opts = {} if spec == "Exact" else {"build_threads": BUILD_THREADS}
    index = build(spec, x.shape[1], ids, x, **opts)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    chosen, tried = sweep(index, q, gt)
    got, _ = index.search(q, K)
    lat = latencies(lambda v: index.search(v, K), q)
    row = {"name": f"loupe {spec}", "spec": spec, "build_s": round(build_s, 1),
           "params": index.params(), "chosen": chosen, "sweep": tried,
           "recall_at_10": round(recall(got, gt), 4), **pct(lat)}
    t = time.perf_counter()
    row["measured_recall_at_10"] = round(measure_recall(index, 1000), 4)
    row["measure_recall_s"] = round(time.perf_counter() - t, 1)
    for name, (allowed, fgt) in filters.items():
        got, _ = index.search(q, K, allowed=allowed)
        flat = latencies(lambda v, a=allowed: index.search(v, K, allowed=a), q[:300])
        row[f"filter_{name}"] = {"recall_at_10": round(recall(got, fgt), 4),
                                 "always_k": bool((got >= 0).all()), **pct(flat)}
    folder = work / "saved"
    index.save(folder)
    st = index.stats()
    row["built_ram_bytes_per_vector"] = round(st["ram_bytes"] / len(ids), 1)
    row["disk_bytes_per_vector"] = round(folder_bytes(folder) / len(ids), 1)
    row["fresh_process"] = fresh_process(folder, qpath)
    # RAM of the serving process beyond the memory-mapped files (ids, tombstones, heap parts).
    row["ram_bytes_per_vector"] = round(row["fresh_process"]["ram_bytes"] / len(ids), 1)
    shutil.rmtree(folder)
    return row, index


def bench_planner(index, x_n: int, q: np.ndarray, rng) -> list:
    """Filtered latency of both planner paths at several allowed counts (single-threaded)."""
    out = []
    keep = ix_base.FILTER_EXACT_MAX_ROWS
    try:
        for count in (1000, 3000, 10_000, 30_000, 100_000):
            if count > x_n // 2:
                break
            allowed = np.sort(rng.choice(x_n, count, replace=False))
            entry = {"allowed": count}
            for path, cut in (("exact", 10**12), ("ann", 0)):
                ix_base.FILTER_EXACT_MAX_ROWS = cut
                entry[f"{path}_p50_ms"] = round(float(np.median(latencies(
                    lambda v, a=allowed: index.search(v, K, allowed=a), q[:100]))), 3)
            out.append(entry)
    finally:
        ix_base.FILTER_EXACT_MAX_ROWS = keep
    return out


def bench_exact_scan(x: np.ndarray, q: np.ndarray) -> list:
    out = []
    for n in (4096, 16384, 65536, 262144):
        if n > len(x):
            break
        index = build("Exact", x.shape[1], np.arange(n), x[:n])
        ms = float(np.median(latencies(lambda v, ix=index: ix.search(v, K), q[:200])))
        out.append({"n": n, "p50_ms": round(ms, 4),
                    "ns_per_element": round(ms * 1e6 / (n * x.shape[1]), 4)})
    return out


# ---------------------------------------------------------------------------------------------
# other libraries


def bench_hnswlib(x, ids, q, gt, filters, ef: int, work: Path) -> dict:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    t = time.perf_counter()
    index.init_index(max_elements=len(x), M=HNSW_M, ef_construction=EF_CONSTRUCTION)
    index.add_items(x, ids, num_threads=BUILD_THREADS)
    build_s = time.perf_counter() - t
    index.set_num_threads(1)
    index.set_ef(ef)
    got, _ = index.knn_query(q, K)
    lat = latencies(lambda v: index.knn_query(v, K), q)
    path = work / "hnswlib.bin"
    index.save_index(str(path))
    row = {"name": "hnswlib", "spec": f"M={HNSW_M} efC={EF_CONSTRUCTION} ef={ef} f32",
           "build_s": round(build_s, 1), "recall_at_10": round(recall(got.astype(np.int64), gt), 4),
           **pct(lat), "disk_bytes_per_vector": round(path.stat().st_size / len(x), 1),
           "ram_bytes_per_vector": round(path.stat().st_size / len(x), 1)}
    path.unlink()
    for name, (allowed, fgt) in filters.items():
        member = np.zeros(int(ids.max()) + 1, bool)
        member[allowed] = True

        def ok(label, m=member):
            return bool(m[label])

        got = np.stack([index.knn_query(v, K, filter=ok)[0][0] for v in q[:100]]).astype(np.int64)
        flat = latencies(lambda v, f=ok: index.knn_query(v, K, filter=f), q[:100])
        row[f"filter_{name}"] = {"recall_at_10": round(recall(got, fgt[:100]), 4), **pct(flat),
                                 "note": "Python filter callback, 100 queries"}
    return row


def bench_usearch(x, ids, q, gt, ef: int, work: Path) -> dict:
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M,
                  expansion_add=EF_CONSTRUCTION, expansion_search=ef)
    t = time.perf_counter()
    index.add(ids, x, threads=BUILD_THREADS)
    build_s = time.perf_counter() - t
    got = index.search(q, K, threads=1).keys.astype(np.int64)
    lat = latencies(lambda v: index.search(v, K, threads=1), q)
    path = work / "usearch.bin"
    index.save(str(path))
    row = {"name": "usearch", "spec": f"M={HNSW_M} efC={EF_CONSTRUCTION} ef={ef} f32",
           "build_s": round(build_s, 1), "recall_at_10": round(recall(got, gt), 4), **pct(lat),
           "disk_bytes_per_vector": round(path.stat().st_size / len(x), 1),
           "ram_bytes_per_vector": round(index.memory_usage / len(x), 1),
           "filter_note": "no filter predicate in usearch's Python search()"}
    path.unlink()
    return row


# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "faiss": faiss.__version__}
    for mod in ("hnswlib", "usearch"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001 - not installed is fine, it is reported
            versions[mod] = None
    return {"cpu": model, "cores": os.cpu_count(), "versions": versions,
            "faiss_simd": faiss.get_compile_options()}


def table(rows: list) -> str:
    head = ("| index | build s | RAM B/vec | disk B/vec | p50 ms | p99 ms | recall@10 "
            "| 1% filter p50 / recall | 10% filter p50 / recall | fresh-process VmRSS MiB "
            "after 1000 queries |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        def f(name, r=r):
            v = r.get(f"filter_{name}")
            return f"{v['p50_ms']:.2f} / {v['recall_at_10']:.3f}" if v else "n/a"
        fp = r.get("fresh_process")
        rss = "n/a"
        if fp:
            a, mib = fp["after"], 2**20
            rss = f"{a['VmRSS'] / mib:.0f} (anon {a['RssAnon'] / mib:.0f}, file {a['RssFile'] / mib:.0f}"
            if "mapped" in a:
                rss += (f": index {a['mapped']['index.faiss'] / mib:.0f}, "
                        f"vectors {a['mapped']['vectors.npy'] / mib:.0f}")
            rss += ")"
        lines.append(f"| {r['name']} | {r['build_s']} | {r['ram_bytes_per_vector']} | "
                     f"{r['disk_bytes_per_vector']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['recall_at_10']:.3f} | {f('1%')} | {f('10%')} | {rss} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 vectors")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--no-libs", action="store_true", help="skip hnswlib and usearch")
    ap.add_argument("--spec", action="append",
                    help="benchmark only these loupe specs (repeatable); default: Flat and what "
                         "choose_spec picks with no budget, 1 GiB and 256 MiB")
    ap.add_argument("--no-exact-scan", action="store_true",
                    help="skip the exact-scan calibration")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ann.json")
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else args.n
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    space = make_space(DIM)
    x = sample(space, n, seed=1)
    q = sample(space, args.queries, seed=2)
    ids = np.arange(n, dtype=np.int64)
    print(f"data {n} x {DIM} in {time.perf_counter() - t_all:.1f}s", flush=True)
    t = time.perf_counter()
    gt = exact_topk(q, x, ids)
    rng = np.random.default_rng(3)
    filters = {}
    for name, s in (("1%", 0.01), ("10%", 0.10)):
        allowed = np.sort(rng.choice(n, int(n * s), replace=False))
        filters[name] = (allowed, exact_topk(q, x[allowed], allowed))
    print(f"ground truth in {time.perf_counter() - t:.1f}s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="loupe-ann-"))
    qpath = work / "queries.npy"
    np.save(qpath, q)
    specs = args.spec or ["Flat"]
    for budget in ((None, 2**30, 2**28) if not args.spec else ()):
        spec = choose_spec(n, DIM, budget)
        if spec not in specs:
            specs.append(spec)
    results = {"n": n, "dim": DIM, "k": K, "queries": args.queries, "machine": machine(),
               "load_before": load_before, "choose_spec": {
                   "no_budget": choose_spec(n, DIM), "1GiB": choose_spec(n, DIM, 2**30),
                   "256MiB": choose_spec(n, DIM, 2**28)},
               "exact_scan": [] if args.no_exact_scan else bench_exact_scan(x, q), "rows": []}
    print("exact scan", results["exact_scan"], flush=True)
    hnsw_ef = 64
    try:
        for spec in specs:
            row, index = bench_loupe(spec, x, ids, q, gt, filters, work, qpath)
            if getattr(index, "kind", "") == "hnsw":
                hnsw_ef = index.ef_search
                results["planner"] = bench_planner(index, n, q, np.random.default_rng(4))
                print("planner", results["planner"], flush=True)
            del index
            results["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
            write(args.out, results)
        if not args.no_libs:
            results["rows"].append(bench_hnswlib(x, ids, q, gt, filters, hnsw_ef, work))
            print(json.dumps(results["rows"][-1]), flush=True)
            write(args.out, results)
            results["rows"].append(bench_usearch(x, ids, q, gt, hnsw_ef, work))
            print(json.dumps(results["rows"][-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    results["command"] = "python benchmarks/ann.py " + " ".join(argv or sys.argv[1:])
    results["complete"] = True
    print(write(args.out, results))
    return 0


def write(path: Path, results: dict) -> str:
    """Write what has been measured so far (a long run that is cut still leaves its rows)."""
    results["table"] = table(results["rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return results["table"]


if __name__ == "__main__":
    raise SystemExit(main())
