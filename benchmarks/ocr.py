"""The text layer, measured: OCR quality and cost, full-text and hybrid retrieval, indexing cost.

On the labelled test set of loupe.text.testset (real Strecha photos, 1536 px, with words drawn on
some of them in the machine's fonts; others left without text):

1. OCR word recall and precision (a drawn word is found when the engine reads a word with the
   same letters and digits, or one whose glued parts include it, at an overlapping box), by size,
   angle and contrast; what it reads on photos without text.
2. OCR cost per image, wall and CPU seconds, full vs detection only, at several detection sizes,
   on photos with and without text; the detection gate's firing rate; what a low-resolution
   gate would save and lose (composed from the measured per-image costs).
3. Retrieval of the drawn words and phrases: mAP of (a) the full-text channel (FTS5 over the OCR
   text; unicode61 vs trigram), (b) a vector channel STAND-IN (ColorEncoder mean colour for
   images, a seeded random vector per query: no real CLIP weights can be downloaded here, so this
   channel knows nothing about the words), (c) hybrid RRF (k0 = 60); and how much of the text
   channel's top-k the hybrid top-k keeps.
4. Indexing throughput on the same photos with and without OCR: files -> sha256 -> decode ->
   ViT-B-32 (random weights, open_clip, batch 16) forward, and the same plus OCR.

    python benchmarks/ocr.py                       # full run (about 10-20 min on 2 cores)
    python benchmarks/ocr.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from loupe.eval.testing import ColorEncoder
from loupe.models.device import cpu_info
from loupe.text import fts, testset
from loupe.text.fusion import hybrid, parse_text_query
from loupe.text.ocr import RapidOcrEngine, Word
from loupe.text.terms import split_parts, tokens

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


# --- machine --------------------------------------------------------------------------------

def machine() -> dict:
    model = str(cpu_info()["model"])   # /proc/cpuinfo's model name
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import onnxruntime
    return {"cpu": model, "cores": cores, "arch": platform.machine(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "onnxruntime": onnxruntime.__version__}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- OCR quality ----------------------------------------------------------------------------

def _overlap(a, b) -> float:
    """Intersection over the smaller box."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small if small > 0 else 0.0


def _forms(text: str) -> set[str]:
    return {testset.normalise(text)} | {testset.normalise(p) for p in split_parts(text)}


def match_words(truth: list[testset.TruthWord], read: list[Word], min_overlap: float = 0.3):
    """(matched truth indices, matched read indices): same letters and digits (or a glued
    part of the read word), overlapping boxes."""
    found_truth, found_read = set(), set()
    for ti, t in enumerate(truth):
        key = testset.normalise(t.text)
        for ri, w in enumerate(read):
            if key in _forms(w.text) and _overlap(t.box, w.box) >= min_overlap:
                found_truth.add(ti)
                found_read.add(ri)
    return found_truth, found_read


def _bucket_size(px: int) -> str:
    return "size<24px" if px < 24 else "size 24-48px" if px < 48 else "size>=48px"


def _bucket_angle(a: float) -> str:
    a = abs(a)
    return "angle 0" if a == 0 else "angle <=12" if a <= 12.5 else "angle 20-40"


