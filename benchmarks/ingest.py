"""Encoder backends on real photos: model-only throughput, agreement with torch, query latency.

For one architecture (default ViT-B-32 with seeded random weights: realistic timing, no
download) on ~150 real photos from ../shared/data, decoded as the indexer decodes them:

- image tower, model only (prepared pixels in, vectors out, batches of --batch-size):
  img/s of torch fp32 (the reference), ONNX Runtime fp32, OpenVINO fp32 (if installed), and
  int8 (ONNX Runtime dynamic quantisation) / bf16 (OpenVINO) as opt-in variants; each
  non-reference backend's agreement with torch: mean and worst cosine per image, and the
  overlap of every image's top-10 neighbours within the set.
- text tower, a warm short query ("red car", one text, no cache): latency with the ids padded
  to the context vs cut after the end-of-text token, in torch and ONNX Runtime (+ OpenVINO).
- the one-off cost of exporting and checking both towers.

- a cold `loupe index` (a fresh process on a fresh library: start-up, imports, the model load
  included) on --e2e-photos real photos against the default backend's model-only rate on the
  same photos, measured in separate processes before and after it: the ratio end to end /
  model only, the cores it kept busy, and where the rest went (process start-up and exit, the
  model load, the pipeline beyond the model). `--part cold` runs only this.

Speeds are compared only as ratios within this run: the backends are timed in turns
(--rounds rounds, median), so a change of machine load hits them alike. The CPU model, its
relevant instruction sets, the thread counts and the load average before and after are
recorded. Results: benchmarks/results/ingest.json and a table.

    python benchmarks/ingest.py                       # ViT-B-32:random, ~150 photos
    python benchmarks/ingest.py --arch loupe-tiny --rounds 1   # quick smoke run
    flock /tmp/loupe-bench.lock python benchmarks/ingest.py --part cold   # the cold ratio only

Measured (defaults: ViT-B-32:random, 150 photos, batches of 32, 3 rounds; AMD EPYC, 2 cores,
AVX2 without VNNI or bf16; a shared machine under heavy load, load average 10 -> 17, so the
absolute numbers are several times slower than idle and only the ratios mean anything):

    image tower        x torch   mean cos    worst cos   top-10 overlap
    torch fp32          1.00     (reference)
    onnxruntime fp32    1.23     1.000000    1.000000    1.000
    openvino fp32       1.38     1.000000    1.000000    1.000
    onnxruntime int8    2.04     0.989367    0.983864    0.940   (no VNNI: opt-in refused here)

    query "red car"    padded (77 tokens) -> cut (4 tokens)
    torch              5104 ms -> 2220 ms   (2.3x)
    onnxruntime         879 ms ->  139 ms   (6.3x)
    openvino            795 ms ->  141 ms   (5.6x)

    cut vs torch padded vectors: max |difference| 1.3e-7 (torch), 1.8e-7 (ONNX Runtime, OpenVINO)
    export + check of both towers: 188 s (once per model; under that load)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loupe.media.decode import load_image
from loupe.models import check
from loupe.models.base import normalised
from loupe.models.device import cpu_info
from loupe.models.export import export_model, quantize_int8
from loupe.models.onnx import OrtTower, load_exported, make_tower
from loupe.models.openclip import load_encoder as load_torch
from loupe.models.text import pad

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def photo_paths(limit: int) -> list[Path]:
    sets = [sorted((DATA / "strecha" / "scenes").glob("*/*.jpg")),
            sorted((DATA / "strecha" / "fullsize").glob("*.jpg")),
            sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg")),
            sorted((DATA / "imagededup_testdata" / "base_images").glob("*.jpg")),
            sorted((DATA / "sacre_coeur" / "mapping_scale").glob("*.jpg"))]
    paths = [p for s in sets for p in s][:limit]
    if len(paths) < 20:
        raise SystemExit(f"too few photos under {DATA}: this benchmark needs ../shared/data")
    return paths


def batched(fn, x: np.ndarray, bs: int) -> np.ndarray:
    return np.concatenate([fn(x[i:i + bs]) for i in range(0, len(x), bs)])


def time_in_turns(fns: dict, rounds: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Seconds (median over rounds) of each fn, timed in turns; and each fn's first output."""
    outs = {name: fn() for name, fn in fns.items()}  # warm-up, and the vectors compared
    secs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            secs[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in secs.items()}, outs


