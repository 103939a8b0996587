"""Backend and precision as settings and flags, what actually ran, the server's warm text tower,
and the CUDA path's device selection (checked without a GPU)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
from conftest import TINY, cli, make_folder

from loupe.core.config import SETTINGS, default
from loupe.core.errors import ModelError
from loupe.library import Library
from loupe.models import load_encoder
from loupe.models.options import (
    check_runtime,
    describe,
    resolve_precision,
    runtime_info,
)


# --- validation, without loading anything -------------------------------------------------------
def test_names_and_aliases():
    assert check_runtime("onnx", "fp32", "cpu") == ("onnxruntime", "fp32")
    assert check_runtime("OpenVINO", "auto", "cpu") == ("openvino", "auto")
    assert check_runtime("torch", "fp16", "cuda:1") == ("torch", "fp16")
    assert check_runtime("auto", "int8", "cpu") == ("auto", "int8")


@pytest.mark.parametrize(("backend", "precision", "device", "says"), [
    ("tensorrt", "fp32", "cpu", "unknown backend 'tensorrt'"),
    ("auto", "fp8", "cpu", "unknown precision 'fp8'"),
    ("torch", "int8", "cpu", "not torch"),
    ("auto", "fp16", "cpu", "fp16 runs on a GPU"),
    ("onnx", "fp16", "cuda", "fp16 runs on torch"),
    ("onnx", "fp32", "cuda", "runs on the CPU"),
    ("auto", "int8", "cuda", "runs on the CPU"),
    ("onnx", "bf16", "cpu", "OpenVINO"),
])
def test_impossible_combinations_are_refused(backend, precision, device, says):
    with pytest.raises(ModelError, match=says):
        check_runtime(backend, precision, device)


def test_settings_table_and_environment(monkeypatch):
    assert SETTINGS["backend"].default == "auto" and SETTINGS["precision"].default == "auto"
    monkeypatch.setenv("LOUPE_BACKEND", "onnx")
    monkeypatch.setenv("LOUPE_PRECISION", "int8")
    assert (default("backend"), default("precision")) == ("onnx", "int8")
    r = cli("settings", "--json")
    rows = {row["name"]: row["value"] for row in json.loads(r.stdout)}
    assert rows["backend"] == "onnx" and rows["precision"] == "int8"


def test_a_bad_setting_is_refused_before_anything_is_made(tmp_path, monkeypatch):
    make_folder(tmp_path / "photos", 2)
    monkeypatch.setenv("LOUPE_PRECISION", "fp9")
    with pytest.raises(ModelError, match="fp9"):
        Library.open(tmp_path / "photos" / ".loupe", model=TINY, device="cpu")
    assert not (tmp_path / "photos" / ".loupe").exists()


def test_cli_flags_are_checked_before_any_model_loads(tmp_path, monkeypatch):
    import loupe.library

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loupe.library, "load_encoder", no_model)
    root = tmp_path / "photos"
    make_folder(root, 2)
    r = cli("index", str(root), "--model", TINY, "--backend", "tensorflow")
    assert r.exit_code == 2 and "unknown backend 'tensorflow'" in r.stderr
    assert not (root / ".loupe").exists()
    r = cli("index", str(root), "--model", TINY, "--backend", "torch", "--precision", "int8")
    assert r.exit_code == 2 and "not torch" in r.stderr
    r = cli("search", "a dog", "--library", str(root / ".loupe"), "--device", "cpu",
            "--precision", "fp16")
    assert r.exit_code == 2 and "fp16 runs on a GPU" in r.stderr
    r = cli("serve", str(root), "--port", "0", "--backend", "nope")
    assert r.exit_code == 2 and "unknown backend 'nope'" in r.stderr
    r = cli("eval", "--precision", "fp7", "custom", "q.json")
    assert r.exit_code == 2 and "fp7" in r.stderr


# --- what actually ran ----------------------------------------------------------------------------
def test_index_and_stats_show_the_backend_that_ran(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)
    r = cli("index", str(root), "--model", TINY, "--device", "cpu", "--backend", "torch", "--json")
    assert r.exit_code == 0, r.stderr
    ran = json.loads(r.stdout)["encoder"]
    assert ran == {"backend": "torch", "precision": "fp32", "device": "cpu", "towers": ["image"]}
    r = cli("stats", "--library", str(root / ".loupe"), "--json")
    assert json.loads(r.stdout)["last_index"]["encoder"]["backend"] == "torch"
    r = cli("stats", "--library", str(root / ".loupe"))
    assert "backend torch fp32 on cpu (the last index run)" in r.stdout
    # the table form of index says it too
    make_folder(root, 1, start=10)
    r = cli("index", str(root), "--backend", "torch")
    assert "model ran on torch fp32 on cpu" in r.stderr


def test_library_passes_backend_and_precision_to_the_loader(tmp_path, monkeypatch):
    import loupe.library

    seen = {}
    real = loupe.library.load_encoder

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(loupe.library, "load_encoder", spy)
    make_folder(tmp_path / "p", 1)
    lib = Library.open(tmp_path / "p" / ".loupe", model=TINY, device="cpu", backend="torch",
                       precision="fp32")
    enc = lib.tower("text")
    assert (seen["backend"], seen["precision"]) == ("torch", "fp32")
    assert runtime_info(enc)["backend"] == "torch"
    assert lib.stats()["encoders"] == [runtime_info(enc)]
    lib.close()


def test_a_fallback_is_reported_with_its_reason():
    enc = SimpleNamespace(backend="torch", precision="fp32", device="cpu", towers={"text"},
                          report={"fallback": "the text tower failed its check (cos 0.98)"})
    info = runtime_info(enc)
    assert info["fallback"] == "the text tower failed its check (cos 0.98)"
    assert describe(info) == ("torch fp32 on cpu (fell back to torch: the text tower failed its "
                              "check (cos 0.98))")


# --- the CUDA path: device selection, checked without a GPU -----------------------------------
def test_cuda_path_selection_without_a_gpu():
    assert resolve_precision("auto", on_gpu=True) == "fp16"
    assert resolve_precision("auto", on_gpu=False) == "fp32"
    import torch

    if torch.cuda.is_available():  # on a GPU machine the same call must load in fp16
        enc = load_encoder(TINY, device="cuda", towers=("text",))
        assert (enc.backend, enc.precision, enc.device.type) == ("torch", "fp16", "cuda")
    else:
        with pytest.raises(ModelError, match="no CUDA device"):
            load_encoder(TINY, device="cuda", towers=("text",))
    with pytest.raises(ModelError, match="fp16 runs on a GPU"):
        load_encoder(TINY, device="cpu", precision="fp16", towers=("text",))


# --- the server keeps a text tower warm -------------------------------------------------------------
def test_server_loads_the_text_tower_at_start_and_keeps_it(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import loupe.library
    from loupe.server.app import create_app

    root = tmp_path / "photos"
    make_folder(root, 4)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index()
    lib.close()
    lib = Library.open(root / ".loupe", device="cpu")   # as `loupe serve` opens it: no model yet
    loads = []
    real = loupe.library.load_encoder
    monkeypatch.setattr(loupe.library, "load_encoder",
                        lambda *a, **k: loads.append(k["towers"]) or real(*a, **k))
    app = create_app(lib, "t" * 32)
    with TestClient(app) as client:                    # start-up: the warmer begins
        status = app.state.warmer.wait()
        assert status["state"] == "ready", status
        assert status["runtime"]["towers"] == ["text"]
        assert loads == [["text"]]                     # only the text tower, once
        assert client.get("/api/health").json()["text_tower"]["state"] == "ready"
        for q in ("a dog", "a cat", "a red bicycle"):
            r = client.get("/api/search", params={"q": q})
            assert r.status_code == 200 and r.json()["results"]
        assert loads == [["text"]]                     # the queries loaded nothing more
    lib.close()


def test_warmer_on_a_library_without_a_model(tmp_path):
    from loupe.server.warm import TextTowerWarmer

    (tmp_path / "photos").mkdir()
    lib = Library.open(tmp_path / "photos" / ".loupe", model=TINY, device="cpu")
    warmer = TextTowerWarmer(lib)
    warmer.start()
    assert warmer.wait()["state"] == "no model"
    lib.close()


# --- indexing prepares pixels while the model loads ------------------------------------------------
def _record_prepares_before_the_model(monkeypatch):
    """Count pixels prepared before the first model load of the index run."""
    import loupe.ingest.run as run
    import loupe.library

    seen = {"prepared": 0, "at_load": None}
    real_prepare, real_load = run.preprocess.prepare, loupe.library.load_encoder

    def prepare(image, identity):
        seen["prepared"] += 1
        return real_prepare(image, identity)

    def load(*a, **k):
        if seen["at_load"] is None:
            seen["at_load"] = seen["prepared"]
        return real_load(*a, **k)

    monkeypatch.setattr(run.preprocess, "prepare", prepare)
    monkeypatch.setattr(loupe.library, "load_encoder", load)
    return seen


def test_a_new_library_prepares_pixels_from_an_earlier_export(tmp_path, monkeypatch):
    from loupe.models.cache import EXPORT_FORMAT, export_dir, write_json
    from loupe.models.loader import peek_identity

    cache = tmp_path / "models"
    monkeypatch.setenv("LOUPE_MODEL_CACHE", str(cache))
    assert peek_identity(TINY) is None                       # never exported: nothing to peek
    ref = load_encoder(TINY, device="cpu", backend="torch", towers=("image",))
    # what an export records (the manifest's identity is the torch reference's)
    write_json(export_dir("loupe-tiny", "random:seed0") / "manifest.json",
               {"format": EXPORT_FORMAT, "identity": ref.identity, "towers": {}})
    assert peek_identity(TINY) == ref.identity

    seen = _record_prepares_before_the_model(monkeypatch)
    callers = []
    real_tower = Library.tower

    def tower(self, *towers):
        callers.append(threading.current_thread().name)
        return real_tower(self, *towers)

    monkeypatch.setattr(Library, "tower", tower)
    root = tmp_path / "photos"
    make_folder(root, 12)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu", backend="torch")
    report = lib.index()
    assert report.added == 12 and report.errors == 0
    assert seen["prepared"] == 12
    # the decode threads prepared pixels from the recorded identity, never asking for (and
    # waiting on) the model, which loaded in the background from the start
    assert callers and not any(name.startswith("loupe-decode") for name in callers)
    assert "loupe-model-load" in callers
    # and the vectors are the model's own on those pixels
    from PIL import Image

    ids, vecs = lib.all_vectors()
    rec = lib.record(int(ids[0]))
    want = ref.encode_images([Image.open(root / rec["path"]).convert("RGB")])[0]
    assert float(vecs[0] @ want) > 0.9999
    lib.close()


def test_an_existing_library_decodes_without_waiting_for_the_model(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_folder(root, 4)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu", backend="torch")
    lib.index()
    lib.close()
    make_folder(root, 10, start=50)
    seen = _record_prepares_before_the_model(monkeypatch)
    lib = Library.open(root / ".loupe", device="cpu", backend="torch")
    assert lib.index().added == 10
    assert seen["at_load"] >= 1
    lib.close()