def confidence_sweep(samples, reads, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """Recall, precision and false words per text-free photo when words under a confidence
    are left out of the index."""
    out = {}
    for t in thresholds:
        q = ocr_quality(samples, [[w for w in ws if w.confidence >= t] for ws in reads])
        out[str(t)] = {"recall": q["recall"], "precision": q["precision"],
                       "false_words_per_text_free_photo": q["false_words_per_text_free_photo"]}
    return out


def ocr_quality(samples, reads) -> dict:
    n_truth = n_found = n_read = n_correct = 0
    buckets: dict[str, list[int]] = {}
    false_on_plain: list[str] = []
    read_on_text_unmatched: list[str] = []
    for s, words in zip(samples, reads, strict=True):
        words = [w for w in words if tokens(w.text)]
        ft, fr = match_words(s.words, words)
        n_truth += len(s.words)
        n_found += len(ft)
        n_read += len(words)
        n_correct += len(fr)
        for ti, t in enumerate(s.words):
            for b in (_bucket_size(t.size), _bucket_angle(t.angle), f"contrast {t.contrast}"):
                buckets.setdefault(b, [0, 0])
                buckets[b][0] += ti in ft
                buckets[b][1] += 1
        unmatched = [w.text for ri, w in enumerate(words) if ri not in fr]
        (read_on_text_unmatched if s.has_text else false_on_plain).extend(unmatched)
    plain = sum(not s.has_text for s in samples)
    return {
        "words_drawn": n_truth, "words_found": n_found,
        "recall": round(n_found / max(n_truth, 1), 4),
        "words_read": n_read, "words_read_correct": n_correct,
        "precision": round(n_correct / max(n_read, 1), 4),
        "recall_by": {k: {"recall": round(v[0] / v[1], 3), "words": v[1]}
                      for k, v in sorted(buckets.items())},
        "false_words_per_text_free_photo": round(len(false_on_plain) / max(plain, 1), 3),
        "false_words_on_text_free_photos": false_on_plain[:40],
        "unmatched_words_on_text_photos": read_on_text_unmatched[:40],
    }


# --- OCR cost -------------------------------------------------------------------------------

def timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def run_passes(images, engines: dict[str, RapidOcrEngine], passes: list[tuple[str, int]]):
    """Each pass over every image: (mode, side) -> list of (result, wall, cpu)."""
    out = {}
    for mode, side in passes:
        eng = engines[side]
        fn = eng.read if mode == "full" else eng.detect
        fn(images[0])                                        # warm-up
        rows = []
        for im in images:
            rows.append(timed(fn, im))
        out[(mode, side)] = rows
        print(f"  {mode:6s} side {side:5d}: {statistics.mean(r[2] for r in rows):.3f} CPU-s "
              f"{statistics.mean(r[1] for r in rows):.3f} wall-s per image  load {load()}",
              flush=True)
    return out


def cost_summary(samples, rows) -> dict:
    def stats(sel):
        if not sel:
            return None
        return {"wall_s": round(statistics.mean(r[1] for r in sel), 4),
                "cpu_s": round(statistics.mean(r[2] for r in sel), 4),
                "images": len(sel)}
    text = [r for s, r in zip(samples, rows, strict=True) if s.has_text]
    plain = [r for s, r in zip(samples, rows, strict=True) if not s.has_text]
    return {"text_photos": stats(text), "text_free_photos": stats(plain), "all": stats(rows)}


# --- retrieval ------------------------------------------------------------------------------

def average_precision(ranking: list[int], relevant: set[int]) -> float:
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranking, start=1):
        if doc in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant) if relevant else 0.0


def build_fts(samples, reads, tokenizer: str) -> tuple[sqlite3.Connection, float, int]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    fts.ensure_schema(db, tokenizer=tokenizer)
    t = time.perf_counter()
    db.execute("BEGIN")
    for i, words in enumerate(reads):
        # neutral names: the channel is judged on the words read, not on file or folder names
        fts.put_ocr(db, f"sha{i}", "bench", words)
        fts.index_document(db, i, f"bench/img_{i:03d}.jpg", {},
                           fts.ocr_text(words, fts.INDEX_MIN_CONFIDENCE))
    db.execute("COMMIT")
    per_doc = (time.perf_counter() - t) / max(len(samples), 1)
    size = db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'text_fts%'").fetchone()[0] \
        if _has_dbstat(db) else -1
    return db, per_doc, size or -1


def _has_dbstat(db) -> bool:
    try:
        db.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
        return True
    except sqlite3.OperationalError:
        return False


def query_vector(q: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(q.encode()))
    v = rng.normal(size=3).astype(np.float32)
    return v / np.linalg.norm(v)


# hybrid variants: RRF with equal weights (methods.md) and the default, text first
# (text_weight = fusion.text_first_weight(k): None asks hybrid for it)
HYBRIDS = {"hybrid_equal_weights": 1.0, "hybrid_text_first": None}


