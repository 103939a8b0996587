"""DISC21-style copy detection on a tiny copy of the DISC21 layout, hand-computed."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from loupe.eval import copydetect
from loupe.eval.common import DatasetError, Embedder, EvalOptions
from loupe.eval.testing import ColorEncoder


def _img(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, quality=95)


@pytest.fixture()
def disc(tmp_path):
    root = tmp_path / "disc21"
    refs = {"R000": (250, 0, 0), "R001": (250, 250, 0), "R002": (0, 250, 0), "R003": (250, 120, 0)}
    for name, c in refs.items():
        _img(root / "images" / "references" / f"{name}.jpg", c)
    # Q0 is a copy of R001, Q1 of R002; Q2 has no copy (and scores 0 against everything)
    for name, c in {"Q0": (250, 200, 0), "Q1": (0, 250, 60), "Q2": (0, 0, 250)}.items():
        _img(root / "images" / "queries" / f"{name}.jpg", c)
    (root / "list_files").mkdir()
    (root / "list_files" / "public_ground_truth.csv").write_text(
        "query_id,reference_id\nQ0,R001\nQ1,R002\nQ2,\nQ9,R000\n")
    return root


def _evaluate(root, tmp_path, **kw):
    options = EvalOptions(cache_dir=tmp_path / "cache")
    return copydetect.evaluate(copydetect.load(root), options, Embedder(options, ColorEncoder()), **kw)


def test_micro_ap_pools_all_queries(disc, tmp_path):
    result = _evaluate(disc, tmp_path, k=2)
    # pooled, by score: Q0-R001 (T) .994, Q0-R003 (F) .974, Q1-R002 (T) .972, Q1-R001 (F) .688,
    # Q2-R000 (F) 0, Q2-R001 (F) 0; 2 ground-truth pairs (Q9 is not in the query set)
    assert result.metrics["micro-AP"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
    assert result.metrics["recall@P90"] == pytest.approx(50.0)
    assert result.metrics["recall@rank1"] == pytest.approx(100.0)
    assert result.config["matching"]["predictions"] == 6
    assert result.config["dataset"]["ground_truth_pairs"] == 2
    q2 = result.queries[2]
    assert q2.n_relevant == 0 and not any(it.correct for it in q2.top) and math.isnan(q2.metrics["copy rank"])


def test_max_results_keeps_the_highest_scores(disc, tmp_path):
    result = _evaluate(disc, tmp_path, k=2, max_results=2)
    # only Q0-R001 (T) and Q0-R003 (F) survive: AP = 1/2 * 1, the second copy is never found
    assert result.metrics["micro-AP"] == pytest.approx(50.0)
    assert result.metrics["recall@rank10"] == pytest.approx(50.0)


def test_query_list_and_bad_ground_truth(disc, tmp_path):
    (disc / "list_files" / "dev_queries").write_text("Q0\nQ2\n")
    data = copydetect.load(disc)
    assert [copydetect.CopyData.ident(q) for q in data.queries] == ["Q0", "Q2"]
    (disc / "list_files" / "dev_queries").write_text("Q0\nQ7\n")
    with pytest.raises(DatasetError, match=r"Q7\.jpg"):
        copydetect.load(disc)
    (disc / "list_files" / "dev_queries").unlink()
    (disc / "list_files" / "public_ground_truth.csv").write_text("query_id,reference_id\nQ0;R001\n")
    with pytest.raises(DatasetError, match=r"public_ground_truth.csv:2"):
        copydetect.load(disc)
