"""Exported towers: checked against torch before use, separable, queries without torch,
reduced precision only on request and with its agreement reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, TINY
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models import load_encoder
from loupe.models.cache import export_dir, read_manifest
from loupe.models.onnx import BACKENDS, ExportedEncoder, OrtTower, load_exported
from loupe.models.openclip import load_encoder as load_torch

TEXTS = ["a photo of a cat", "red car", "", "the facade of an old church with a fountain",
         "mountains " * 80, "東京タワーの写真"]


def photos(n: int) -> list[Image.Image]:
    files = sorted((SHARED_DATA / "strecha" / "scenes").glob("*/*.jpg"))[::7][:n]
    assert len(files) == n, "needs the shared photos"
    return [Image.open(f).convert("RGB") for f in files]


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    """These tests are about backend="auto": a suite-wide LOUPE_BACKEND must not decide it."""
    monkeypatch.delenv("LOUPE_BACKEND", raising=False)


@pytest.fixture(scope="module")
def ref():
    return load_torch(TINY, device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ref):
    """loupe-tiny exported once (both towers) into a private cache, checked on real photos."""
    cache = tmp_path_factory.mktemp("model-cache")
    enc = load_encoder(TINY, device="cpu", backend="onnxruntime", cache_dir=cache,
                       check_images=photos(4))
    return cache, export_dir("loupe-tiny", "random:seed0", cache), enc


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_exported_towers_equal_torch_on_real_photos_and_texts(exported, ref):
    _, folder, enc = exported
    assert isinstance(enc, ExportedEncoder) and enc.backend == "onnxruntime"
    assert enc.identity == ref.identity and enc.same_model(ref.identity)
    ims = photos(12)
    assert cosines(enc.encode_images(ims), ref.encode_images(ims)).min() >= 0.9999
    assert cosines(enc.encode_text(TEXTS), ref.encode_text_padded(TEXTS)).min() >= 0.9999
    manifest = read_manifest(folder)
    for tower in ("image", "text"):
        check = manifest["towers"][tower]["check"]
        assert check["ok"] and check["against"] == "torch" and check["worst_cos"] >= 0.9999
    assert manifest["towers"]["image"]["check"]["n"] == 24 + 4  # probes + the photos given
    assert manifest["identity"] == ref.identity


def test_text_tower_runs_only_as_long_as_the_text(exported, ref):
    import onnx

    _, folder, enc = exported
    assert enc.tokens(["red car"]).shape == (1, 4)
    assert enc.tokens(TEXTS).shape == (len(TEXTS), 32)
    graph = onnx.load(str(folder / "textual.onnx")).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # dynamic batch and sequence axes
    tower = OrtTower(folder / "textual.onnx")
    ids = enc.tokens(["red car", "a photo of a cat"])
    padded = np.zeros((2, 32), np.int64)
    padded[:, :ids.shape[1]] = ids
    assert np.abs(tower.run(ids) - tower.run(padded)).max() < 1e-5
    one = enc.encode_text(["red car"])[0]
    assert np.abs(one - ref.encode_text_padded(["red car"])[0]).max() < 1e-5


def test_towers_load_separately(exported, tmp_path):
    cache, folder, _ = exported
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    moved = copy / folder.name
    (moved / "visual.onnx").unlink()  # a query encoder never opens the image tower
    text_only = load_encoder(TINY, device="cpu", backend="onnxruntime", cache_dir=copy,
                             towers=("text",))
    assert text_only.towers == {"text"} and text_only.image_tower is None
    assert text_only.encode_text(["red car"]).shape == (1, 32)
    with pytest.raises(ModelError, match="without its image tower"):
        text_only.encode_images([Image.new("RGB", (80, 60))])
    with pytest.raises(ModelError, match="cannot load"):
        load_encoder(TINY, device="cpu", backend="onnxruntime", cache_dir=copy, towers=("image",))

    shutil.copy(folder / "visual.onnx", moved / "visual.onnx")
    (moved / "textual.onnx").unlink()
    image_only = load_exported(moved, towers=("image",))
    assert image_only.text_tower is None and image_only.tokenizer is None
    assert image_only.encode_images([Image.new("RGB", (80, 60))]).shape == (1, 32)
    with pytest.raises(ModelError, match="without its text tower"):
        image_only.encode_text(["red car"])


def test_the_image_tower_sleeps_when_idle_and_the_text_tower_spins(exported):
    """The image tower shares the cores with the indexer's decode threads: its idle ONNX
    Runtime workers sleep instead of spinning. A query's text tower keeps spinning (latency)."""
    _, folder, _ = exported
    enc = load_exported(folder)

    def spinning(tower):
        opts = tower.session.get_session_options()
        try:
            return opts.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # not set: ONNX Runtime's default, which spins
            return True

    assert not spinning(enc.image_tower)
    assert spinning(enc.text_tower)
    assert not spinning(OrtTower(folder / "visual.onnx", spin=False))
    assert spinning(OrtTower(folder / "visual.onnx"))
    # and a sleeping tower computes the same vectors
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    assert np.array_equal(enc.image_tower.run(x), OrtTower(folder / "visual.onnx").run(x))


