"""`load_encoder`: one call for every backend; picks the exported ONNX towers on a CPU.

    enc = load_encoder("ViT-B-32:laion2b_s34b_b79k")                  # auto: ONNX Runtime on a CPU
    enc = load_encoder("ViT-B-32:laion2b_s34b_b79k", towers=("text",))  # queries only
    enc = load_encoder("loupe-tiny", weights="ckpt.pt", backend="torch")
    enc = load_encoder("immich:ViT-B-32__openai")                      # Immich's ONNX exports

backend="auto": on a CUDA or Apple GPU the torch reference; on a CPU the model's exported
towers from the cache (exported and checked against torch on first use, which needs the
`torch` extra; later runs need no torch at all), on ONNX Runtime, or on OpenVINO where that is
installed and measured faster on this CPU. If an export cannot be used (it failed its check,
or the tokenizer has no torch-free twin) auto falls back to torch and says why in
`enc.report["fallback"]`; an explicit backend="onnxruntime"/"openvino" refuses instead.
$LOUPE_BACKEND, when set, replaces "auto" (e.g. torch, to never export).

precision="auto" is fp16 on a GPU (torch) and fp32 on a CPU; "fp16" needs a GPU (device cuda:
the CUDA path is torch, written but not measured here, no GPU was lent); "int8" / "bf16" (opt-in,
CPU only) run quantised / bf16 towers where the CPU has VNNI / bf16 instructions; their agreement
with fp32 and speed are in `enc.report["reduced"]`. What ran: `options.runtime_info(enc)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from loupe.core.errors import ModelError
from loupe.models import check, preprocess
from loupe.models.base import BaseEncoder, check_towers, normalised
from loupe.models.cache import dir_fingerprint, export_dir, read_manifest, write_json
from loupe.models.device import auto_is_cpu, check_device_name, cpu_info
from loupe.models.onnx import (
    BACKENDS,
    OrtTower,
    default_threads,
    load_exported,
    load_tokenizer,
    make_tower,
    tower_status,
)
from loupe.models.openclip import ModelSpec, resolve_source
from loupe.models.options import check_runtime, resolve_precision
from loupe.models.text import pad

log = logging.getLogger("loupe.models")
ALL_BACKENDS = ("auto", "torch", *BACKENDS)
# Overrides backend="auto" (e.g. LOUPE_BACKEND=torch where exporting is not wanted).
BACKEND_ENV = "LOUPE_BACKEND"
# OpenVINO replaces ONNX Runtime under backend="auto" only when it measured this much faster.
OPENVINO_MIN_SPEEDUP = 1.1


def load_encoder(name: str, weights: str | Path | None = None, device: str = "auto", *,
                 backend: str = "auto", towers: Iterable[str] | None = None,
                 precision: str = "auto", cache_dir: str | Path | None = None,
                 check_images: Iterable[Any] = (), threads: int | None = None,
                 truncate_text: bool = True, text_cache: int = 256) -> BaseEncoder:
    """An encoder for `name` (+ optional local `weights`) on the best backend for `device`.

    towers: ("image",), ("text",) or both (default): a query-only encoder never loads the image
    tower. cache_dir: where exports live (default $LOUPE_MODEL_CACHE or ~/.cache/loupe/models).
    check_images: photos (paths or PIL images) added to the probes an export is checked on."""
    towers = check_towers(towers)
    check_device_name(device)
    backend, precision = check_runtime(backend, precision, device)
    threads = threads or default_threads()
    if name.startswith("immich:") or (name == "immich" and weights is not None):
        from loupe.models.immich import load_immich

        if backend == "torch":
            raise ModelError("Immich models are ONNX exports: there is no torch backend for them")
        if precision not in ("auto", "fp32"):
            raise ModelError(f"Immich models run in fp32, not {precision}")
        return load_immich(name.partition(":")[2] or str(weights), towers=towers,
                           backend="onnxruntime" if backend == "auto" else backend,
                           cache_dir=cache_dir, threads=threads, text_cache=text_cache)

    if backend == "auto":  # Immich models are exports: the override is for open_clip ones
        try:
            backend, precision = check_runtime(os.environ.get(BACKEND_ENV) or "auto", precision,
                                               device)
        except ModelError as exc:
            raise ModelError(f"${BACKEND_ENV}: {exc}") from None
    on_cpu = device == "cpu" or (device == "auto" and _auto_is_cpu())
    # auto: fp16 on a GPU (torch), fp32 on a CPU
    precision = resolve_precision(precision, on_gpu=not on_cpu)
    if backend == "torch" or (backend == "auto" and not on_cpu and precision in ("fp32", "fp16")):
        return _torch(name, weights, device, towers, truncate_text, cache_dir, text_cache,
                      precision)
    if precision == "fp16":
        raise ModelError("precision fp16 runs on a GPU, and PyTorch sees none here: use fp32 "
                         "(or int8 / bf16 where the CPU has the instructions for them)")
    if not on_cpu:
        raise ModelError(f"backend {backend} / precision {precision} run on the CPU: "
                         f"use --device cpu (or backend torch for {device})")
    if precision != "fp32":
        _check_cpu_for(precision)
    spec = ModelSpec.parse(name, weights)
    source = resolve_source(spec, cache_dir)
    extra = dir_fingerprint(spec.weights) if spec.weights is not None and spec.weights.is_dir() else ""
    folder = export_dir(spec.arch, source, cache_dir, extra)
    manifest = read_manifest(folder)

    missing = [t for t in sorted(towers) if tower_status(manifest, t) == "missing"]
    if missing:
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("open_clip") is None:
            raise ModelError(f"{name} has not been exported for the {backend} backend yet, and "
                             "exporting needs PyTorch: pip install 'loupe-search[torch]' (once), "
                             "or use an exported model (e.g. immich:ViT-B-32__openai)")
        from loupe.models.export import export_model

        with _export_lock(folder):  # another process may be exporting the same model
            manifest = read_manifest(folder)
            missing = [t for t in sorted(towers) if tower_status(manifest, t) == "missing"]
            ref = None
            if missing:
                ref = _torch(name, weights, "cpu", towers, truncate_text, cache_dir, text_cache)
                log.warning("exporting %s (%s) for the %s backend: once per model",
                            name, " and ".join(missing), backend)
                manifest = export_model(ref, folder, missing, images=check_images)
    else:
        ref = None
    failed = {t: manifest["towers"][t]["check"].get("why", "failed its check")
              for t in sorted(towers) if tower_status(manifest, t) == "failed"}
    if "image" in towers and not preprocess.supports(manifest["identity"]):
        failed["image"] = (f"its pixel pipeline ({manifest['identity']['preprocess']}) needs "
                           "open_clip's transform")
    if failed:
        why = "; ".join(failed.values())
        if backend != "auto":
            raise ModelError(f"refusing the exported {', '.join(failed)} tower of {name}: {why}. "
                             "Use backend torch.")
        log.warning("using PyTorch for %s: %s", name, why)
        enc = ref or _torch(name, weights, "cpu", towers, truncate_text, cache_dir, text_cache)
        enc.report["fallback"] = why
        return enc
    del ref

    runtime = backend
    if backend == "auto":
        runtime = "openvino" if precision == "bf16" else _fastest_runtime(folder, towers, threads)
    elif precision == "bf16" and backend != "openvino":
        raise ModelError("precision bf16 runs on OpenVINO: use backend openvino or auto")
    if runtime == "openvino" and precision == "fp32":
        _check_runtime(folder, towers, "openvino", threads)
    if precision != "fp32":
        manifest = read_manifest(folder) or {}
        if precision not in manifest.get("reduced", {}):
            from loupe.models.export import make_reduced

            make_reduced(folder, precision, images=check_images, threads=threads)
    return load_exported(folder, towers, runtime, precision, threads, text_cache)


def peek_identity(name: str, weights: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The identity of a model exported before (from its manifest: image size, pixel pipeline),
    without loading it; None when it has not been exported or cannot be named cheaply. The
    indexer uses it to decode and prepare pixels while the model loads."""
    if name.startswith("immich"):
        return None
    try:
        spec = ModelSpec.parse(name, weights)
        if spec.weights is None and not spec.tag and not spec.arch.startswith(("hf-hub:", "local-dir:")):
            return None  # naming the default tag would import open_clip
        source = resolve_source(spec, cache_dir)
        extra = dir_fingerprint(spec.weights) if spec.weights is not None and spec.weights.is_dir() else ""
        manifest = read_manifest(export_dir(spec.arch, source, cache_dir, extra))
    except (ModelError, OSError, ValueError):
        return None
    identity = (manifest or {}).get("identity")
    return dict(identity) if isinstance(identity, dict) else None


