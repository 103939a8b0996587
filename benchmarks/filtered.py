"""Filtered search at scale: the planner's two paths, timed on the same index in one run.

For each allowed count (ids drawn at random: a filter that keeps a scattered share of the
library), single-threaded, on a saved index opened the way a serving process opens it (memory-
mapped, nothing built):
- exact: what the planner does below FILTER_EXACT_MAX_ROWS (on SQ8 kinds: code scores with an
  error bound, then the short list re-scored at full precision; else the rows scored directly);
- ann: the ANN with the allowed ids as a FAISS selector (what the planner does above it),
  and its recall@10 against the exact answer;
- on SQ8 kinds, last: the exact path as it was before SQ8 scoring (the allowed full-precision
  rows gathered through the memory map, which stays mapped), for the before/after in one run.
p50 wall and CPU milliseconds (CPU time is what a loaded shared machine distorts least), the
full-precision rows read per query, and the process's RSS (anonymous and mapped file pages)
before and after.

    python benchmarks/filtered.py --index /tmp/lib/.loupe/vectors/1/index    # a saved index
    python benchmarks/filtered.py --n 1000000 --spec SQ8,Refine --keep /tmp/f1m  # build one once
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loupe.index import base as ix_base  # noqa: E402
from loupe.index import build, load  # noqa: E402


def rss() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key + "_mib"] = int(line.split()[1]) // 1024
    return out


def timed(fn, reps: int) -> tuple[float, float, list]:
    """p50 wall and CPU ms of fn(0..reps-1), after one untimed pass over the same calls (the
    pages they touch are then resident: steady state, not the first read from disk)."""
    for i in range(reps):
        fn(i)
    wall, cpu, out = [], [], []
    for i in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out.append(fn(i))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall) * 1000), float(np.median(cpu) * 1000), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="a saved loupe index folder (has CURRENT)")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors to build when no --index")
    ap.add_argument("--spec", default="SQ8,Refine", help="spec to build when no --index")
    ap.add_argument("--keep", type=Path, help="save the built index here; a rerun loads it")
    ap.add_argument("--allowed", type=int, nargs="+", default=[1000, 10_000, 30_000, 100_000, 300_000])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--no-ann", action="store_true", help="time the exact path only")
    ap.add_argument("--no-rows-path", action="store_true",
                    help="skip timing the full-precision path (the one before SQ8 scoring)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "filtered.json")
    args = ap.parse_args()
    from ann import make_space, sample

    folder = args.index or args.keep
    if folder is None or not (folder / "CURRENT").exists():
        if args.index:
            raise SystemExit(f"no saved index in {args.index}")
        x = sample(make_space(512), args.n, seed=0)
        t = time.perf_counter()
        index = build(args.spec, 512, np.arange(args.n, dtype=np.int64), x)
        print(f"built {args.spec} over {args.n} in {time.perf_counter() - t:.0f} s", flush=True)
        del x
        if args.keep:
            index.save(args.keep)
        folder = args.keep
    before = rss()
    t = time.perf_counter()
    index = load(folder) if folder is not None else index
    load_s = time.perf_counter() - t
    ids = index.ids
    q = sample(make_space(index.dim, intrinsic=min(64, index.dim // 2)), args.queries, seed=99)       # not in the set
    reads: list[int] = []
    take = index._rows.take

    def counting(pos):
        reads.append(len(pos))
        return take(pos)

    index._rows.take = counting
    rng = np.random.default_rng(0)
    rows = []
    for n_allowed in args.allowed:
        allowed = [np.sort(rng.choice(ids, n_allowed, replace=False)) for _ in range(args.queries)]
        index.filter_exact_max = lambda: 1 << 62
        reads.clear()
        ex_wall, ex_cpu, exact = timed(lambda i, a=allowed: index.search(q[i], 10, allowed=a[i]),
                                       args.queries)
        row = {"allowed": n_allowed, "share": n_allowed / len(ids), "exact_p50_ms": ex_wall,
               "exact_cpu_p50_ms": ex_cpu, "exact_rows_read_per_query": sum(reads) / 2 / args.queries}
        if not args.no_ann and index.kind != "exact":
            index.filter_exact_max = lambda: 0
            ann_wall, ann_cpu, ann = timed(lambda i, a=allowed: index.search(q[i], 10, allowed=a[i]),
                                           args.queries)
            hit = [len(np.intersect1d(a[0], e[0])) / 10 for a, e in zip(ann, exact, strict=True)]
            row.update({"ann_p50_ms": ann_wall, "ann_cpu_p50_ms": ann_cpu,
                        "ann_recall_at_10": float(np.mean(hit))})
        del index.filter_exact_max
        row["rss_after"] = rss()
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The same filters through the path used before SQ8 scoring (full-precision rows gathered
    # through the memory map, its pages kept): last, since it leaves the rows mapped.
    fullprec = []
    if index.kind != "exact" and not args.no_rows_path:
        index._residuals = lambda: None
        ix_base.ROWS_MAPPED_MAX = 1 << 62
        index.filter_exact_max = lambda: 1 << 62
        for n_allowed in args.allowed:
            if n_allowed > 100_000:
                continue
            allowed = [np.sort(rng.choice(ids, n_allowed, replace=False)) for _ in range(args.queries)]
            wall, cpu, _ = timed(lambda i, a=allowed: index.search(q[i], 10, allowed=a[i]),
                                 args.queries)
            fullprec.append({"allowed": n_allowed, "p50_ms": wall, "cpu_p50_ms": cpu,
                             "rss_after": rss()})
            print(json.dumps({"full_precision_rows_path": fullprec[-1]}), flush=True)
        del index.filter_exact_max, index._residuals
    print("\n| allowed | share | exact p50 ms (CPU) | rows read | ANN+selector p50 ms (CPU) | ANN recall@10 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ann = (f"{r['ann_p50_ms']:.1f} ({r['ann_cpu_p50_ms']:.1f}) | {r['ann_recall_at_10']:.3f}"
               if "ann_p50_ms" in r else "- | -")
        print(f"| {r['allowed']:,} | {r['share']:.1%} | {r['exact_p50_ms']:.1f} ({r['exact_cpu_p50_ms']:.1f}) "
              f"| {r['exact_rows_read_per_query']:.0f} | {ann} |")
    result = {
        "index": index.stats() | {"folder": str(folder)}, "load_s": load_s,
        "filter_exact_max_rows": index.filter_exact_max(), "pread_max_rows": ix_base.PREAD_MAX_ROWS,
        "rss_before_load": before, "rows": rows, "queries": args.queries,
        "full_precision_rows_path": fullprec,
        "load_average_after": os.getloadavg(),
        "command": "python benchmarks/filtered.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
