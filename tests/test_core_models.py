"""Models: local checkpoints through --weights, identity, and refusing a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, cli, make_folder

from loupe import Library, ModelMismatch
from loupe.models.openclip import ModelError, load_encoder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint on disk, with weights that are not the seeded random ones."""
    import open_clip

    from loupe.models.openclip import _register_configs

    _register_configs()
    torch.manual_seed(1234)
    model = open_clip.create_model("loupe-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_local_checkpoint_loads_through_weights(checkpoint):
    path, model = checkpoint
    enc = load_encoder("loupe-tiny", weights=path, device="cpu")
    with torch.inference_mode():
        tokens = enc.tokenizer(["a photo of a cat"])
        want = model.encode_text(tokens)
    want = (want / want.norm(dim=-1, keepdim=True)).numpy()[0]
    assert np.allclose(enc.encode_text(["a photo of a cat"])[0], want, atol=1e-5)
    assert enc.identity["source"].startswith("sha256:")
    random = load_encoder(TINY, device="cpu")
    assert not np.allclose(random.encode_text(["a photo of a cat"]), enc.encode_text(["a photo of a cat"]))


def test_cli_weights_flag_offline(tmp_path, checkpoint):
    path, _ = checkpoint
    make_folder(tmp_path / "photos", 4)
    r = cli("index", str(tmp_path / "photos"), "--model", "loupe-tiny", "--weights", str(path), "--json")
    assert r.exit_code == 0, r.stderr
    # Later commands find the weights through the library's record.
    r = cli("search", "--image", str(tmp_path / "photos" / "img0002.png"), "-k", "1", "--json",
                cwd=tmp_path / "photos")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["rel_path"] == "img0002.png"


def test_model_mismatch_is_refused(tmp_path, checkpoint):
    make_folder(tmp_path / "photos", 3)
    lib = Library.open(tmp_path / "photos" / ".loupe", model=TINY, device="cpu")
    lib.index()
    with pytest.raises(ModelMismatch, match="loupe-tiny:random"):
        Library.open(tmp_path / "photos" / ".loupe", model="ViT-B-32:laion2b_s34b_b79k")
    # Same architecture, other weights: caught by the checksum when the model loads.
    other = Library.open(tmp_path / "photos" / ".loupe", model="loupe-tiny", weights=checkpoint[0],
                         device="cpu")
    with pytest.raises(ModelMismatch, match="sha256"):
        other.search("anything")
    rows = lib.catalog.counts()["indexed"]
    r = cli("index", str(tmp_path / "photos"), "--model", "ViT-B-32:openai")
    assert r.exit_code == 2 and "cannot be compared" in r.stderr
    assert lib.catalog.counts()["indexed"] == rows  # nothing changed


def test_bad_model_names_are_explained():
    with pytest.raises(ModelError, match="names no weights"):
        load_encoder("ViT-B-32")
    with pytest.raises(ModelError, match="unknown architecture"):
        load_encoder("No-Such-Net:random")
    with pytest.raises(ModelError, match="weights not found"):
        load_encoder("loupe-tiny", weights="/no/such/file.pt")


def test_numpy_preprocessing_equals_open_clip_transform():
    from PIL import Image

    enc = load_encoder(TINY, device="cpu")
    rng = np.random.default_rng(0)
    for size in [(300, 200), (200, 300), (64, 64), (65, 250), (20, 10)]:
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        assert np.abs(enc.prepare(im) - enc.preprocess(im).numpy()).max() < 1e-5
    # Past 4:1 only the crop is resampled (bounded work): on picture-like content the same
    # numbers up to float rounding (on noise, Pillow builds differ in their order of passes)
    yy, xx = np.mgrid[0:900, 0:65]
    strip = np.stack([(xx * 3) % 256, (yy // 3) % 256, ((xx + yy) // 4) % 256], -1)
    im = Image.fromarray(strip.astype(np.uint8))
    one_level = 1 / 255 / min(enc.identity["preprocess"]["std"])
    assert np.abs(enc.prepare(im) - enc.preprocess(im).numpy()).max() <= 2 * one_level
