"""Text-query latency, encode + first-stage search, at 10k, 100k and 1M stored vectors.

The library is filled with vectors of the default model's size (512-d) shaped like
CLIP embeddings (clustered, low intrinsic dimension: benchmarks/ann.py's generator)
under fake paths; the search index is the one the library chooses by size. Queries
are encoded by the default architecture with random weights (the text tower costs
what it costs, trained or not).

Images sit in 100 folders (img/00 .. img/99, ids interleaved), so a folder filter keeps 1% of
the library scattered over it: the filtered queries are text queries with `--folder`-style
filters (SQL for the allowed ids, then the index's filtered search), timed end to end.

    python benchmarks/search.py                  # 10k, 100k and 1M, 200 queries each
    python benchmarks/search.py --sizes 1000 --queries 20 --arch loupe-tiny
    python benchmarks/search.py --sizes 1000000 --library /tmp/lib1m   # keep it; a rerun reuses it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loupe.core.config import CATALOG_FILENAME, DEFAULT_MODEL
from loupe.core.types import Filters
from loupe.library import Library

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))          # the vector generator of ann.py
WORDS = ("red", "bicycle", "night", "dog", "beach", "mountain", "snow", "city", "street", "cat",
         "portrait", "sunset", "forest", "river", "car", "market", "bridge", "child", "kite", "boat")


def fill(lib: Library, n: int, seed: int = 0) -> float:
    """n vectors with the structure of CLIP embeddings (clustered, low intrinsic dimension:
    benchmarks/ann.py's generator), added through `Library.add_embedded`."""
    from ann import make_space, sample

    dim = lib.tower("text").dim
    space = make_space(dim, intrinsic=min(64, dim // 2))
    t = time.perf_counter()

    def rows():
        for start in range(0, n, 50_000):
            block = sample(space, min(50_000, n - start), seed=seed + start)
            for j, vec in enumerate(block):
                i = start + j
                yield (f"img/{i % 100:02d}/{i:07d}.jpg", f"{i:064x}", vec,
                       {"width": 640, "height": 480, "format": "JPEG", "size": 1000})

    lib.add_embedded(rows())
    return time.perf_counter() - t


def refresh_times(lib: Library, batches: int, batch_size: int = 32) -> list[float]:
    """What a server pays per refresh while it re-indexes: one 32-image batch lands,
    then the searchable snapshot is brought up to date."""
    rng = np.random.default_rng(2)
    dim, out = lib.tower("text").dim, []
    for b in range(batches):
        vecs = rng.normal(size=(batch_size, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        lib.add_embedded([(f"new/{b}/{j}.jpg", f"new{b:04d}{j:04d}".ljust(64, "0"), vecs[j],
                           {"format": "JPEG", "size": 1000}) for j in range(batch_size)])
        t = time.perf_counter()
        lib.refresh()
        out.append(time.perf_counter() - t)
    return out


def _rss() -> dict[str, int]:
    """This process's resident memory in MiB (RssFile counts mapped file pages)."""
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key + "_mib"] = int(line.split()[1]) // 1024
    return out


def percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=DEFAULT_MODEL.split(":")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search.json")
    ap.add_argument("--library", type=Path, default=None,
                    help="keep the library in this folder (one size only); a rerun finds it filled "
                         "and indexed and only queries it")
    ap.add_argument("--build-only", action="store_true",
                    help="with --library: fill and index it, save, and stop (query it in a later run)")
    ap.add_argument("--no-refresh-check", action="store_true",
                    help="skip the 5 small batches added after the queries (they change the library)")
    args = ap.parse_args()
    if args.library is not None and len(args.sizes) != 1:
        ap.error("--library takes one --sizes value")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(args.queries)]

    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = (args.library or Path(tmp) / "photos") / ".loupe"
            folder.parent.mkdir(parents=True, exist_ok=True)
            existed = (folder / CATALOG_FILENAME).exists()
            lib = Library.open(folder, model=f"{args.arch}:random", device="cpu")
            have = lib.stats()["indexed"] if existed else 0
            fill_s = load_s = None
            if have < n:   # more: the refresh check's batches of an earlier run
                if have:
                    raise SystemExit(f"{folder} holds {have} images, not {n}: remove it first")
                fill_s = fill(lib, n)
                t = time.perf_counter()
                lib.refresh()       # from SQLite: the index built, what the first search after a change pays
                load_s = time.perf_counter() - t
                lib.save_vectors()  # what `loupe index` leaves behind for the next process
            lib.close()
            if args.build_only:
                print(f"built {folder}: fill {fill_s} s, index {load_s} s")
                continue
            lib = Library.open(folder, device="cpu")
            t = time.perf_counter()
            lib.refresh()           # from the saved index: nothing built
            saved_s = time.perf_counter() - t
            index = lib.stats()["index"]
            lib.search(texts[0], k=args.k)  # warm-up
            encode, search, total = [], [], []
            for q in texts:
                t0 = time.perf_counter()
                vec = lib.tower("text").encode_text([q])[0]
                t1 = time.perf_counter()
                lib.search_vector(vec, args.k)
                t2 = time.perf_counter()
                encode.append(t1 - t0)
                search.append(t2 - t1)
                total.append(t2 - t0)
            # Filtered: 1% of the library (one of 100 folders), a different folder per query.
            f_total, f_search, f_sql, allowed = [], [], [], []
            for j, q in enumerate(texts):
                filters = Filters(folder=f"img/{j % 100:02d}")
                t0 = time.perf_counter()
                vec = lib.tower("text").encode_text([q])[0]
                t1 = time.perf_counter()
                got = lib.search_vector(vec, args.k, filters)
                t2 = time.perf_counter()
                allowed.append(lib.count_matching(filters))   # the SQL part alone
                t3 = time.perf_counter()
                assert len(got.ids) == min(args.k, allowed[-1])
                f_total.append(t2 - t0)
                f_search.append(t2 - t1)
                f_sql.append(t3 - t2)
            rss = _rss()
            refresh = [] if args.no_refresh_check else refresh_times(lib, batches=5)
            rows.append({
                "vectors": n, "index": index["spec"], "recall_at_10": index.get("recall_at_10"),
                "index_ram_bytes": index.get("ram_bytes"), "queries": len(texts), "k": args.k,
                "p50_ms": percentile(total, 50), "p99_ms": percentile(total, 99),
                "encode_p50_ms": percentile(encode, 50), "search_p50_ms": percentile(search, 50),
                "search_p99_ms": percentile(search, 99),
                "filtered_allowed_median": int(np.median(allowed)),
                "filtered_p50_ms": percentile(f_total, 50),
                "filtered_search_p50_ms": percentile(f_search, 50),
                "filtered_search_p99_ms": percentile(f_search, 99),
                "filtered_sql_p50_ms": percentile(f_sql, 50),
                "rss_after_queries": rss,
                "load_sqlite_s": load_s, "load_saved_s": saved_s, "fill_s": fill_s,
                "refresh_after_batch_s_median": float(np.median(refresh)) if refresh else None,
            })
            lib.close()

    print(f"{'vectors':>9} {'index':<20}{'p50 ms':>9}{'p99 ms':>9}{'encode p50':>12}{'search p50':>12}"
          f"{'search p99':>12}{'1% filter p50':>15}{'(search / sql)':>16}{'load: sqlite / saved s':>24}"
          f"{'refresh s':>11}")
    def fmt(v: float | None, f: str) -> str:
        return "-" if v is None else format(v, f)

    for r in rows:
        print(f"{r['vectors']:>9} {r['index']:<20}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['encode_p50_ms']:>12.1f}{r['search_p50_ms']:>12.2f}{r['search_p99_ms']:>12.2f}"
              f"{r['filtered_p50_ms']:>15.1f}{r['filtered_search_p50_ms']:>8.2f} / {r['filtered_sql_p50_ms']:<6.2f}"
              f"{fmt(r['load_sqlite_s'], '.2f'):>15} / {r['load_saved_s']:.3f}"
              f"{fmt(r['refresh_after_batch_s_median'], '.3f'):>11}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                            if ln.startswith("model name")), "?"), "cores": os.cpu_count(),
               "load_average_after": os.getloadavg()}
    args.out.write_text(json.dumps({"model": f"{args.arch}:random", "machine": machine,
                                    "command": "python benchmarks/search.py " + " ".join(sys.argv[1:]),
                                    "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