def cold_index(model: str, n_photos: int, rounds: int, work: Path) -> dict:
    """A cold `loupe index` process (start-up included) on a folder of real photos against
    the default backend's model-only rate on the same photos, in turns; and where the rest
    goes: process start-up + imports, the model load, and the pipeline itself."""
    import subprocess
    import sys

    sys.path.insert(0, str(HERE))
    from peers import (
        LOUPE,
        LOUPE_MODEL_SCRIPT,
        export_loupe_model,
        loupe_env,
        make_photos,
        run_rusage,
    )

    cache = work / "loupe-models"
    photos = make_photos(work / "photos-ingest", variants=2, limit=n_photos)
    export_s = export_loupe_model(model, cache, photos)  # once per model; cached in `work`
    env = loupe_env(cache)
    lib = work / "ingest-lib"
    sample = [str(p) for p in photos[:128]]
    payload = json.dumps({"photos": sample, "batch_size": 32, "rounds": 3, "model": model})
    runs = []
    for _ in range(rounds):
        res = run_rusage([sys.executable, "-c", LOUPE_MODEL_SCRIPT, payload], env)
        before = json.loads(res["stdout"].strip().splitlines()[-1])
        import_s = run_rusage([sys.executable, "-c", "import loupe.cli"], env)["wall_s"]
        subprocess.run(["rm", "-rf", str(lib)], check=True)
        res = run_rusage([*LOUPE, "index", str(photos[0].parent), "--library", str(lib),
                          "--model", model, "--json"], env)
        report = json.loads(res["stdout"])
        assert report["added"] == len(photos) and report["errors"] == 0, report
        res2 = run_rusage([sys.executable, "-c", LOUPE_MODEL_SCRIPT, payload], env)
        after = json.loads(res2["stdout"].strip().splitlines()[-1])
        model_img_s = (before["model_img_s"] + after["model_img_s"]) / 2
        e2e = len(photos) / res["wall_s"]
        ideal_s = len(photos) / model_img_s
        load_s = (before["load_s"] + after["load_s"]) / 2
        runs.append({
            "photos": len(photos), "wall_s": res["wall_s"], "cpu_s": res["cpu_s"],
            "cores_busy": res["cores_busy"], "peak_rss_mib": res["peak_rss_mib"],
            "end_to_end_img_s": round(e2e, 2), "model_only_img_s": round(model_img_s, 2),
            "ratio": round(e2e / model_img_s, 3), "encoder": report.get("encoder"),
            # where the time beyond the model's own goes
            "startup_and_exit_s": round(res["wall_s"] - report["seconds"], 2),
            "import_s": round(import_s, 2), "model_load_s": round(load_s, 2),
            "model_only_would_take_s": round(ideal_s, 2),
            "pipeline_overhead_s": round(report["seconds"] - load_s - ideal_s, 2),
        })
    best = max(runs, key=lambda r: r["ratio"])
    return {"runs": runs, "best": best, "one_off_export_s": round(export_s, 1),
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "backends", "cold"), default="all",
                    help="backends: the model-only comparison; cold: a cold `loupe index` "
                    "end to end against model-only")
    ap.add_argument("--e2e-photos", type=int, default=300)
    ap.add_argument("--e2e-rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/loupe-peers"),
                    help="scratch folder of the cold run (its export is kept, shared with peers.py)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--photos", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--query-reps", type=int, default=30)
    ap.add_argument("--cache", type=Path, default=None,
                    help="export cache (default: a temporary folder, so the export is timed)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = ap.parse_args()
    if args.part == "cold":
        load_before = os.getloadavg()
        cold = cold_index(f"{args.arch}:random", args.e2e_photos, args.e2e_rounds, args.work)
        cold["load_avg_before"] = [round(x, 2) for x in load_before]
        print_cold(cold)
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        old["cold_index"] = cold
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(old, indent=2) + "\n")
        print(f"wrote {args.out} (cold_index)")
        return

    import onnxruntime
    import torch

    from loupe.models.openvino import available as openvino_available

    load_before = os.getloadavg()
    cpu = cpu_info()
    model = f"{args.arch}:random"
    ref = load_torch(model, device="cpu")
    size = ref.image_size

    paths = photo_paths(args.photos)
    pixels = np.stack([ref.prepare(load_image(p, reduce_to=size)) for p in paths])

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        folder = cache / f"bench-{args.arch}"
        t = time.perf_counter()
        manifest = export_model(ref, folder, images=[load_image(p) for p in paths[:8]])
        export_s = time.perf_counter() - t
        checks = {tower: manifest["towers"][tower]["check"] for tower in ("image", "text")}
        onnx_enc = load_exported(folder, backend="onnxruntime", text_cache=0)

        # --- image tower, model only --------------------------------------------------------
        image_fns = {"torch fp32": lambda: batched(ref.encode_pixels, pixels, args.batch_size)}
        ort_img = OrtTower(folder / "visual.onnx")
        image_fns["onnxruntime fp32"] = lambda: batched(
            lambda b: normalised(ort_img.run(b)), pixels, args.batch_size)
        notes: dict[str, str] = {}
        if openvino_available():
            ov_img = make_tower(folder / "visual.onnx", "openvino", "fp32")
            image_fns["openvino fp32"] = lambda: batched(
                lambda b: normalised(ov_img.run(b)), pixels, args.batch_size)
        else:
            notes["openvino"] = "not installed"
        quantize_int8(folder / "visual.onnx", folder / "visual.int8.onnx")
        int8_img = OrtTower(folder / "visual.int8.onnx")
        image_fns["onnxruntime int8"] = lambda: batched(
            lambda b: normalised(int8_img.run(b)), pixels, args.batch_size)
        if not cpu["vnni"]:
            notes["int8"] = ("measured anyway: this CPU has no VNNI, so load_encoder refuses "
                             "precision=int8 here")
        if cpu["bf16"] and openvino_available():
            bf16_img = make_tower(folder / "visual.onnx", "openvino", "bf16")
            image_fns["openvino bf16"] = lambda: batched(
                lambda b: normalised(bf16_img.run(b)), pixels, args.batch_size)
        else:
            notes["bf16"] = "skipped: this CPU has no bf16 instructions" if not cpu["bf16"] \
                else "skipped: openvino not installed"
        image_s, image_out = time_in_turns(image_fns, args.rounds)

        reference = image_out["torch fp32"]
        images = {}
        for name, secs in image_s.items():
            row = {"img_s": round(len(pixels) / secs, 2),
                   "vs_torch": round(image_s["torch fp32"] / secs, 3)}
            if name != "torch fp32":
                stats = check.compare(reference, image_out[name])
                row.update({"mean_cos": stats["mean_cos"], "worst_cos": stats["worst_cos"],
                            "top10_overlap": stats["top10_overlap"]})
            images[name] = row

        # --- text tower: a warm short query --------------------------------------------------
        query = ["red car"]
        ctx = int(ref.tokenizer.context_length)
        ids_cut = onnx_enc.tokens(query)
        ids_pad = pad([list(ids_cut[0])], ctx)
        torch_cut, torch_pad = ref.tokens(query), ref.tokenizer(query)
        ort_txt = onnx_enc.text_tower

        def torch_run(ids, cut):
            def run():
                with torch.inference_mode():
                    return (ref.cut_text(ids) if cut else ref.model.encode_text(ids)).numpy()
            return run

        text_fns = {"torch padded": torch_run(torch_pad, False),
                    "torch cut": torch_run(torch_cut, True),
                    "onnxruntime padded": lambda: ort_txt.run(ids_pad),
                    "onnxruntime cut": lambda: ort_txt.run(ids_cut)}
        if openvino_available():
            ov_txt = make_tower(folder / "textual.onnx", "openvino", "fp32")
            text_fns["openvino padded"] = lambda: ov_txt.run(ids_pad)
            text_fns["openvino cut"] = lambda: ov_txt.run(ids_cut)
        text_s, text_out = time_in_turns(text_fns, args.query_reps)
        want = normalised(text_out["torch padded"])
        texts = {name: {"ms": round(secs * 1000, 2),
                        "tokens": int((ids_cut if name.endswith("cut") else ids_pad).shape[1]),
                        "max_abs_diff_vs_torch_padded": float(
                            np.abs(normalised(text_out[name]) - want).max())}
                 for name, secs in text_s.items()}
        t = time.perf_counter()
        full = onnx_enc.encode_text(["a photo of a red car parked in front of a church"])
        end_to_end_ms = (time.perf_counter() - t) * 1000
        assert full.shape == (1, ref.dim)

    result = {
        "model": model, "photos": len(pixels), "batch_size": args.batch_size,
        "rounds": args.rounds, "query_reps": args.query_reps,
        "machine": {"cpu": cpu["model"], "flags": cpu["flags"], "vnni": cpu["vnni"],
                    "bf16": cpu["bf16"], "cores": os.cpu_count(), "arch": platform.machine(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "torch_threads": torch.get_num_threads()},
        "export_and_check_s": round(export_s, 1),
        "export_checks": {k: {m: v[m] for m in ("ok", "n", "mean_cos", "worst_cos")}
                          for k, v in checks.items()},
        "image_tower": images,
        "text_query": texts,
        "text_query_onnx_with_tokenizer_ms": round(end_to_end_ms, 2),
        "notes": notes,
    }
    if openvino_available():
        import openvino

        result["versions"]["openvino"] = openvino.__version__

    print(f"{model} on {len(pixels)} photos; CPU {cpu['model']} ({', '.join(cpu['flags'])}); "
          f"load {result['machine']['load_avg_before']} -> {result['machine']['load_avg_after']}")
    print(f"export + check of both towers: {export_s:.1f} s")
    print(f"{'image tower':<20}{'img/s':>9}{'x torch':>9}{'mean cos':>12}{'worst cos':>12}{'top-10':>8}")
    for name, r in images.items():
        extra = (f"{r['mean_cos']:>12.6f}{r['worst_cos']:>12.6f}{r['top10_overlap']:>8.3f}"
                 if "mean_cos" in r else "")
        print(f"{name:<20}{r['img_s']:>9.2f}{r['vs_torch']:>9.2f}{extra}")
    print(f"{'query (red car)':<20}{'ms':>9}{'tokens':>9}{'max |diff|':>12}")
    for name, r in texts.items():
        print(f"{name:<20}{r['ms']:>9.2f}{r['tokens']:>9}{r['max_abs_diff_vs_torch_padded']:>12.2e}")
    for k, v in notes.items():
        print(f"note ({k}): {v}")
    if args.part == "all":
        cold = cold_index(model, args.e2e_photos, args.e2e_rounds, args.work)
        print_cold(cold)
        result["cold_index"] = cold
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_cold(cold: dict) -> None:
    print(f"{'cold loupe index':<18}{'photos':>7}{'wall s':>8}{'e2e img/s':>10}{'model img/s':>12}"
          f"{'ratio':>7}{'cores':>7}{'start+exit s':>13}{'load s':>8}{'pipeline +s':>12}")
    for r in cold["runs"]:
        print(f"{'':<18}{r['photos']:>7}{r['wall_s']:>8.1f}{r['end_to_end_img_s']:>10.2f}"
              f"{r['model_only_img_s']:>12.2f}{r['ratio']:>7.3f}{r['cores_busy']:>7.2f}"
              f"{r['startup_and_exit_s']:>13.2f}{r['model_load_s']:>8.2f}"
              f"{r['pipeline_overhead_s']:>12.2f}")


if __name__ == "__main__":
    main()
