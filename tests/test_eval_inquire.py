"""INQUIRE fullrank and rerank on tiny copies of the official CSVs, hand-computed (ties included)."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from loupe.eval import inquire
from loupe.eval.common import DatasetError, Embedder, EvalOptions
from loupe.eval.testing import ColorEncoder

TEXTS = {"red bird": (1, 0, 0), "blue thing": (0, 0, 1), "nothing annotated": (0, 1, 0)}


def _img(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, quality=95)


@pytest.fixture()
def fullrank(tmp_path):
    root = tmp_path / "inquire"
    colors = [(250, 0, 0), (250, 60, 0), (250, 120, 0), (250, 250, 0), (0, 250, 0), (0, 0, 250)]
    for i, c in enumerate(colors):
        _img(root / "train" / "00000_Animalia" / f"g{i}.jpg", c)
    (root / "inquire_queries_test.csv").write_text(
        ",query_id,query_text,supercategory\n0,11,red bird,Appearance\n1,12,blue thing,Context\n"
        "2,13,nothing annotated,Context\n")
    (root / "inquire_annotations.csv").write_text(
        "query_id,image_path\n11,train/00000_Animalia/g1.jpg\n11,train/00000_Animalia/g3.jpg\n"
        "11,train/09999_Plantae/gX.jpg\n12,train/00000_Animalia/g0.jpg\n")
    return root


def _options(tmp_path):
    return EvalOptions(cache_dir=tmp_path / "cache")


def test_fullrank_hand_computed(fullrank, tmp_path):
    options = _options(tmp_path)
    result = inquire.evaluate_fullrank(inquire.load_fullrank(fullrank), options,
                                       Embedder(options, ColorEncoder(TEXTS)))
    red, blue, empty = result.queries
    # red bird: g0 g1 g2 g3 g4 g5, hits at 2 and 4, 3 relevant (one never retrieved):
    # sklearn AP (1/2 + 2/4)/2 = 1/2, times 2 hits / min(3, 50)
    assert red.metrics["AP@50"] == pytest.approx(100 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(8)   # the missing one appended 7th
    assert red.metrics["nDCG@50"] == pytest.approx(100 * dcg / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert red.metrics["MRR"] == pytest.approx(50.0)
    assert red.metrics["R@50"] == pytest.approx(100 * 2 / 3)
    # blue thing: g5 first, then g0..g4 all tied at 0 with the one hit g0 among them:
    # one threshold for the tied five -> precision 1/6 (position order alone would say 1/2)
    assert blue.metrics["AP@50"] == pytest.approx(100 / 6)
    disc = sum(1 / math.log2(i + 2) for i in range(1, 6))
    assert blue.metrics["nDCG@50"] == pytest.approx(100 * disc / 5)
    assert math.isnan(empty.metrics["AP@50"])
    assert result.metrics["mAP@50"] == pytest.approx(100 * (1 / 3 + 1 / 6) / 2)
    assert "1 queries without a relevant image" in result.notes[0]


def test_fullrank_truncated_k(fullrank, tmp_path):
    options = _options(tmp_path)
    result = inquire.evaluate_fullrank(inquire.load_fullrank(fullrank), options,
                                       Embedder(options, ColorEncoder(TEXTS)), k=3)
    # top 3 of red bird: g0 g1 g2 -> one hit at 2: (1/2) * 1 / min(3, 3)
    assert result.queries[0].metrics["AP@3"] == pytest.approx(100 / 6)
    assert "mAP@3" in result.metrics


def test_rerank_task_hand_computed(tmp_path):
    root = tmp_path / "rr"
    for name, color in {"a": (250, 0, 0), "b": (250, 120, 0), "c": (0, 250, 0), "d": (0, 0, 250)}.items():
        _img(root / "train_rerank" / f"{name}.jpg", color)
    (root / "inquire_rerank.csv").write_text(
        "query,image_path,relevant,split\n"
        "red bird,train_rerank/a.jpg,0,test\nred bird,train_rerank/b.jpg,1,test\n"
        "red bird,train_rerank/c.jpg,1,test\nred bird,train_rerank/d.jpg,0,test\n"
        "blue thing,train_rerank/d.jpg,1,test\nblue thing,train_rerank/a.jpg,0,test\n"
        "blue thing,train_rerank/b.jpg,1,val\n")
    options = _options(tmp_path)
    result = inquire.evaluate_rerank(inquire.load_rerank(root, split="test"), options,
                                     Embedder(options, ColorEncoder(TEXTS)))
    # red bird: a b {c d tied at 0}: precision 1/2 after b, 2/4 after the tie -> AP 1/2
    assert result.queries[0].metrics["AP"] == pytest.approx(50.0)
    assert result.queries[1].metrics["AP"] == pytest.approx(100.0)
    assert result.metrics["mAP"] == pytest.approx(75.0)
    assert result.metrics["MRR"] == pytest.approx(75.0)


def test_inquire_bad_rows(tmp_path, fullrank):
    (fullrank / "inquire_rerank.csv").write_text("query,image_path,relevant\nred bird,train/x.jpg,maybe\n")
    with pytest.raises(DatasetError, match=r"inquire_rerank.csv:2: 'relevant'"):
        inquire.load_rerank(fullrank)
    (fullrank / "inquire_annotations.csv").write_text("query_id,path\n11,x.jpg\n")
    with pytest.raises(DatasetError, match=r"inquire_annotations.csv:1: missing column\(s\) image_path"):
        inquire.load_fullrank(fullrank)
    with pytest.raises(DatasetError, match=r"inquire_queries_val.csv[\s\S]*inquire-benchmark"):
        inquire.load_fullrank(fullrank, split="val")