def test_the_image_tower_from_the_saved_graph_equals_the_plain_one(exported, monkeypatch):
    """A cold `loupe index` opens the image tower from ONNX Runtime's saved graph (checked on
    probe pixels when it was saved): the same vectors, still sleeping when idle."""
    from loupe.models import ortcache

    _, folder, _ = exported
    load_exported(folder, towers=("image",))  # saves the graph (once)
    cached = load_exported(folder, towers=("image",))
    model = Path(cached.image_tower.session._model_path)
    assert model.parent.parent.name == ortcache.SUBDIR and model.parent.name.startswith("visual-")
    assert (model.parent / "ok.json").exists()
    opts = cached.image_tower.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("LOUPE_ORT_CACHE", "0")
    plain = load_exported(folder, towers=("image",))
    assert Path(plain.image_tower.session._model_path) == folder / "visual.onnx"
    pics = photos(3)
    assert np.array_equal(cached.encode_images(pics), plain.encode_images(pics))


def test_torch_towers_load_separately():
    enc = load_torch(TINY, device="cpu", towers=("text",))
    assert enc.model.visual is None
    with pytest.raises(ModelError, match="image tower"):
        enc.encode_pixels(np.zeros((1, 3, 64, 64), np.float32))
    enc = load_torch(TINY, device="cpu", towers=("image",))
    assert enc.model.transformer is None and enc.model.token_embedding is None
    assert enc.encode_images([Image.new("RGB", (80, 60))]).shape == (1, 32)


