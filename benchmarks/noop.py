"""A `loupe index` where nothing changed, against the folder scan alone.

A folder of --files small generated JPEGs (default 10,000, in nested folders of 100) is indexed
once with a tiny random-weight model; then, in turns (--rounds, median):
- scan: a fresh process walks the folder as the indexer does (`loupe.media.scan.scan`), nothing
  else;
- no-op index: a fresh process runs `loupe index FOLDER` (the CLI, as a user runs it); nothing
  changed, so it plans (scan + catalog diff), loads no model and embeds nothing.
Both include the Python start and imports; the difference is what a no-op run costs beyond the
walk. In process (imports done, not timed): the walk alone, and Library.open + index().

    python benchmarks/noop.py                     # 10,000 files, 5 rounds
    python benchmarks/noop.py --files 2000 --rounds 3 --root /tmp/noop-photos   # keep the folder
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
TINY = "loupe-tiny:random"

SCAN = """
import sys, time
from loupe.media.scan import scan
t = time.perf_counter()
n = sum(1 for _ in scan(sys.argv[1]))
print(n, time.perf_counter() - t)
"""

NOOP = """
import sys, time
from loupe.library import Library
t = time.perf_counter()
lib = Library.open(sys.argv[1] + "/.loupe", device="cpu", create=False)
report = lib.index()
print(report.embedded, time.perf_counter() - t, int(report.model_loaded), report.unchanged)
"""


def make_photos(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"{i // 1000:02d}" / f"{(i // 100) % 10}" / f"p{i:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((48, 40), Image.Resampling.NEAREST).save(path, quality=80)


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--root", type=Path, help="folder of photos to make (or reuse) and keep")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "noop.json")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = args.root or Path(tmp.name) / "photos"
    t = time.perf_counter()
    make_photos(root, args.files)
    make_s = time.perf_counter() - t
    loupe = str(Path(sys.executable).with_name("loupe"))
    t = time.perf_counter()
    subprocess.run([loupe, "index", str(root), "--model", TINY], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_s = time.perf_counter() - t
    load_before = os.getloadavg()
    scan_s, noop_s, scan_in, noop_in = [], [], [], []
    for _ in range(args.rounds):
        scan_s.append(run([sys.executable, "-c", SCAN, str(root)]))
        noop_s.append(run([loupe, "index", str(root)]))
        out = subprocess.run([sys.executable, "-c", SCAN, str(root)], check=True,
                             capture_output=True, text=True).stdout.split()
        assert int(out[0]) == args.files, out
        scan_in.append(float(out[1]))
        out = subprocess.run([sys.executable, "-c", NOOP, str(root)], check=True,
                             capture_output=True, text=True).stdout.split()
        assert out[0] == "0" and out[2] == "0" and int(out[3]) == args.files, out  # no model
        noop_in.append(float(out[1]))
    res = {
        "files": args.files, "rounds": args.rounds, "make_photos_s": make_s,
        "first_index_s": first_s,
        "scan_process_s_median": float(np.median(scan_s)),
        "noop_index_cli_s_median": float(np.median(noop_s)),
        "scan_in_process_s_median": float(np.median(scan_in)),
        "noop_index_in_process_s_median": float(np.median(noop_in)),
        "scan_process_s": scan_s, "noop_index_cli_s": noop_s,
        "scan_in_process_s": scan_in, "noop_index_in_process_s": noop_in,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "command": "python benchmarks/noop.py " + " ".join(sys.argv[1:]),
    }
    res["ratio_cli"] = res["noop_index_cli_s_median"] / res["scan_process_s_median"]
    res["ratio_in_process"] = res["noop_index_in_process_s_median"] / res["scan_in_process_s_median"]
    print(f"{args.files} unchanged files, median of {args.rounds} (load {load_before[0]:.1f}):")
    print(f"  scan alone        {res['scan_process_s_median']:.2f} s per process "
          f"({res['scan_in_process_s_median']:.2f} s of it the walk itself)")
    print(f"  no-op loupe index {res['noop_index_cli_s_median']:.2f} s per process "
          f"({res['noop_index_in_process_s_median']:.2f} s of it open + plan + commit nothing)")
    print(f"  ratio             {res['ratio_cli']:.2f} (processes), {res['ratio_in_process']:.2f} (in process)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
