"""Flickr30k / COCO image-text recall on tiny copies in the CLIP_benchmark and Karpathy formats."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loupe.eval import imagetext
from loupe.eval.common import DatasetError, Embedder, EvalOptions
from loupe.eval.testing import ColorEncoder

COLORS = {"im0.jpg": (250, 0, 0), "im1.jpg": (0, 250, 0), "im2.jpg": (0, 0, 250)}
CAPTIONS = [  # (image, caption, text vector)
    ("im0.jpg", "a red thing", (1, 0, 0)),
    ("im0.jpg", "red, with a comma", (0, 1, 0.1)),
    ("im1.jpg", "green", (0.5, 1, 0)),
    ("im1.jpg", "greenish", (1, 0.5, 0)),
    ("im2.jpg", "blue", (1, 1, 1)),            # ties with all three images
    ("im2.jpg", "blue sky", (1, 0, 0.5)),
]
# text->image ranks of each caption's image: 0, 2, 0, 1, 2 (tie, broken by index), 1
# image->text ranks of each image's best caption: 0, 1 ("red, with a comma" beats "green"), 0


def _encoder():
    return ColorEncoder({c: v for _, c, v in CAPTIONS})


def _images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, color in COLORS.items():
        Image.new("RGB", (32, 32), color).save(folder / name, quality=95)


@pytest.fixture()
def flickr(tmp_path):
    _images(tmp_path / "flickr30k-images")
    lines = ["image,caption"] + [f"{im},{cap}" for im, cap, _ in CAPTIONS]
    (tmp_path / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _evaluate(name, root, tmp_path):
    options = EvalOptions(cache_dir=tmp_path / "cache")
    return imagetext.evaluate(imagetext.load(name, root), options, Embedder(options, _encoder()))


def test_recall_both_directions_hand_computed(flickr, tmp_path):
    m = _evaluate("flickr30k", flickr, tmp_path).metrics
    assert m["text->image R@1"] == pytest.approx(100 * 2 / 6)
    assert m["text->image R@5"] == pytest.approx(100.0)
    assert m["image->text R@1"] == pytest.approx(100 * 2 / 3)
    assert m["image->text R@10"] == pytest.approx(100.0)


def test_per_query_ranks_and_report_items(flickr, tmp_path):
    result = _evaluate("flickr30k", flickr, tmp_path)
    assert [q.metrics["rank"] for q in result.queries] == [1, 3, 1, 2, 3, 2]
    assert result.queries[1].name == "red, with a comma"
    assert [it.correct for it in result.queries[4].top] == [False, False, True]
    assert result.config["dataset"]["captions"] == 6


def test_coco_and_karpathy_formats_give_the_same_numbers(flickr, tmp_path):
    expected = _evaluate("flickr30k", flickr, tmp_path).metrics
    coco = tmp_path / "coco"
    _images(coco / "val2014")
    ids = {name: i for i, name in enumerate(COLORS)}
    (coco / "coco_test_karpathy.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": n} for n, i in ids.items()],
        "annotations": [{"id": k, "image_id": ids[im], "caption": c} for k, (im, c, _) in enumerate(CAPTIONS)],
    }))
    assert _evaluate("coco", coco, tmp_path).metrics == expected
    karpathy = tmp_path / "karpathy"
    _images(karpathy / "flickr30k-images")
    (karpathy / "dataset_flickr30k.json").write_text(json.dumps({"images": [
        {"filename": n, "split": "test", "sentences": [{"raw": c} for im, c, _ in CAPTIONS if im == n]}
        for n in COLORS
    ] + [{"filename": "train.jpg", "split": "train", "sentences": [{"raw": "not in test"}]}]}))
    assert _evaluate("flickr30k", karpathy, tmp_path).metrics == expected


def test_bad_inputs_are_named(flickr, tmp_path):
    (flickr / "flickr30k_test_karpathy.txt").write_text("image,caption\nim0.jpg,fine\nno image here\n")
    with pytest.raises(DatasetError, match=r"flickr30k_test_karpathy.txt:3"):
        imagetext.load("flickr30k", flickr)
    (flickr / "flickr30k_test_karpathy.txt").write_text("image,caption\nmissing.jpg,a caption\n")
    with pytest.raises(DatasetError, match=r"missing\.jpg[\s\S]*Flickr30k request form"):
        imagetext.load("flickr30k", flickr)
    with pytest.raises(DatasetError, match="coco_test_karpathy.json"):
        imagetext.load("coco", tmp_path / "flickr30k-images")