def test_queries_without_torch(exported, ref):
    cache, _, _ = exported
    code = f"""
import json, sys
from loupe.models import load_encoder
out = {{}}
for backend in ("onnxruntime", "auto"):
    enc = load_encoder("{TINY}", device="cpu", backend=backend, towers=("text",),
                       cache_dir={str(cache)!r})
    out[backend] = {{"backend": enc.backend, "v": enc.encode_text(["red car"])[0].tolist()}}
out["torch"] = "torch" in sys.modules
out["open_clip"] = "open_clip" in sys.modules
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOUPE_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["open_clip"] is False
    want = ref.encode_text_padded(["red car"])[0]
    for backend in ("onnxruntime", "auto"):
        assert out[backend]["backend"] in BACKENDS
        assert np.abs(np.array(out[backend]["v"]) - want).max() < 1e-5


def test_a_runtime_decided_before_imports_no_openvino(exported, tmp_path):
    """Once this CPU measured ONNX Runtime faster, a text query does not import OpenVINO."""
    from loupe.models.cache import write_json
    from loupe.models.device import cpu_info

    cache, folder, _ = exported
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    manifest = read_manifest(copy / folder.name)
    manifest.setdefault("speed", {})[str(cpu_info()["model"])] = {
        t: {"onnxruntime": 10.0, "openvino": 5.0} for t in ("image", "text")}
    write_json(copy / folder.name / "manifest.json", manifest)
    code = (f"import sys; from loupe.models import load_encoder; "
            f"enc = load_encoder({TINY!r}, device='cpu', towers=('text',), cache_dir={str(copy)!r}); "
            "print(enc.backend, 'openvino' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOUPE_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["onnxruntime", "False"]


def test_cache_found_through_the_environment(exported, monkeypatch):
    cache, _, _ = exported
    import loupe.models.export as export

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "export_model", no_export)
    monkeypatch.setenv("LOUPE_MODEL_CACHE", str(cache))
    enc = load_encoder(TINY, device="cpu", backend="onnxruntime")
    assert isinstance(enc, ExportedEncoder) and enc.report["folder"].startswith(str(cache))


def test_a_failed_check_is_refused_and_auto_falls_back_to_torch(tmp_path, ref):
    from loupe.models.export import export_model

    folder = export_dir("loupe-tiny", "random:seed0", tmp_path)
    manifest = export_model(ref, folder, towers=("text",), threshold=1.5)  # no export can pass
    check = manifest["towers"]["text"]["check"]
    assert check["ok"] is False and "disagrees with PyTorch" in check["why"]
    with pytest.raises(ModelError, match="refusing the exported text tower"):
        load_encoder(TINY, device="cpu", backend="onnxruntime", towers=("text",), cache_dir=tmp_path)
    with pytest.raises(ModelError, match="is failed"):
        load_exported(folder, towers=("text",))
    enc = load_encoder(TINY, device="cpu", towers=("text",), cache_dir=tmp_path)
    assert enc.backend == "torch" and "disagrees" in enc.report["fallback"]
    assert np.abs(enc.encode_text(["red car"]) - ref.encode_text(["red car"])).max() < 1e-6


def test_an_image_pipeline_without_a_torch_free_twin_is_refused(exported, tmp_path):
    from loupe.models.cache import write_json

    cache, folder, _ = exported
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    manifest = read_manifest(copy / folder.name)
    manifest["identity"]["preprocess"]["resize_mode"] = "longest"
    write_json(copy / folder.name / "manifest.json", manifest)
    with pytest.raises(ModelError, match="pixel pipeline"):
        load_encoder(TINY, device="cpu", backend="onnxruntime", cache_dir=copy)
    text = load_encoder(TINY, device="cpu", backend="onnxruntime", cache_dir=copy, towers=("text",))
    assert text.backend == "onnxruntime"  # the text tower does not care
    assert load_encoder(TINY, device="cpu", cache_dir=copy).backend == "torch"


def test_the_check_catches_a_wrong_graph(tmp_path, ref):
    """A graph computing something else (a colour average times a random matrix) fails."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from loupe.models.export import check_image_tower

    w = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["features"])],
        "wrong", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"), numpy_helper.from_array(w, "w")])
    path = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    check = check_image_tower(ref, OrtTower(path))
    assert check["ok"] is False and check["worst_cos"] < 0.9999 and "image tower" in check["why"]


def test_reduced_precision_is_opt_in_and_reports_agreement(exported, monkeypatch):
    import loupe.models.loader as loader
    from loupe.models.export import make_reduced

    cache, folder, enc = exported
    assert enc.precision == "fp32"
    monkeypatch.setattr(loader, "cpu_info", lambda: {"model": "test CPU", "vnni": False,
                                                     "bf16": False, "flags": ["avx2"]})
    with pytest.raises(ModelError, match="needs VNNI"):
        load_encoder(TINY, device="cpu", precision="int8", cache_dir=cache)
    with pytest.raises(ModelError, match="needs BF16"):
        load_encoder(TINY, device="cpu", precision="bf16", cache_dir=cache)

    report = make_reduced(folder, "int8")  # measurable on any CPU; fast only with VNNI
    assert (folder / "visual.int8.onnx").exists() and (folder / "textual.int8.onnx").exists()
    for tower in ("image", "text"):
        r = report[tower]
        assert 0.5 < r["worst_cos"] <= r["mean_cos"] <= 1.0 + 1e-9
        assert 0.0 <= r["top10_overlap"] <= 1.0 and r["speedup"] > 0
        assert set(r["speed_items_s"]) == {"fp32", "int8"}
    assert read_manifest(folder)["reduced"]["int8"] == report

    monkeypatch.setattr(loader, "cpu_info", lambda: {"model": "test CPU", "vnni": True,
                                                     "bf16": False, "flags": ["avx512_vnni"]})
    q = load_encoder(TINY, device="cpu", precision="int8", backend="onnxruntime", cache_dir=cache)
    assert q.precision == "int8" and q.report["reduced"] == report
    fp32 = enc.encode_images(photos(3))
    assert 0.5 < cosines(q.encode_images(photos(3)), fp32).min() < 1.0 + 1e-6