def retrieval(samples, reads, k: int) -> dict:
    qrels = testset.queries(samples)
    enc = ColorEncoder()
    img_vecs = enc.encode_images([s.image for s in samples])
    out: dict = {"queries": len(qrels),
                 "word_queries": sum(not q.startswith('"') for q in qrels),
                 "phrase_queries": sum(q.startswith('"') for q in qrels),
                 "k": k, "tokenizers": {}}
    for tokenizer in ("unicode61 remove_diacritics 2", "trigram"):
        db, per_doc, size = build_fts(samples, reads, tokenizer)
        aps: dict[str, list[float]] = {"text": [], "vector": [], **{h: [] for h in HYBRIDS}}
        by_kind: dict[str, list[float]] = {}
        keep: dict[str, list[float]] = {h: [] for h in HYBRIDS}
        keep_top: dict[str, list[float]] = {h: [] for h in HYBRIDS}
        lat = []
        for q, rel in sorted(qrels.items()):
            t = time.perf_counter()
            text_hits = fts.search(db, q, k)
            lat.append(time.perf_counter() - t)
            text_ids = [h[0] for h in text_hits]
            # the vector channel's first stage: its top k, like the text channel's
            vec_ids = [int(i) for i in
                       np.argsort(-(img_vecs @ query_vector(q)), kind="stable")[:k]]
            required = bool(parse_text_query(q)[1])
            fused = {name: [h.image_id for h in hybrid(vec_ids, text_hits, k, text_weight=w,
                                                       require_text=required)]
                     for name, w in HYBRIDS.items()}
            aps["text"].append(average_precision(text_ids, rel))
            aps["vector"].append(average_precision(vec_ids, rel))
            for name, f in fused.items():
                aps[name].append(average_precision(f, rel))
            kind = ("phrase" if required else "word <3 chars" if len(q) < 3 else "word")
            by_kind.setdefault(kind, []).append(aps["text"][-1])
            n = min(10, len(text_ids))
            for name, f in fused.items():
                if n:
                    # kept at all in the top 10, and kept at the top: the text channel's top n
                    # within the hybrid's top n
                    keep[name].append(len(set(text_ids[:10]) & set(f[:10])) / n)
                    keep_top[name].append(len(set(text_ids[:n]) & set(f[:n])) / n)
        out["tokenizers"][tokenizer] = {
            "mAP": {c: round(float(np.mean(v)), 4) for c, v in aps.items()},
            "text_mAP_by_query_kind": {c: {"mAP": round(float(np.mean(v)), 4), "queries": len(v)}
                                       for c, v in sorted(by_kind.items())},
            "text_top10_kept_in_hybrid_top10": _kept(keep),
            "text_top_n_at_hybrid_top_n": _kept(keep_top),
            "index_document_ms": round(per_doc * 1000, 3),
            "fts_bytes": size,
            "search_ms_p50": round(statistics.median(lat) * 1000, 3),
        }
        db.close()
    return out


