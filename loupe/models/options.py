"""Which backend and precision a model runs with: the user's words checked, without torch.

    backend, precision = check_runtime("onnx", "fp32", "cpu")   # -> ("onnxruntime", "fp32")
    check_runtime("torch", "int8", "cpu")                       # ModelError, before anything loads
    resolve_precision("auto", on_gpu=True)                      # -> "fp16"

Both are settings (`backend`, `precision` in loupe.core.config, `LOUPE_BACKEND` /
`LOUPE_PRECISION` in the environment) and CLI flags (`--backend`, `--precision`) of every
command that loads a model. What actually ran (a backend can fall back to torch when an export
fails its check) is `runtime_info(encoder)`, shown by `loupe index` and `loupe stats`.
"""

from __future__ import annotations

from typing import Any

from loupe.core.errors import ModelError

BACKEND_CHOICES = ("auto", "torch", "onnx", "onnxruntime", "openvino")
# auto: fp16 on a GPU, fp32 on a CPU. fp16 is the GPU's (torch on CUDA); int8 and bf16 are the
# CPU's reduced precisions (exported towers; opt-in, they report their agreement with fp32).
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8", "bf16")
_ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "ov": "openvino"}


def check_backend(backend: str) -> str:
    """The canonical backend name (onnx -> onnxruntime), or a ModelError naming the choices."""
    value = _ALIASES.get(backend.strip().lower(), backend.strip().lower())
    if value not in BACKEND_CHOICES:
        raise ModelError(f"unknown backend {backend!r}: use auto, torch, onnx or openvino")
    return value


def check_precision(precision: str) -> str:
    value = precision.strip().lower()
    if value not in PRECISION_CHOICES:
        raise ModelError(f"unknown precision {precision!r}: use auto, fp32, fp16, int8 or bf16")
    return value


def check_runtime(backend: str, precision: str, device: str = "auto") -> tuple[str, str]:
    """Validate a backend/precision/device combination before any model loads (no torch
    import): the combinations that can never work are refused
    here with one line; what depends on the hardware (VNNI for int8, a GPU for fp16 under
    device auto) is refused by the loader, still before the weights are read."""
    from loupe.models.device import auto_is_cpu

    backend, precision = check_backend(backend), check_precision(precision)
    # auto on a machine with no GPU at all (no NVIDIA device node, not Apple silicon) is the CPU
    on_cpu = device == "cpu" or (device == "auto" and auto_is_cpu())
    gpu = device.startswith(("cuda", "mps"))
    if precision == "fp16":
        if on_cpu:
            raise ModelError("precision fp16 runs on a GPU (--device cuda): on a CPU use fp32, "
                             "or int8 / bf16 where the CPU has the instructions for them")
        if backend not in ("auto", "torch"):
            raise ModelError(f"precision fp16 runs on torch (a GPU), not on backend {backend}")
    if precision in ("int8", "bf16"):
        if backend == "torch":
            raise ModelError(f"precision {precision} is for the exported backends (onnx, "
                             "openvino), not torch")
        if gpu:
            raise ModelError(f"precision {precision} runs on the CPU: use --device cpu")
        if precision == "bf16" and backend == "onnxruntime":
            raise ModelError("precision bf16 runs on OpenVINO: use --backend openvino or auto")
    if backend in ("onnxruntime", "openvino") and gpu:
        raise ModelError(f"backend {backend} runs on the CPU here: use --device cpu, or "
                         f"--backend torch for {device}")
    return backend, precision


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """`auto` made concrete: fp16 on a GPU (half the memory and about twice the speed, the
    vectors agree to ~1e-3), fp32 on a CPU."""
    if precision == "auto":
        return "fp16" if on_gpu else "fp32"
    return precision


def runtime_info(encoder: Any) -> dict[str, Any]:
    """What an encoder actually runs on: backend, precision, device, towers, and why it fell
    back to torch when it did (an export that failed its check, a tokenizer without a twin)."""
    report = getattr(encoder, "report", {}) or {}
    info: dict[str, Any] = {
        "backend": getattr(encoder, "backend", "?"),
        "precision": getattr(encoder, "precision", "fp32"),
        "device": str(getattr(encoder, "device", "cpu")),
        "towers": sorted(getattr(encoder, "towers", ())),
    }
    if report.get("fallback"):
        info["fallback"] = report["fallback"]
    reduced = report.get("reduced")
    if reduced:
        # per tower: agreement with fp32 and speed-up, as measured when it was made
        info["reduced"] = {t: {k: r[k] for k in ("mean_cos", "worst_cos", "speedup") if k in r}
                           for t, r in reduced.items() if isinstance(r, dict)}
    return info


def describe(info: dict[str, Any] | None) -> str:
    """One line for people: 'onnxruntime fp32 on cpu' (+ the fallback reason)."""
    if not info:
        return "no model loaded"
    line = f"{info.get('backend')} {info.get('precision')} on {info.get('device')}"
    if info.get("fallback"):
        line += f" (fell back to torch: {info['fallback']})"
    return line
