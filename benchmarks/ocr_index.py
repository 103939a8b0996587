"""`loupe index --ocr` end to end, through the Library: what the OCR pass costs beside indexing,
what a resumed or moved library costs, and whether the words drawn are found by search.

On photos of loupe.text.testset (real Strecha photos at 1536 px, words drawn on some, none on
the others), with the tiny random-weight model (the vectors are not what is measured here; the
cost of embedding with ViT-B-32 is in benchmarks/ocr.py):

1. `index()` without OCR: CPU seconds per image (hash, decode, embed, commit, documents).
2. `index(IndexOptions(ocr=True))` on the same library: the backfill pass, CPU and wall seconds
   per content, and how many words it read.
3. The same command again: nothing left to read.
4. Every file moved to another folder, then `index()`: moves reuse the words (0 read).
5. Word queries for every word drawn, text-only: share of the drawn words whose image comes
   back (end-to-end word recall), and the text, hybrid and vector search latency (p50).

    flock /tmp/loupe-bench.lock python benchmarks/ocr_index.py [--photos 18]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ocr import DATA, load, machine  # noqa: E402  (the text benchmark's machine record)

from loupe import IndexOptions, Library  # noqa: E402
from loupe.text import testset  # noqa: E402


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=18, help="photos, two thirds with text")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ocr_index.json")
    args = ap.parse_args()
    started_load = load()
    n_text = args.photos * 2 // 3
    samples = testset.build_testset(testset.photos(DATA), n_text=n_text,
                                    n_plain=args.photos - n_text, seed=1, max_side=1536)
    work = Path(tempfile.mkdtemp(prefix="loupe-ocr-index-"))
    try:
        root = work / "photos"
        testset.write_testset(samples, root)
        lib = Library.open(root / ".loupe", model="loupe-tiny:random", device="cpu")
        plain, wall0, cpu0 = timed(lib.index)
        n = plain.added + plain.copies
        engine, load_wall, load_cpu = timed(lib.ocr_engine, True)
        first, wall1, cpu1 = timed(lib.index, IndexOptions(ocr=True))
        again, wall2, cpu2 = timed(lib.index)
        moved_to = root / "moved"
        moved_to.mkdir()
        for folder in [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and p != moved_to]:
            shutil.move(str(folder), str(moved_to / folder.name))
        # every path changed: the guard against unmounted drives asks for prune
        moved, wall3, cpu3 = timed(lib.index, IndexOptions(prune=True))

        drawn = [(w.text, s.name) for s in samples for w in s.words]
        found = 0
        lat: dict[str, list[float]] = {"text": [], "hybrid": [], "vector": []}
        for text, name in drawn:
            want = "moved/" + name
            for channels in lat:
                hits, wall, _ = timed(lib.search, text.lower(), k=10, channels=channels)
                lat[channels].append(wall * 1000)
                if channels == "text":
                    found += any(h.meta["rel_path"] == want for h in hits)
        o = first.ocr
        result = {
            "command": "python benchmarks/ocr_index.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "load_average_start": started_load,
            "photos": {"images": n, "with_text": n_text, "words_drawn": len(drawn),
                       "side_px": 1536},
            "index_without_ocr": {"cpu_s_per_image": round(cpu0 / n, 4),
                                  "wall_s": round(wall0, 2)},
            "ocr_engine_load": {"wall_s": round(load_wall, 2), "cpu_s": round(load_cpu, 2)},
            "ocr_backfill": {"read": o["read"], "with_text": o["with_text"], "words": o["words"],
                             "cpu_s_per_content": round(cpu1 / max(o["read"], 1), 3),
                             "wall_s_per_content": round(wall1 / max(o["read"], 1), 3),
                             "skipped": len(o["skipped"])},
            "ocr_cost_vs_index": round(cpu1 / max(cpu0, 1e-9), 1),
            "second_run": {"read": again.ocr["read"], "wall_s": round(wall2, 3),
                           "cpu_s": round(cpu2, 3)},
            "after_moving_every_file": {"moved": moved.moved, "read": moved.ocr["read"],
                                        "wall_s": round(wall3, 3), "cpu_s": round(cpu3, 3)},
            "search": {"word_queries": len(drawn),
                       "words_found_text_only_top10": round(found / max(len(drawn), 1), 3),
                       "latency_ms_p50": {k: round(statistics.median(v), 2) for k, v in lat.items()}},
            "load_average_end": load(),
        }
        lib.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
