"""Preparing pixels: a pure function of the picture and an identity, bounded by the output size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA
from PIL import Image

from loupe.models.preprocess import prepare, resize_crop, supports

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
IDENTITY = {"model": "x", "dim": 32, "image_size": 224,
            "preprocess": {"size": [224, 224], "mode": "RGB", "mean": MEAN, "std": STD,
                           "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}}


def full_resize_crop(im: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """What prepare did before: resize the whole picture (short side to size), then crop."""
    w, h = im.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), resample)
    return im.crop((left, top, left + size, top + size))


def real_photos(n: int) -> list[Image.Image]:
    files = sorted((SHARED_DATA / "strecha" / "scenes").glob("*/*.jpg"))[::9]
    files += sorted((SHARED_DATA / "sacre_coeur" / "mapping").glob("*"))[::2]
    assert len(files) >= n, "needs the shared photos"
    out = []
    for f in files[:n]:
        im = Image.open(f)
        im.draft("RGB", (im.width // 4, im.height // 4))  # as the decoder does for small models
        out.append(im.convert("RGB"))
    return out


@pytest.mark.parametrize("size", [224, 64])
def test_same_numbers_as_before_on_real_photos(size):
    cfg = {**IDENTITY["preprocess"], "size": size}
    for im in real_photos(16):
        old = np.asarray(full_resize_crop(im, size), np.float32) / 255
        old = ((old - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)).transpose(2, 0, 1)
        new = prepare(im, cfg)
        assert new.shape == (3, size, size) and new.dtype == np.float32
        assert np.abs(new - old).max() < 1e-6


def test_same_numbers_as_before_on_noise_within_the_bound():
    rng = np.random.default_rng(0)
    for w, h in [(195, 266), (266, 195), (20, 10), (65, 250), (224, 500), (900, 230)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for f in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            assert np.array_equal(np.asarray(resize_crop(im, 224, f)),
                                  np.asarray(full_resize_crop(im, 224, f))), (w, h, f)


@pytest.mark.parametrize("size", [224, 64])
def test_the_bounded_path_is_within_a_grey_level_or_two_on_real_photos(size):
    worst, changed, total = 0, 0, 0
    for im in real_photos(16):
        for f in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            a = np.asarray(full_resize_crop(im, size, f), np.int16)
            b = np.asarray(resize_crop(im, size, f, full_resize_max=0), np.int16)
            assert a.shape == b.shape == (size, size, 3)
            d = np.abs(a - b)
            worst, changed, total = max(worst, int(d.max())), changed + int((d > 0).sum()), total + d.size
    assert worst <= 2  # measured: 1
    assert changed / total < 0.002  # measured: 0.013% of values


def test_work_is_bounded_by_the_output_on_a_thin_strip(monkeypatch):
    """A 1 x 200000 strip: the old way resized to 224 x 44,800,000 (30 GB); count the
    pixels every resize produces."""
    produced = []
    real_resize = Image.Image.resize

    def counting(self, size, *args, **kwargs):
        produced.append(size[0] * size[1])
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", counting)
    for size in [(1, 200_000), (200_000, 1), (3, 100_000)]:
        ramp = (np.arange(size[0] * size[1]) % 251).astype(np.uint8).reshape(size[1], size[0])
        im = Image.fromarray(np.stack([ramp] * 3, axis=-1))
        produced.clear()
        x = prepare(im, IDENTITY)
        assert x.shape == (3, 224, 224) and np.isfinite(x).all()
        assert produced and sum(produced) <= 224 * 224 + 224 * 64, (size, produced)


def test_peak_memory_stays_small_on_a_thin_strip():
    code = f"""
import json, resource, sys
sys.path.insert(0, {str(REPO)!r})
from PIL import Image
from loupe.models.preprocess import prepare
ident = json.loads({json.dumps(json.dumps(IDENTITY))})
im = Image.new("RGB", (1, 200000), (10, 200, 30))
prepare(Image.new("RGB", (300, 200)), ident)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = prepare(im, ident)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_kb": after - before, "shape": list(x.shape), "torch": "torch" in sys.modules}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, 224, 224]
    assert out["grew_kb"] < 50_000  # resizing the whole strip would need gigabytes
    assert out["torch"] is False  # preparing pixels imports no torch


def test_prepare_from_identity_alone_matches_the_encoder():
    from conftest import TINY

    from loupe.models.openclip import load_encoder

    enc = load_encoder(TINY, device="cpu")
    im = real_photos(1)[0]
    assert np.array_equal(prepare(im, enc.identity), enc.prepare(im))
    assert np.array_equal(prepare(im, enc.identity["preprocess"]), enc.prepare(im))


def test_squash_and_unsupported_pipelines():
    im = Image.new("RGB", (300, 100), (255, 0, 0))
    squash = {**IDENTITY["preprocess"], "resize_mode": "squash"}
    x = prepare(im, squash)
    assert x.shape == (3, 224, 224)
    assert np.allclose(x[0], (1 - MEAN[0]) / STD[0], atol=1e-5)
    longest = {**IDENTITY["preprocess"], "resize_mode": "longest"}
    assert supports(squash) and not supports(longest)
    with pytest.raises(ValueError, match="not implemented"):
        prepare(im, longest)
    with pytest.raises(ValueError, match="preprocess"):
        prepare(im, {"model": "no pipeline"})
