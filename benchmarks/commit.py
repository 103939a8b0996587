"""What durable commits cost: a 32-row batch (512-d vectors) committed in WAL mode with
synchronous=NORMAL (the WAL is synced at checkpoints only) against FULL (at every commit,
Loupe's setting), alternating, in one run on the same disk.

    python benchmarks/commit.py [--batches 200] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def commit_ms(folder: str, mode: str, batches: int) -> float:
    with tempfile.TemporaryDirectory(dir=folder) as d:
        db = sqlite3.connect(os.path.join(d, "c.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={mode}")
        db.execute("CREATE TABLE v (sha TEXT PRIMARY KEY, vec BLOB)")
        vec = np.random.default_rng(0).random(512, dtype=np.float32).tobytes()
        t = time.perf_counter()
        for b in range(batches):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO v VALUES (?, ?)", ((f"{b}-{j}", vec) for j in range(32)))
            db.execute("COMMIT")
        db.close()
        return (time.perf_counter() - t) / batches * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--dir", default=str(HERE))
    args = ap.parse_args()
    load = os.getloadavg()
    runs = {"NORMAL": [], "FULL": []}
    for _ in range(3):
        for mode in runs:
            runs[mode].append(commit_ms(args.dir, mode, args.batches))
    print("| synchronous | ms per 32-row commit (median of 3) |\n| --- | ---: |")
    for mode, ms in runs.items():
        print(f"| {mode} | {np.median(ms):.2f} |")
    out = HERE / "results" / "commit.json"
    out.write_text(json.dumps({"runs_ms": runs, "load_average_before": load,
                               "load_average_after": os.getloadavg(), "dir": args.dir}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
