"""Models without torch: the Immich layout (visual/ and textual/ ONNX towers, tokenizer.json)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models import load_encoder
from loupe.models.immich import export_immich
from loupe.models.onnx import ExportedEncoder
from loupe.models.openclip import load_encoder as load_torch

pytest.importorskip("tokenizers")

TEXTS = ["a photo of a cat", "red car", "", "A CASTLE WALL, 14th century!!!", "mountains " * 80,
         "der Kölner Dom im Winter"]


@pytest.fixture(scope="module")
def ref():
    return load_torch(TINY, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, ref):
    return export_immich(ref, tmp_path_factory.mktemp("immich") / "loupe-tiny__random")


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_layout_is_immichs(folder):
    for rel in ["config.json", "visual/model.onnx", "visual/preprocess_cfg.json",
                "textual/model.onnx", "textual/tokenizer.json", "textual/tokenizer_config.json"]:
        assert (folder / rel).is_file(), rel
    import onnx

    image_in = onnx.load(str(folder / "visual" / "model.onnx")).graph.input[0]
    text_in = onnx.load(str(folder / "textual" / "model.onnx")).graph.input[0]
    assert image_in.name == "image" and image_in.type.tensor_type.shape.dim[0].dim_value == 1
    assert text_in.name == "text" and text_in.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert json.loads((folder / "config.json").read_text())["embed_dim"] == 32


def test_loads_and_equals_torch(folder, ref, tmp_path):
    enc = load_encoder(f"immich:{folder}", cache_dir=tmp_path)
    assert isinstance(enc, ExportedEncoder) and enc.backend == "onnxruntime"
    assert enc.identity["arch"] == "immich:loupe-tiny__random"
    assert enc.identity["source"].startswith("sha256:")
    assert enc.dim == 32 and enc.image_size == 64
    assert enc.identity["preprocess"] == ref.identity["preprocess"]
    files = sorted((SHARED_DATA / "strecha" / "scenes").glob("*/*.jpg"))[::10][:8]
    ims = [Image.open(f).convert("RGB") for f in files]
    assert len(ims) == 8
    assert cosines(enc.encode_images(ims), ref.encode_images(ims)).min() >= 0.9999  # batch of 8, run 1 by 1
    assert cosines(enc.encode_text(TEXTS), ref.encode_text(TEXTS)).min() >= 0.9999
    # Immich pads with the end-of-text token; the argmax pooling still reads the first one
    ids = enc.tokens(["red car"])
    assert ids.shape == (1, 32) and list(ids[0, :4]) == [49406, 736, 1615, 49407]
    assert (ids[0, 4:] == 49407).all()
    assert np.array_equal(np.where(ids == 49407, 0, ids)[:, :3],
                          ref.tokenizer(["red car"]).numpy()[:, :3])


def test_tokenizer_json_gives_open_clips_ids_on_ordinary_text(folder, ref, tmp_path):
    enc = load_encoder(f"immich:{folder}", cache_dir=tmp_path, towers=("text",))
    texts = ["a photo of a cat", "Two dogs, running!", "number 42", "naïve café"]
    for t in texts:
        ours = [i for i in enc.tokenizer([t])[0]]
        theirs = ref.tokenizer([t]).numpy()[0]
        assert ours == list(theirs[:len(ours)]) and (theirs[len(ours):] == 0).all()


def test_towers_load_separately_and_share_the_identity(folder, tmp_path):
    both = load_encoder(f"immich:{folder}", cache_dir=tmp_path)
    text = load_encoder(f"immich:{folder}", cache_dir=tmp_path, towers=("text",))
    assert text.image_tower is None and text.identity == both.identity
    with pytest.raises(ModelError, match="image tower"):
        text.encode_images([Image.new("RGB", (50, 50))])
    # a text-only copy (what a query machine downloads) works without visual/
    only = tmp_path / "text-only"
    shutil.copytree(folder, only, ignore=shutil.ignore_patterns("visual"))
    q = load_encoder(f"immich:{only}", cache_dir=tmp_path, towers=("text",))
    assert np.abs(q.encode_text(["red car"]) - both.encode_text(["red car"])).max() < 1e-6
    assert q.image_size == 64  # from config.json's vision_cfg
    with pytest.raises(ModelError, match="no visual"):
        load_encoder(f"immich:{only}", cache_dir=tmp_path)


def test_bad_folders_are_explained(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_encoder(f"immich:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_encoder(f"immich:{tmp_path / 'empty'}", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="no torch backend"):
        load_encoder(f"immich:{tmp_path / 'empty'}", backend="torch")
