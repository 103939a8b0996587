"""Exported towers on ONNX Runtime (or OpenVINO): the CPU backend, with no torch in the process.

    enc = load_exported(folder)                            # both towers, ONNX Runtime
    enc = load_exported(folder, towers=("text",))          # queries: the image tower stays on disk
    enc = load_exported(folder, backend="openvino")        # OpenVINO, where it is installed

A folder is what `loupe.models.export.export_model` writes (see `cache.py` for the layout):
`manifest.json` names the identity, the towers' files and input names, the tokenizer, and
what the check against the PyTorch reference measured. Loading refuses a tower whose check
did not pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.errors import ModelError
from loupe.models.base import BaseEncoder, check_towers
from loupe.models.cache import read_manifest
from loupe.models.text import ClipTokenizer, pad

BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")


class OrtTower:
    """One tower in an ONNX Runtime session: a [n, ...] array in, [n, d] features out."""

    engine = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None,
                 probe: Callable[[], np.ndarray] | None = None, spin: bool = True):
        """probe: an input for checking ONNX Runtime's saved optimised graph against this
        session (see ortcache.py); without one the session is built from `path` every time.
        spin=False: see below."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if not spin:
            # Idle workers sleep instead of spinning: the image tower shares the cores with
            # the indexer's decode threads, and spinning takes the CPU they need.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            if probe is not None:
                from loupe.models.ortcache import cached_session

                self.session = cached_session(path, opts, probe)
            else:
                self.session = ort.InferenceSession(str(path), opts,
                                                    providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_type = np.int32 if inp.type == "tensor(int32)" else None
        # Exports with a fixed batch of 1 (as Immich publishes them) are run row by row.
        self.batch_one = isinstance(inp.shape[0], int) and inp.shape[0] == 1

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.input_type is not None:
            x = x.astype(self.input_type, copy=False)
        if self.batch_one and len(x) > 1:
            return np.concatenate([self.session.run(None, {self.input_name: x[i:i + 1]})[0]
                                   for i in range(len(x))])
        return self.session.run(None, {self.input_name: x})[0]


def make_tower(path: Path, backend: str = "onnxruntime", precision: str = "fp32",
               threads: int | None = None, probe: Callable[[], np.ndarray] | None = None,
               spin: bool = True) -> Any:
    if backend == "onnxruntime":
        return OrtTower(path, threads, probe, spin)
    if backend == "openvino":
        from loupe.models.openvino import OpenVinoTower

        return OpenVinoTower(path, precision="bf16" if precision == "bf16" else "fp32",
                             threads=threads)
    raise ModelError(f"unknown backend {backend!r}: use one of {BACKENDS}")


class ExportedEncoder(BaseEncoder):
    """An encoder over exported towers; never imports torch or open_clip."""

    def __init__(self, identity: dict[str, Any], image_tower: Any | None, text_tower: Any | None,
                 tokenizer: Any | None, text_cfg: dict[str, Any], backend: str,
                 precision: str = "fp32", text_cache: int = 256):
        towers = [t for t, eng in (("image", image_tower), ("text", text_tower)) if eng is not None]
        super().__init__(identity, towers, text_cache)
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.tokenizer = tokenizer
        self.text_cfg = text_cfg
        self.backend = backend
        self.precision = precision

    def _image_features(self, batch: np.ndarray) -> np.ndarray:
        return self.image_tower.run(np.ascontiguousarray(batch, dtype=np.float32))

    def tokens(self, texts: list[str]) -> np.ndarray:
        """Ids as the text tower takes them: cut after the longest end-of-text token when the
        export has a dynamic sequence axis (exact for causal towers), else padded."""
        rows = self.tokenizer(texts)
        cfg = self.text_cfg
        length = cfg["context_length"]
        if cfg.get("cut"):
            length = max(len(r) for r in rows)
        return pad(rows, length, cfg.get("pad_id", 0))

    def _text_features(self, texts: list[str]) -> np.ndarray:
        return self.text_tower.run(self.tokens(texts))


def _tower_file(folder: Path, info: dict[str, Any], precision: str) -> Path:
    name = info["files"].get(precision if precision == "int8" else "fp32")
    if not name:
        raise ModelError(f"{folder} has no {precision} file for this tower")
    return folder / name


def tower_status(manifest: dict[str, Any] | None, tower: str) -> str:
    """'ok', 'failed' (checked and refused), or 'missing' (not exported, or not checked)."""
    info = (manifest or {}).get("towers", {}).get(tower)
    if not info:
        return "missing"
    check = info.get("check")
    if not check:
        return "missing"
    return "ok" if check.get("ok") else "failed"


def load_exported(folder: str | Path, towers: Iterable[str] | None = None,
                  backend: str = "onnxruntime", precision: str = "fp32",
                  threads: int | None = None, text_cache: int = 256) -> ExportedEncoder:
    """Open an export folder's towers (only those asked for) on ONNX Runtime or OpenVINO."""
    folder = Path(folder)
    towers = check_towers(towers)
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    if precision == "bf16" and backend != "openvino":
        raise ModelError("precision bf16 runs on OpenVINO: use backend openvino")
    manifest = read_manifest(folder)
    if manifest is None:
        raise ModelError(f"{folder} holds no exported model (no manifest.json of this version)")
    for tower in sorted(towers):
        status = tower_status(manifest, tower)
        if status != "ok":
            check = manifest.get("towers", {}).get(tower, {}).get("check")
            raise ModelError(f"the exported {tower} tower in {folder} is {status}"
                             + (f": {check.get('why')}" if check and check.get("why") else ""))
    tokenizer, text_cfg = None, {}
    if "text" in towers:
        info = manifest["towers"]["text"]
        text_cfg = {**info["tokenizer"], "cut": bool(info.get("cut"))}
        tokenizer = load_tokenizer(folder, text_cfg)
    engines: dict[str, Any] = {}
    for tower in towers:
        info = manifest["towers"][tower]
        # Each session starts from ONNX Runtime's saved graph (a cold query's largest cost,
        # and a second of a cold `loupe index`), checked on probe texts / probe pixels.
        probe = ((lambda: text_probe(tokenizer, text_cfg)) if tower == "text"
                 else (lambda: image_probe(manifest["identity"])))
        engines[tower] = make_tower(_tower_file(folder, info, precision), backend, precision,
                                    threads, probe, spin=tower != "image")
    enc = ExportedEncoder(manifest["identity"], engines.get("image"), engines.get("text"),
                          tokenizer, text_cfg, backend, precision, text_cache)
    enc.report = {"folder": str(folder),
                  "check": {t: manifest["towers"][t]["check"] for t in towers},
                  **({"reduced": manifest.get("reduced", {}).get(precision, {})}
                     if precision != "fp32" else {})}
    return enc


def text_probe(tokenizer: Any, cfg: dict[str, Any]) -> np.ndarray:
    """The texts every export is checked on, as the text tower takes them."""
    from loupe.models.check import texts_for_check

    rows = tokenizer(texts_for_check())
    length = max(map(len, rows)) if cfg.get("cut") else cfg["context_length"]
    return pad(rows, length, cfg.get("pad_id", 0))


def image_probe(identity: dict[str, Any]) -> np.ndarray:
    """Pixels the image tower's saved graph is checked on: two seeded noise images at the
    tower's input size (the check asks for equal outputs, bit for bit)."""
    size = int(identity["image_size"])
    return np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)


def load_tokenizer(folder: Path, cfg: dict[str, Any]) -> Any:
    kind = cfg.get("kind")
    if kind == "clip-bpe":
        return ClipTokenizer(folder / cfg["vocab"], cfg["context_length"],
                             cache=folder / (cfg["vocab"] + ".merges"))
    if kind == "hf-tokenizers":
        from loupe.models.immich import HfTokenizer

        return HfTokenizer(folder / cfg["file"], cfg["context_length"])
    raise ModelError(f"unknown tokenizer kind {kind!r} in {folder}")


def default_threads() -> int | None:
    """$LOUPE_THREADS when set (both runtimes otherwise use every physical core)."""
    value = os.environ.get("LOUPE_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None

