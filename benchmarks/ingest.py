"""End-to-end indexing throughput vs the model's own forward-pass throughput.

Files on disk -> vectors committed, through `Library.index`, against
`encode_pixels` on ready-made tensors: same architecture (the default model's,
random weights), batch size and threads, in the same run. The ratio is what
matters: at 1.0 decoding, hashing and I/O are fully hidden behind inference.

    python benchmarks/ingest.py                 # default: ViT-B-32, real camera JPEGs
    python benchmarks/ingest.py --arch loupe-tiny --copies 1   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loupe.core.config import DEFAULT_MODEL, IndexOptions
from loupe.library import Library

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "strecha"


def make_folder(dest: Path, copies: int) -> int:
    """Real camera JPEGs; each copy gets one extra trailing byte (after the JPEG's end
    marker, which decoders ignore) so its content hash differs and it is embedded again."""
    sources = sorted((DATA / "scenes").glob("*/*.jpg")) + sorted((DATA / "fullsize").glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no photos under {DATA}: this benchmark needs ../shared/data")
    n = 0
    for c in range(copies):
        for src in sources:
            out = dest / f"copy{c}" / src.parent.name / src.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(src.read_bytes() + bytes([c]) * (c > 0))
            n += 1
    return n


def forward_rate(encoder, batch_size: int, batches: int) -> float:
    size = encoder.image_size
    x = torch.randn(batch_size, 3, size, size)
    encoder.encode_pixels(x)  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        encoder.encode_pixels(x)
    return batch_size * batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=DEFAULT_MODEL.split(":")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--copies", type=int, default=2, help="times the photo set is repeated")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = ap.parse_args()

    model = f"{args.arch}:random"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        n_files = make_folder(root, args.copies)
        lib = Library.open(root / ".loupe", model=model, device="cpu")
        encoder = lib.encoder
        n_batches = max(2, n_files // args.batch_size)
        before = forward_rate(encoder, args.batch_size, n_batches)
        opts = IndexOptions(batch_size=args.batch_size, workers=args.workers)
        report = lib.index(opts)
        after = forward_rate(encoder, args.batch_size, n_batches)
        e2e = report.embedded / report.seconds
        lib.close()
        shutil.rmtree(root / ".loupe")

    forward = statistics.mean([before, after])
    result = {
        "model": model, "batch_size": args.batch_size, "files": n_files,
        "embedded": report.embedded, "errors": report.errors, "torch_threads": torch.get_num_threads(),
        "forward_img_s": round(forward, 2), "forward_img_s_before": round(before, 2),
        "forward_img_s_after": round(after, 2), "end_to_end_img_s": round(e2e, 2),
        "ratio": round(e2e / forward, 3), "machine": platform.processor() or platform.machine(),
    }
    print(f"{'model':<22}{'files':>7}{'forward img/s':>15}{'end-to-end img/s':>18}{'ratio':>8}")
    print(f"{model:<22}{n_files:>7}{forward:>15.2f}{e2e:>18.2f}{e2e / forward:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
