"""Export an open_clip model's towers to ONNX once, check them against PyTorch, cache them.

    ref = loupe.models.openclip.load_encoder("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    manifest = export_model(ref, folder)                     # both towers
    manifest = export_model(ref, folder, towers=("text",))   # just one

Each tower is its own file with a dynamic batch axis; a causal, end-of-text-pooled text tower
also has a dynamic sequence axis (it is fed ids cut after the end-of-text token), any other
text tower takes the padded context. After export each tower is run on ONNX Runtime and
compared with the PyTorch reference (cosine >= 0.9999 on every probe photo and text, and the
same token ids from the torch-free tokenizer): a tower that fails is recorded as failed and
never used. Needs torch, open_clip, onnx and onnxscript (the `torch` extra).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models import check
from loupe.models.base import check_towers, normalised
from loupe.models.cache import EXPORT_FORMAT, read_manifest, write_json
from loupe.models.onnx import OrtTower, make_tower
from loupe.models.openclip import Encoder, cut_text_tower
from loupe.models.text import VOCAB_FILE, ClipTokenizer, pad

log = logging.getLogger(__name__)
OPSET = 18
FILES = {"image": "visual.onnx", "text": "textual.onnx"}


def _torch_export(module: Any, example: Any, path: Path, input_name: str,
                  dynamic: dict[int, Any]) -> None:
    """torch.onnx's dynamo exporter, quietly; a single file unless it passes 2 GB."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # export the plain attention ops
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=[input_name], output_names=["features"],
                                        dynamic_shapes={input_name: dynamic}, verbose=False)
            program.save(str(tmp))
    except Exception as exc:
        raise ModelError(f"could not export to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    data = tmp.with_name(tmp.name + ".data")
    if data.exists():  # large models keep their weights beside the graph, under the final name
        import onnx

        model = onnx.load(str(tmp))
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
        tmp.unlink()
        data.unlink()
    else:
        tmp.replace(path)


def export_image_tower(ref: Encoder, path: Path) -> dict[str, Any]:
    import torch

    visual = ref.model.visual

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.visual(pixels)

    s = ref.image_size
    example = torch.zeros(2, 3, s, s, dtype=ref._dtype)
    _torch_export(ImageTower().eval(), example, path, "pixels",
                  {0: torch.export.Dim("batch", min=1, max=4096)})
    return {"files": {"fp32": path.name}, "input": "pixels"}


def export_text_tower(ref: Encoder, path: Path) -> dict[str, Any]:
    import torch

    ctx = int(ref.tokenizer.context_length)
    cut = cut_text_tower(ref.model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if cut is not None:
        module, n = cut, min(8, ctx)
        dynamic = {0: batch, 1: torch.export.Dim("seq", min=2, max=ctx)}
    else:
        model = ref.model

        class PaddedText(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.model.encode_text(ids)

        module, n, dynamic = PaddedText().eval(), ctx, {0: batch}
    example = torch.zeros(2, n, dtype=torch.long)
    example[:, 0], example[:, -1] = 49406, 49407
    _torch_export(module, example, path, "ids", dynamic)
    return {"files": {"fp32": path.name}, "input": "ids", "cut": cut is not None,
            "context_length": ctx}


def _tokenizer_cfg(ref: Encoder, folder: Path, texts: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The torch-free tokenizer for this model and whether it gives open_clip's ids ('' if so)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    if not isinstance(ref.tokenizer, SimpleTokenizer) or ref.tokenizer.reduction_fn is not None:
        return {}, f"tokenizer {type(ref.tokenizer).__name__} has no torch-free equivalent here"
    ctx = int(ref.tokenizer.context_length)
    shutil.copyfile(default_bpe(), folder / VOCAB_FILE)
    cfg = {"kind": "clip-bpe", "vocab": VOCAB_FILE, "context_length": ctx, "pad_id": 0}
    ours = pad(ClipTokenizer(folder / VOCAB_FILE, ctx)(list(texts)), ctx)
    theirs = ref.tokenizer(list(texts)).numpy()
    if not np.array_equal(ours, theirs):
        bad = [t for t, a, b in zip(texts, ours, theirs, strict=True) if not np.array_equal(a, b)]
        return cfg, f"torch-free tokenizer differs from open_clip's on {bad[:3]}"
    return cfg, ""


def export_model(ref: Encoder, folder: str | Path, towers: Iterable[str] | None = None,
                 images: Iterable[Image.Image | str | Path] = (), texts: Sequence[str] = (),
                 threshold: float = check.MIN_COSINE) -> dict[str, Any]:
    """Export (if not done yet) and check the asked towers of `ref` into `folder`.

    Returns the manifest; `manifest["towers"][t]["check"]["ok"]` says whether tower t may be
    used. `images`/`texts` are added to the shipped probes for the check."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    towers = check_towers(towers)
    manifest = read_manifest(folder) or {}
    if manifest.get("identity") not in (None, ref.identity):
        manifest = {}  # another model's export under this key: start again
    manifest.update({"format": EXPORT_FORMAT, "identity": ref.identity})
    manifest.setdefault("towers", {})
    import onnxruntime
    import torch

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    for tower in sorted(towers):
        info = manifest["towers"].get(tower)
        if info and info.get("check"):
            continue
        path = folder / FILES[tower]
        log.info("exporting the %s tower of %s to %s", tower, ref.name, path)
        try:
            if tower == "image":
                info = export_image_tower(ref, path)
                info["check"] = check_image_tower(ref, OrtTower(path), images, threshold)
            else:
                info = export_text_tower(ref, path)
                probe = check.texts_for_check(texts)
                tok_cfg, why = _tokenizer_cfg(ref, folder, probe)
                info["tokenizer"] = tok_cfg
                if why:
                    info["check"] = {"ok": False, "why": why}
                else:
                    info["check"] = check_text_tower(ref, OrtTower(path), tok_cfg, folder, probe,
                                                     threshold, cut=info["cut"])
        except ModelError as exc:
            info = {"files": {}, "check": {"ok": False, "why": str(exc)}}
        info["versions"] = versions
        manifest["towers"][tower] = info
        write_json(folder / "manifest.json", manifest)
    return manifest


def check_image_tower(ref: Encoder, tower: Any, images: Iterable[Any] = (),
                      threshold: float = check.MIN_COSINE) -> dict[str, Any]:
    pixels = check.probe_pixels(ref.identity, ref.prepare, images)
    stats = check.compare(ref.encode_pixels(pixels), normalised(tower.run(pixels)))
    return _verdict(stats, threshold, "image")


def check_text_tower(ref: Encoder, tower: Any, tok_cfg: dict[str, Any], folder: Path,
                     texts: Sequence[str], threshold: float = check.MIN_COSINE,
                     cut: bool = False) -> dict[str, Any]:
    tok = ClipTokenizer(folder / tok_cfg["vocab"], tok_cfg["context_length"])
    rows = tok(list(texts))
    ids = pad(rows, max(map(len, rows)) if cut else tok_cfg["context_length"], tok_cfg["pad_id"])
    # the reference is open_clip's own encode_text on the padded context
    stats = check.compare(ref.encode_text_padded(list(texts)), normalised(tower.run(ids)))
    return _verdict(stats, threshold, "text")


def _verdict(stats: dict[str, Any], threshold: float, tower: str) -> dict[str, Any]:
    ok = check.passes(stats, threshold)
    out = {"ok": ok, "threshold": threshold, "against": "torch", **stats}
    if not ok:
        out["why"] = (f"the exported {tower} tower disagrees with PyTorch: "
                      f"{check.summary(stats)} (needs every cosine >= {threshold})")
    return out


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of the MatMul/Gemm weights (activations are
    quantised per batch at run time). Fast only where the CPU has VNNI (or ARM's dot product)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.name}.tmp")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    tmp.replace(dst)


def make_reduced(folder: str | Path, precision: str, images: Iterable[Any] = (),
                 texts: Sequence[str] = (), threads: int | None = None) -> dict[str, Any]:
    """Build (int8: quantise the files) and measure a reduced-precision variant against the
    checked fp32 export: agreement (mean/worst cosine, top-10 overlap on the probe gallery) and
    speed, recorded in the manifest under `reduced[precision]`. Needs no torch."""
    from loupe.models.onnx import load_tokenizer

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ModelError(f"{folder} holds no exported model")
    report: dict[str, Any] = {}
    for tower, info in sorted(manifest["towers"].items()):
        if not info.get("check", {}).get("ok"):
            continue
        fp32_path = folder / info["files"]["fp32"]
        if precision == "int8":
            name = fp32_path.name.replace(".onnx", ".int8.onnx")
            if not (folder / name).exists():
                quantize_int8(fp32_path, folder / name)
            info["files"]["int8"] = name
            ref_t, cand_t = OrtTower(fp32_path, threads), OrtTower(folder / name, threads)
        elif precision == "bf16":
            ref_t = OrtTower(fp32_path, threads)
            cand_t = make_tower(fp32_path, "openvino", "bf16", threads)
        else:
            raise ModelError(f"unknown reduced precision {precision!r}: use int8 or bf16")
        if tower == "image":
            x = check.probe_pixels(manifest["identity"], None, images)
        else:
            cfg = info["tokenizer"]
            probe = check.texts_for_check(texts)
            x = pad(load_tokenizer(folder, cfg)(probe), cfg["context_length"], cfg.get("pad_id", 0))
        stats = check.compare(normalised(ref_t.run(x)), normalised(cand_t.run(x)))
        speed = check.interleaved_rates({"fp32": lambda t=ref_t, x=x: t.run(x),
                                         precision: lambda t=cand_t, x=x: t.run(x)}, len(x))
        stats["speed_items_s"] = {k: round(v, 2) for k, v in speed.items()}
        stats["speedup"] = round(speed[precision] / speed["fp32"], 3)
        report[tower] = stats
    manifest.setdefault("reduced", {})[precision] = report
    write_json(folder / "manifest.json", manifest)
    return report
