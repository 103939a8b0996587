"""A tower on OpenVINO's CPU plugin (optional: `pip install openvino`).

OpenVINO reads the exported ONNX file directly. Its CPU plugin computes in bf16 by default on
CPUs that have bf16 (AVX-512 BF16, AMX): fp32 is asked for explicitly, bf16 only when chosen.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from loupe.core.errors import ModelError


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoTower:
    engine = "openvino"

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelError("backend openvino needs the openvino package: "
                             "pip install 'loupe-search[openvino]'") from exc
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelError(f"OpenVINO cannot load {path}: {exc}") from exc
        port = self.compiled.inputs[0]
        self.input_type = np.int32 if port.get_element_type().get_type_name() == "i32" else None
        shape = port.get_partial_shape()
        self.batch_one = shape[0].is_static and shape[0].get_length() == 1
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls take turns

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.input_type is not None:
            x = x.astype(self.input_type, copy=False)
        rows = [x[i:i + 1] for i in range(len(x))] if self.batch_one and len(x) > 1 else [x]
        out = []
        with self._lock:
            for r in rows:
                result = self._request.infer({0: r})
                out.append(np.array(result[self.compiled.outputs[0]], dtype=np.float32))
        return np.concatenate(out) if len(out) > 1 else out[0]