def _auto_is_cpu() -> bool:
    if auto_is_cpu():
        return True  # decided without importing torch
    from loupe.models.device import resolve_device

    return resolve_device("auto").type == "cpu"


@contextlib.contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` across processes (POSIX; elsewhere a no-op)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _torch(name: str, weights: Any, device: str, towers: frozenset[str], truncate_text: bool,
           cache_dir: Any, text_cache: int, precision: str = "auto") -> BaseEncoder:
    from loupe.models.openclip import load_encoder as load_torch

    return load_torch(name, weights, device, towers=towers, truncate_text=truncate_text,
                      cache_dir=cache_dir, text_cache=text_cache, precision=precision)


def _check_cpu_for(precision: str) -> None:
    cpu = cpu_info()
    need = {"int8": "vnni", "bf16": "bf16"}[precision]
    if not cpu[need]:
        why = {"int8": "without them int8 kernels multiply in 16 bits, which can saturate",
               "bf16": "without them bf16 is emulated"}[precision]
        raise ModelError(f"precision {precision} needs {need.upper()} instructions, which this CPU "
                         f"({cpu['model']}; {', '.join(cpu['flags']) or 'no AVX'}) lacks ({why})")


def _probe_inputs(folder: Path, manifest: dict[str, Any], tower: str,
                  texts: list[str] | None = None) -> Any:
    if tower == "image":
        return check.probe_pixels(manifest["identity"])
    info = manifest["towers"]["text"]
    cfg = info["tokenizer"]
    rows = load_tokenizer(folder, cfg)(texts or check.texts_for_check())
    return pad(rows, max(map(len, rows)) if info.get("cut") else cfg["context_length"],
               cfg.get("pad_id", 0))


def _check_runtime(folder: Path, towers: frozenset[str], runtime: str, threads: int | None) -> None:
    """An fp32 tower on another runtime than the one it was checked on is compared, once,
    with the checked ONNX Runtime tower (no torch needed); the verdict is kept in the manifest."""
    manifest = read_manifest(folder) or {}
    key = f"check_{runtime}"
    for tower in sorted(towers):
        info = manifest["towers"][tower]
        if key not in info:
            path = folder / info["files"]["fp32"]
            x = _probe_inputs(folder, manifest, tower)
            stats = check.compare(normalised(OrtTower(path, threads).run(x)),
                                  normalised(make_tower(path, runtime, "fp32", threads).run(x)))
            info[key] = {"ok": check.passes(stats), "against": "onnxruntime", **stats}
            write_json(folder / "manifest.json", manifest)
        if not info[key]["ok"]:
            raise ModelError(f"the {tower} tower on {runtime} disagrees with ONNX Runtime: "
                             f"{check.summary(info[key])}")


def _fastest_runtime(folder: Path, towers: frozenset[str], threads: int | None) -> str:
    """onnxruntime, or openvino where it is installed, passes its check, and measured at least
    OPENVINO_MIN_SPEEDUP times faster on this CPU (measured once per model and CPU, on the
    image tower when loaded, else the text tower; kept in the manifest). The first
    measurement takes every exported tower, so that a text query after the first index run
    does not pay for measuring its tower."""
    from loupe.models.openvino import available

    tower = "image" if "image" in towers else "text"
    cpu = str(cpu_info()["model"])
    manifest = read_manifest(folder) or {}
    measured = manifest.get("speed", {}).get(cpu, {}).get(tower)
    if measured and measured["openvino"] < OPENVINO_MIN_SPEEDUP * measured["onnxruntime"]:
        return "onnxruntime"  # decided before: no need to import OpenVINO (a quarter second)
    if not available():
        return "onnxruntime"
    if tower not in manifest.get("speed", {}).get(cpu, {}):
        others = [t for t in ("image", "text")
                  if t != tower and tower_status(manifest, t) == "ok"]
        for t in (tower, *others):
            if t in (read_manifest(folder) or {}).get("speed", {}).get(cpu, {}):
                continue
            try:
                _measure_openvino(folder, t, threads, cpu)
            except ModelError as exc:
                if t == tower:
                    log.warning("not using OpenVINO: %s", exc)
                    return "onnxruntime"
        manifest = read_manifest(folder) or {}
    if not manifest["towers"][tower].get("check_openvino", {}).get("ok"):
        return "onnxruntime"
    r = manifest["speed"][cpu][tower]
    return "openvino" if r["openvino"] >= OPENVINO_MIN_SPEEDUP * r["onnxruntime"] else "onnxruntime"


def _measure_openvino(folder: Path, tower: str, threads: int | None, cpu: str) -> None:
    """Check one tower on OpenVINO against ONNX Runtime, then time both in turns (kept)."""
    _check_runtime(folder, frozenset([tower]), "openvino", threads)
    manifest = read_manifest(folder) or {}
    path = folder / manifest["towers"][tower]["files"]["fp32"]
    # images: the probe batch; texts: one short query (latency is what matters there)
    x = _probe_inputs(folder, manifest, tower, ["a photo of a cat"] if tower == "text" else None)
    ort_t, ov_t = OrtTower(path, threads), make_tower(path, "openvino", "fp32", threads)
    rates = check.interleaved_rates({"onnxruntime": lambda: ort_t.run(x),
                                     "openvino": lambda: ov_t.run(x)}, len(x))
    manifest = read_manifest(folder) or {}   # re-read: another tower may have been written
    manifest.setdefault("speed", {}).setdefault(cpu, {})[tower] = {
        k: round(v, 2) for k, v in rates.items()}
    write_json(folder / "manifest.json", manifest)