def test_openvino_backend_equals_onnxruntime(exported):
    pytest.importorskip("openvino")
    cache, folder, enc = exported
    ov = load_encoder(TINY, device="cpu", backend="openvino", cache_dir=cache)
    assert ov.backend == "openvino"
    ims = photos(6)
    assert cosines(ov.encode_images(ims), enc.encode_images(ims)).min() >= 0.9999
    assert cosines(ov.encode_text(TEXTS), enc.encode_text(TEXTS)).min() >= 0.9999
    for tower in ("image", "text"):
        assert read_manifest(folder)["towers"][tower]["check_openvino"]["ok"]


def test_auto_on_a_cpu_uses_an_export_and_measures_openvino_once(exported):
    cache, folder, _ = exported
    from loupe.models.openvino import available

    enc = load_encoder(TINY, device="cpu", cache_dir=cache)
    if not available():
        assert enc.backend == "onnxruntime"
        return
    speeds = read_manifest(folder)["speed"]
    assert len(speeds) == 1  # one CPU model, measured once
    rates = next(iter(speeds.values()))["image"]
    assert set(rates) == {"onnxruntime", "openvino"}
    # measured with the image tower, so that the first text query does not measure its own
    assert set(next(iter(speeds.values()))["text"]) == {"onnxruntime", "openvino"}
    want = "openvino" if rates["openvino"] >= 1.1 * rates["onnxruntime"] else "onnxruntime"
    assert enc.backend == want
    again = load_encoder(TINY, device="cpu", cache_dir=cache)
    assert again.backend == want and read_manifest(folder)["speed"] == speeds


def test_backend_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOUPE_BACKEND", "torch")
    enc = load_encoder(TINY, device="cpu", towers=("text",), cache_dir=tmp_path)
    assert enc.backend == "torch" and not any(tmp_path.iterdir())  # nothing exported
    monkeypatch.setenv("LOUPE_BACKEND", "tensorrt")
    with pytest.raises(ModelError, match="unknown backend"):
        load_encoder(TINY, device="cpu", cache_dir=tmp_path)


def test_bad_names_are_refused_before_any_work(tmp_path):
    with pytest.raises(ModelError, match="unknown backend"):
        load_encoder(TINY, backend="tensorrt")
    with pytest.raises(ModelError, match="unknown precision"):
        load_encoder(TINY, precision="fp8")
    with pytest.raises(ModelError, match="towers"):
        load_encoder(TINY, towers=("audio",))
    with pytest.raises(ModelError, match="weights not found"):
        load_encoder("loupe-tiny", weights=tmp_path / "nope.pt", device="cpu", cache_dir=tmp_path)


@pytest.mark.slow
def test_vit_b_32_export_equals_torch_on_real_photos(tmp_path):
    """The realistic architecture (random weights): export, check, compare on 24 photos."""
    big = load_torch("ViT-B-32:random", device="cpu")
    enc = load_encoder("ViT-B-32:random", device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    assert enc.backend == "onnxruntime"
    ims = photos(12)
    assert cosines(enc.encode_images(ims), big.encode_images(ims)).min() >= 0.9999
    assert cosines(enc.encode_text(TEXTS), big.encode_text_padded(TEXTS)).min() >= 0.9999
    assert enc.tokens(["red car"]).shape == (1, 4)