def fts_at_scale(n: int, seed: int = 0) -> dict:
    """Index n synthetic documents (random words from a 5000-word vocabulary as OCR text,
    folder and file names) and time indexing and queries: what the FTS5 side costs at size."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = sorted({"".join(rng.choice(letters, int(rng.integers(3, 10)))) for _ in range(5200)})
    vocab = np.array(vocab[:5000])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    db = sqlite3.connect(":memory:", isolation_level=None)
    fts.ensure_schema(db)
    t = time.perf_counter()
    for start in range(0, n, 1000):
        db.execute("BEGIN")
        for i in range(start, min(n, start + 1000)):
            words = rng.choice(vocab, int(rng.integers(0, 12)), p=zipf)
            folder = str(vocab[int(rng.integers(200))])
            fts.index_document(db, i, f"{folder}/IMG_{i:06d}.jpg",
                               {"camera": "Canon EOS 5D", "taken_at": "2023-05-14T10:00:00"},
                               " ".join(words))
        db.execute("COMMIT")
    build = time.perf_counter() - t
    out = {"documents": n, "index_documents_per_s": round(n / build, 1)}
    allowed = [int(i) for i in rng.choice(n, n // 10, replace=False)]
    for name, queries, kwargs in (
        ("common word", [vocab[i] for i in range(10)], {}),
        ("rare word", [vocab[i] for i in range(3000, 3030)], {}),
        ("two words", [f"{vocab[i]} {vocab[i + 1]}" for i in range(0, 40, 2)], {}),
        ("phrase", [f'"{vocab[i]} {vocab[i + 1]}"' for i in range(0, 40, 2)], {}),
        ("common word, allowed_ids 10%", [vocab[i] for i in range(10)], {"allowed_ids": allowed}),
    ):
        lat = []
        for q in queries:
            t = time.perf_counter()
            fts.search(db, q, 100, **kwargs)
            lat.append(time.perf_counter() - t)
        out[f"search_ms_p50 {name}"] = round(statistics.median(lat) * 1000, 2)
    db.close()
    return out


def _kept(values: dict[str, list[float]]) -> dict:
    return {name: {"mean": round(float(np.mean(v)), 4) if v else None,
                   "min": round(float(np.min(v)), 4) if v else None, "queries": len(v)}
            for name, v in values.items()}


# --- indexing throughput --------------------------------------------------------------------

def throughput(paths: list[Path], engine: RapidOcrEngine, threads: int, batch: int) -> dict:
    import open_clip
    import torch
    torch.set_num_threads(threads)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    datas = [p.read_bytes() for p in paths]                 # from the page cache, not the disk

    def embed_only(data: bytes):
        hashlib.sha256(data).hexdigest()
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (224, 224))
        return preprocess(im.convert("RGB"))

    def run(with_ocr: bool) -> tuple[float, float]:
        pending = []
        w, c = time.perf_counter(), time.process_time()
        for data in datas:
            pending.append(embed_only(data))
            if with_ocr:
                engine.read(Image.open(io.BytesIO(data)).convert("RGB"))
            if len(pending) == batch:
                with torch.inference_mode():
                    model.encode_image(torch.stack(pending))
                pending = []
        if pending:
            with torch.inference_mode():
                model.encode_image(torch.stack(pending))
        return len(datas) / (time.perf_counter() - w), len(datas) / (time.process_time() - c)

    run(False)                                               # warm-up
    without, without_cpu = run(False)
    with_ocr, with_cpu = run(True)
    return {"images": len(datas), "model": "ViT-B-32, random weights (open_clip)", "batch": batch,
            "torch_threads": threads, "ocr_threads": engine.threads, "ocr_side": engine.side,
            "img_per_s_without_ocr": round(without, 3), "img_per_s_with_ocr": round(with_ocr, 3),
            "img_per_cpu_s_without_ocr": round(without_cpu, 3),
            "img_per_cpu_s_with_ocr": round(with_cpu, 3),
            "ratio": round(with_ocr / without, 3)}


# --- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=int, default=40, help="photos with words drawn on them")
    ap.add_argument("--plain", type=int, default=20, help="photos left without text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=1536, help="the engine's default detection side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--throughput-images", type=int, default=24)
    ap.add_argument("--fts-documents", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="6 + 4 photos, 6 for throughput")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ocr.json")
    args = ap.parse_args()
    if args.quick:
        args.text, args.plain, args.throughput_images, args.fts_documents = 6, 4, 6, 5000
    load_start = load()
    strecha = testset.photos(DATA, ("strecha/scenes/*/*.jpg",))
    fonts = testset.find_fonts()
    samples = testset.build_testset(strecha, n_text=args.text, n_plain=args.plain, seed=args.seed,
                                    fonts=fonts, max_side=1536, sizes=(14, 90))
    with tempfile.TemporaryDirectory() as tmp:
        testset.write_testset(samples, Path(tmp))
        images = [Image.open(Path(tmp) / s.name).convert("RGB") for s in samples]
    print(f"test set: {sum(s.has_text for s in samples)} photos with "
          f"{sum(len(s.words) for s in samples)} drawn words, "
          f"{sum(not s.has_text for s in samples)} without text; {len(fonts)} fonts; "
          f"load {load_start}", flush=True)

    sides = sorted({args.side, 1024, 768, 512}, reverse=True)
    engines = {s: RapidOcrEngine(threads=args.threads, side=s) for s in sides}
    passes = [("full", args.side), ("detect", args.side), ("full", 1024), ("detect", 1024),
              ("detect", 768), ("detect", 512)]
    passes = list(dict.fromkeys(passes))
    rows = run_passes(images, engines, passes)

    quality = {f"full side {side}": ocr_quality(samples, [r[0] for r in rows[("full", side)]])
               for mode, side in passes if mode == "full"}
    cost = {f"{mode} side {side}": cost_summary(samples, rows[(mode, side)])
            for mode, side in passes}
    fires = {}
    for mode, side in passes:
        if mode != "detect":
            continue
        fired = [bool(r[0]) for r in rows[(mode, side)]]
        on_text = [f for f, s in zip(fired, samples, strict=True) if s.has_text]
        on_plain = [f for f, s in zip(fired, samples, strict=True) if not s.has_text]
        fires[f"detect side {side}"] = {
            "text_photos": round(float(np.mean(on_text)), 3),
            "text_free_photos": round(float(np.mean(on_plain)), 3) if on_plain else None,
        }
    # Low-resolution gates: detection at 512 or 768 px, full OCR at the default side where it
    # fired; CPU composed from the measured per-image costs of the two passes.
    full_rows = rows[("full", args.side)]
    plain_idx = [i for i, s in enumerate(samples) if not s.has_text]
    text_idx = [i for i, s in enumerate(samples) if s.has_text]
    full_cost = cost[f"full side {args.side}"]
    gates = {}
    for gate_side in (512, 768):
        gate_rows = rows[("detect", gate_side)]
        fired = [bool(r[0]) for r in gate_rows]
        gate_reads = [r[0] if f else [] for r, f in zip(full_rows, fired, strict=True)]
        cpu = [g[2] + f * r[2] for g, r, f in zip(gate_rows, full_rows, fired, strict=True)]
        q = ocr_quality(samples, gate_reads)
        gates[f"gate side {gate_side}"] = {
            "recall": q["recall"],
            "recall_by_size": {k: v for k, v in q["recall_by"].items() if k.startswith("size")},
            "cpu_s_text_photos": round(float(np.mean([cpu[i] for i in text_idx])), 4),
            "cpu_s_text_free_photos": round(float(np.mean([cpu[i] for i in plain_idx])), 4)
            if plain_idx else None,
        }
    gate = {
        "how": "detect at the gate side, then full OCR at the default side where it fired; CPU "
               "seconds composed from the measured per-image costs of the two passes",
        "without_gate": {
            "recall": quality[f"full side {args.side}"]["recall"],
            "recall_by_size": {k: v for k, v in quality[f"full side {args.side}"]["recall_by"]
                               .items() if k.startswith("size")},
            "cpu_s_text_photos": full_cost["text_photos"]["cpu_s"],
            "cpu_s_text_free_photos": full_cost["text_free_photos"]["cpu_s"]
            if plain_idx else None},
        **gates,
    }
    detect_share = {
        k: round(cost[f"detect side {args.side}"][k]["cpu_s"] /
                 cost[f"full side {args.side}"][k]["cpu_s"], 3)
        for k in ("text_photos", "text_free_photos") if cost[f"full side {args.side}"][k]
    }
    print("retrieval ...", flush=True)
    ret = retrieval(samples, [r[0] for r in full_rows], args.k)
    print("fts at scale ...", flush=True)
    scale = fts_at_scale(args.fts_documents)
    print("throughput ...", flush=True)
    tp_paths = [Path(s.source) for s in samples[:args.throughput_images]]
    tp = throughput(tp_paths, engines[args.side], args.threads, batch=16)

    result = {
        "command": "python benchmarks/ocr.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "load_average_start": load_start,
        "testset": {"photos": "strecha scenes, 1536 px", "seed": args.seed,
                    "text_photos": len(text_idx), "text_free_photos": len(plain_idx),
                    "words_drawn": sum(len(s.words) for s in samples), "fonts": len(fonts),
                    "font_sizes_px": [14, 90]},
        "engine": engines[args.side].identity,
        "ocr_quality": quality,
        "ocr_cost_per_image": cost,
        "detection_cpu_share_of_full": detect_share,
        "detector_fires_on": fires,
        "low_resolution_gate": gate,
        "confidence_sweep": confidence_sweep(samples, [r[0] for r in full_rows]),
        "retrieval": ret,
        "fts_at_scale": scale,
        "indexing_throughput": tp,
        "load_average_end": load(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, args.side)
    print(f"wrote {args.out}")


def print_table(r: dict, side: int) -> None:
    print(f"\nmachine: {r['machine']['cpu']}, {r['machine']['cores']} cores; load "
          f"{r['load_average_start']} -> {r['load_average_end']}")
    print("\nOCR quality        recall  precision  false words / text-free photo")
    for name, q in r["ocr_quality"].items():
        print(f"  {name:16s} {q['recall']:6.3f}  {q['precision']:9.3f}  "
              f"{q['false_words_per_text_free_photo']:6.2f}")
    print("\nOCR cost per image (CPU s / wall s)   text photos        text-free photos")
    for name, c in r["ocr_cost_per_image"].items():
        t, p = c["text_photos"], c["text_free_photos"]
        ps = f"{p['cpu_s']:6.3f} / {p['wall_s']:6.3f}" if p else "-"
        print(f"  {name:34s} {t['cpu_s']:6.3f} / {t['wall_s']:6.3f}   {ps}")
    print(f"  detection share of full OCR CPU: {r['detection_cpu_share_of_full']}")
    print(f"  detector fires on: {r['detector_fires_on']}")
    print("\n  gate                 recall  CPU s text photos  CPU s text-free photos")
    for name, g in r["low_resolution_gate"].items():
        if isinstance(g, dict):
            print(f"  {name:20s} {g['recall']:6.3f}  {g['cpu_s_text_photos']:17.3f}  "
                  f"{g['cpu_s_text_free_photos'] or 0:22.3f}")
    print("\n  min word confidence  recall  precision  false words / text-free photo")
    for t, c in r["confidence_sweep"].items():
        print(f"  {t:20s} {c['recall']:6.3f}  {c['precision']:9.3f}  "
              f"{c['false_words_per_text_free_photo']:6.2f}")
    ret = r["retrieval"]
    print(f"\nretrieval: {ret['queries']} queries ({ret['word_queries']} words, "
          f"{ret['phrase_queries']} phrases), k = {ret['k']}; vector channel is a STAND-IN")
    print("  tokenizer                   mAP: text  vector  hybrid(equal)  hybrid(text first)"
          "   text top-n at hybrid top-n (equal, text first)")
    for tok, t in ret["tokenizers"].items():
        m = t["mAP"]
        kept = t["text_top_n_at_hybrid_top_n"]
        print(f"  {tok:30s} {m['text']:6.3f}  {m['vector']:6.3f}  "
              f"{m['hybrid_equal_weights']:13.3f}  {m['hybrid_text_first']:18.3f}   "
              f"{kept['hybrid_equal_weights']['mean']}, {kept['hybrid_text_first']['mean']}")
        print(f"    text mAP by query kind: {t['text_mAP_by_query_kind']}")
    print(f"\nFTS5 at scale: {r['fts_at_scale']}")
    tp = r["indexing_throughput"]
    print(f"\nindexing (ViT-B-32 random, batch {tp['batch']}): {tp['img_per_s_without_ocr']} img/s "
          f"without OCR, {tp['img_per_s_with_ocr']} img/s with OCR (ratio {tp['ratio']})")


if __name__ == "__main__":
    main()
