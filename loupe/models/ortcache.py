"""ONNX Runtime sessions that start fast: each tower's optimised graph, saved once.

    session = cached_session(path, options, probe=lambda: ids)   # like ort.InferenceSession

Building a session from an exported tower is mostly spent parsing its protobuf, optimising the
graph and pre-packing the weights of every MatMul: about 0.8 s for ViT-B-32's 255 MB text
tower, most of a cold `loupe search`. ONNX Runtime can save what it built: the optimised graph,
with its weights (pre-packed ones included) in an external data file that later sessions map
from disk instead of copying, loaded with the optimisations switched off (about 0.15 s here).

The saved graph may hold CPU-specific layouts and kernels (ORT warns so), so it is kept under a
key of the ORT version, the CPU (model and instruction sets), the source file (path, size,
mtime) and the optimisation level. Before it is first used its outputs are compared with the
session that saved it on `probe()`: they must be equal, bit for bit; a graph that differs is
refused (a `refused.json` marker keeps later processes from trying again) and the plain
session is used. Layout, beside the tower's file:

    <folder>/ort-optimized/<stem>-<key>/model.onnx, model.onnx.data, ok.json

A folder that cannot be written (a read-only cache) only costs the plain session.
`$LOUPE_ORT_CACHE=0` switches the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.config import default

log = logging.getLogger("loupe.models")
SUBDIR = "ort-optimized"
# Bump when what is saved, or how it is checked, changes meaning.
CACHE_FORMAT = 1
DATA_SUFFIX = ".data"
_DTYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}


def enabled() -> bool:
    return bool(default("ort_cache"))


def cache_key(path: Path, level: int) -> str:
    """What the saved graph depends on: ORT's version, the CPU, the source file, the level."""
    import onnxruntime as ort

    from loupe.models.device import cpu_info

    st = path.stat()
    cpu = cpu_info()
    blob = json.dumps({"format": CACHE_FORMAT, "ort": ort.__version__, "cpu": cpu["model"],
                       "flags": cpu["flags"], "file": str(path.resolve()), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns, "level": int(level)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(path: Path, level: int) -> Path:
    return path.parent / SUBDIR / f"{path.stem}-{cache_key(path, level)}"


def cached_session(path: str | Path, options: Any, probe: Callable[[], np.ndarray],
                   providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An `ort.InferenceSession` over `path` with `options`, from the saved optimised graph
    when one was saved and checked before; otherwise a plain session, which saves and checks
    its graph for next time. `probe()` gives an input (one array) the check runs."""
    import onnxruntime as ort

    path = Path(path)
    plain = lambda: ort.InferenceSession(str(path), options, providers=list(providers))  # noqa: E731
    if not enabled() or options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
        return plain()
    try:
        folder = cache_dir(path, options.graph_optimization_level)
    except OSError:
        return plain()
    if (folder / "ok.json").exists():
        try:
            return ort.InferenceSession(str(folder / "model.onnx"), _saved_options(options),
                                        providers=list(providers))
        except Exception as exc:  # a damaged cache is not an error: rebuild it
            log.warning("ignoring the saved ONNX Runtime graph in %s: %s", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    elif (folder / "refused.json").exists():
        return plain()
    return _build(path, options, probe, folder, providers)


def _saved_options(options: Any) -> Any:
    """The caller's options (threads, spinning, logging), with the graph already optimised."""
    import onnxruntime as ort

    opts = _copy_options(options)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return opts


def _build(path: Path, options: Any, probe: Callable[[], np.ndarray], folder: Path,
           providers: tuple[str, ...]) -> Any:
    """Open `path` as usual while ORT writes its optimised graph to a temporary folder; check
    the saved graph against this session on the probe; move it into place."""
    import onnxruntime as ort

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    try:
        opts = _copy_options(options)
        opts.optimized_model_filepath = str(tmp / "model.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      "model.onnx" + DATA_SUFFIX)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        session = ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        verdict = _check(session, tmp, options, probe, providers)
        (tmp / ("ok.json" if verdict["ok"] else "refused.json")).write_text(json.dumps(verdict))
        if not verdict["ok"]:
            log.warning("not saving ONNX Runtime's optimised graph of %s: %s", path, verdict["why"])
            for f in tmp.glob("model.onnx*"):
                f.unlink()
        for old in folder.parent.glob(f"{path.stem}-*"):
            if old != folder and old.is_dir():  # an older key of this tower: stale
                shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first: its copy is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, ValueError) as exc:
        log.warning("could not save ONNX Runtime's optimised graph of %s: %s", path, exc)
        shutil.rmtree(tmp, ignore_errors=True)
    return session


def _check(session: Any, tmp: Path, options: Any, probe: Callable[[], np.ndarray],
           providers: tuple[str, ...]) -> dict[str, Any]:
    import onnxruntime as ort

    try:
        saved = ort.InferenceSession(str(tmp / "model.onnx"), _saved_options(options),
                                     providers=list(providers))
    except Exception as exc:  # the saved graph does not load: refuse it
        return {"ok": False, "why": f"it does not load: {exc}"}
    inp = session.get_inputs()[0]
    x = np.asarray(probe())
    if inp.type in _DTYPES:  # e.g. an Immich text tower takes int32 ids
        x = x.astype(_DTYPES[inp.type], copy=False)
    if inp.shape and inp.shape[0] == 1:  # a graph exported for one row at a time
        x = x[:1]
    try:
        want = session.run(None, {inp.name: x})[0]
        got = saved.run(None, {inp.name: x})[0]
    except Exception as exc:  # a probe this graph cannot take: nothing is saved, nothing breaks
        return {"ok": False, "why": f"the probe does not run: {exc}"}
    finally:
        del saved
    same = want.shape == got.shape and bool(np.array_equal(want, got))
    diff = float(np.abs(want - got).max()) if want.shape == got.shape else float("inf")
    return {"ok": same, "why": "" if same else f"its outputs differ (max {diff:.3g})",
            "max_abs_diff": diff, "probe_shape": list(x.shape), "ort": ort.__version__}


# Session settings that change how a session runs, not what it computes: carried over.
_RUN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _copy_options(options: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = options.intra_op_num_threads
    opts.inter_op_num_threads = options.inter_op_num_threads
    opts.log_severity_level = options.log_severity_level
    opts.graph_optimization_level = options.graph_optimization_level
    for key in _RUN_KEYS:
        try:
            opts.add_session_config_entry(key, options.get_session_config_entry(key))
        except RuntimeError:  # not set by the caller
            pass
    return opts
