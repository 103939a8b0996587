"""Which device a model runs on: auto picks CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loupe.core.errors import ModelError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def check_device_name(device: str) -> str:
    """Validate a --device value without importing torch (cheap checks come first)."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device_name(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but PyTorch sees no CUDA device")
    return torch.device(device)


def auto_is_cpu() -> bool:
    """Whether device="auto" can only mean the CPU, decided without importing torch: no NVIDIA
    device node and not Apple silicon. (When this says False, torch is asked.)"""
    import os
    import platform
    import sys

    if os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia"):
        return False
    return not (sys.platform == "darwin" and platform.machine() == "arm64")


def cpu_info() -> dict[str, object]:
    """The CPU's model name and the instruction sets reduced precision depends on.

    Read from /proc/cpuinfo where there is one (Linux), else from numpy's runtime dispatch
    table; never assumed from the model name."""
    import platform

    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
                    break
    except OSError:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as feats
        except ImportError:  # numpy < 2
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        rename = {"AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512F": "avx512f",
                  "AVX2": "avx2", "ASIMDDP": "asimddp", "ASIMDBF16": "bf16"}
        flags = {rename[k] for k, on in feats.items() if on and k in rename}
    # platform.processor() runs `uname -p` (a subprocess, 10 ms of a cold query): only when
    # /proc/cpuinfo names no model (elsewhere than Linux, or ARM)
    name = name or platform.processor() or platform.machine()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    return {"model": name, "vnni": vnni, "bf16": bf16,
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "asimd")) or f == "bf16")}
