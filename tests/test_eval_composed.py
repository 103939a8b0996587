"""CIRR, CIRCO and FashionIQ on tiny copies in their official layouts, hand-computed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loupe.eval import composed
from loupe.eval.common import DatasetError, Embedder, EvalOptions
from loupe.eval.testing import ColorEncoder

RED, YELLOW, GREEN, ORANGE, BLUE, CYAN = (250, 0, 0), (250, 250, 0), (0, 250, 0), (250, 120, 0), (0, 0, 250), \
    (0, 250, 250)
TEXTS = {"make it green": (0, 1, 0), "more red": (1, 0, 0), "green": (0, 1, 0),
         "is green and has no red": (0, 1, 0), "x and y": (0, 0, 1)}


def _img(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)


def _evaluate(data, tmp_path, **kw):
    options = EvalOptions(cache_dir=tmp_path / "cache")
    return composed.evaluate(data, options, Embedder(options, ColorEncoder(TEXTS)), **kw)


@pytest.fixture()
def cirr(tmp_path):
    root = tmp_path / "cirr_data"
    colors = [RED, YELLOW, GREEN, ORANGE, BLUE, CYAN]
    split = {}
    for i, c in enumerate(colors):
        _img(root / "dev" / f"dev-{i}.png", c)
        split[f"dev-{i}"] = f"./dev/dev-{i}.png"
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split))
    caps = [
        {"pairid": 10, "reference": "dev-0", "target_hard": "dev-2", "caption": "make it green",
         "img_set": {"id": 1, "members": ["dev-0", "dev-2", "dev-4", "dev-5"]}},
        {"pairid": 11, "reference": "dev-4", "target_hard": "dev-5", "caption": "more red",
         "img_set": {"id": 2, "members": ["dev-4", "dev-5", "dev-1", "dev-3"]}},
    ]
    (root / "cirr" / "captions" / "cap.rc2.val.json").write_text(json.dumps(caps))
    return root


def test_cirr_recall_and_subset_recall(cirr, tmp_path):
    result = _evaluate(composed.load_cirr(cirr), tmp_path)
    m = result.metrics
    # q1 = (red + green)/|.|: dev-1, dev-3, dev-2, ... with dev-0 (the reference) removed -> target at 3
    # q2 = (blue + red)/|.|: dev-0, dev-3, dev-1, dev-5 (tie with dev-1, later index) -> target at 4;
    # in the subsets: q1's target first, q2's after dev-3 and dev-1
    assert (m["R@1"], m["R@5"], m["R@50"]) == (0.0, 100.0, 100.0)
    assert (m["R_subset@1"], m["R_subset@2"], m["R_subset@3"]) == (50.0, 50.0, 100.0)
    assert m["Avg"] == 75.0
    assert [q.metrics["rank"] for q in result.queries] == [3, 4]
    assert all(it.label != "dev-0" for it in result.queries[0].top)     # reference removed
    assert result.config["composed"] == {"fusion": "loupe.search.query.fuse: normalise(w*img + (1-w)*txt)",
                                         "weight": 0.5, "exclude_reference": True}


def test_cirr_fusion_weight_is_used(cirr, tmp_path):
    # weight 1: image only; q2 is then plain blue and cyan (dev-5, the target) comes first
    m = _evaluate(composed.load_cirr(cirr), tmp_path, weight=1.0).metrics
    assert m["R@1"] == 50.0


def test_circo_map_with_several_ground_truths(tmp_path):
    root = tmp_path / "circo"
    images = []
    for i, c in enumerate([RED, YELLOW, GREEN, ORANGE, CYAN], start=1):
        _img(root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg", c)
        images.append({"id": i, "file_name": f"{i:012d}.jpg"})
    (root / "COCO2017_unlabeled" / "annotations").mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(
        json.dumps({"images": images}))
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps([
        {"id": 0, "reference_img_id": 1, "target_img_id": 3, "relative_caption": "green",
         "shared_concept": "thing", "gt_img_ids": [3, 5]},
    ]))
    result = _evaluate(composed.load_circo(root), tmp_path)
    # ranking 2, 4, 1 (the reference is kept, as in the official code), 3, 5: hits at 4 and 5
    ap = (1 / 4 + 2 / 5) / 2
    assert result.metrics["mAP@5"] == pytest.approx(100 * ap)
    assert result.metrics["mAP@50"] == pytest.approx(100 * ap)
    assert result.metrics["R@5"] == 100.0
    assert [it.label for it in result.queries[0].top] == ["2", "4", "1", "3", "5"]


def test_fashioniq_per_category_and_mean(tmp_path):
    root = tmp_path / "fiq"
    dress = ["d1", "d2", "d3"] + [f"d{k}" for k in range(4, 13)]
    for n, c in zip(dress, [RED, YELLOW, GREEN] + [(250, 30 * k, 0) for k in range(1, 10)], strict=True):
        _img(root / "images" / f"{n}.jpg", c)
    for n, c in (("s0", BLUE), ("s2", CYAN), ("s3", BLUE)):
        _img(root / "images" / f"{n}.jpg", c)
    (root / "image_splits").mkdir()
    (root / "captions").mkdir()
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(dress))
    (root / "image_splits" / "split.shirt.val.json").write_text(json.dumps(["s2", "s3"]))
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(
        [{"candidate": "d1", "target": "d3", "captions": ["is green.", "has no red?"]}]))
    # the reference s0 is not in the shirt gallery: it is embedded on its own
    (root / "captions" / "cap.shirt.val.json").write_text(json.dumps(
        [{"candidate": "s0", "target": "s2", "captions": ["x", "y"]}]))
    data = composed.load_fashioniq(root, categories=("dress", "shirt"))
    m = _evaluate(data, tmp_path).metrics
    # dress: d2 and the nine yellowish images beat the target, and d1 ties it with a lower index
    assert (m["dress R@10"], m["dress R@50"]) == (0.0, 100.0)
    assert (m["shirt R@10"], m["shirt R@50"]) == (100.0, 100.0)
    assert (m["mean R@10"], m["mean R@50"], m["average"]) == (50.0, 100.0, 75.0)
    assert composed.fiq_text(["is green.", "has no red?"]) == "is green and has no red"


def test_composed_errors_name_the_problem(cirr, tmp_path):
    caps = cirr / "cirr" / "captions" / "cap.rc2.val.json"
    caps.write_text(json.dumps([{"pairid": 1, "reference": "dev-9", "target_hard": "dev-2",
                                 "caption": "x", "img_set": {"members": []}}]))
    with pytest.raises(DatasetError, match="dev-9"):
        composed.load_cirr(cirr)
    caps.write_text("[{oops")
    with pytest.raises(DatasetError, match="not valid JSON"):
        composed.load_cirr(cirr)
    with pytest.raises(DatasetError, match=r"cap\.dress\.val\.json[\s\S]*fashion-iq"):
        composed.load_fashioniq(tmp_path)
    with pytest.raises(DatasetError, match="unknown category"):
        composed.load_fashioniq(tmp_path, categories=("hats",))
