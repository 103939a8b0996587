"""GLDv2 retrieval mAP@100 on a tiny copy in the official CSV + a/b/c folder layout."""

from __future__ import annotations

import pytest
from PIL import Image

from loupe.eval import gldv2
from loupe.eval.common import DatasetError, Embedder, EvalOptions
from loupe.eval.testing import ColorEncoder


def _img(root, folder, image_id, color):
    p = root / gldv2.image_rel(folder, image_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(p, quality=95)


@pytest.fixture()
def gld(tmp_path):
    root = tmp_path / "gldv2"
    for k in range(5):  # the red query ranks the index i00, i01, ..., i04
        _img(root, "index", f"i0{k}", (250, 30 * k, 0))
    _img(root, "test", "qa1", (250, 0, 0))
    _img(root, "test", "qb2", (0, 0, 250))          # scores 0 everywhere: ties, index order
    (root / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n"
        "qa1,i01 i03 zzz999,Public\n"                 # zzz999 is not in the index and still counts
        "qb2,i00,Private\n"
        "qc3,None,Ignored\n"
    )
    return root


def _evaluate(root, tmp_path):
    options = EvalOptions(cache_dir=tmp_path / "cache")
    return gldv2.evaluate(gldv2.load(root), options, Embedder(options, ColorEncoder()))


def test_map_at_100_public_private(gld, tmp_path):
    result = _evaluate(gld, tmp_path)
    # qa1: hits at ranks 2 and 4 -> (1/2 + 2/4) / min(3, 100); qb2: hit at rank 1
    assert result.metrics["mAP@100 Public"] == pytest.approx(100 / 3)
    assert result.metrics["mAP@100 Private"] == pytest.approx(100.0)
    assert result.metrics["mAP@100 all"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert [q.name for q in result.queries] == ["qa1", "qb2"]   # Ignored left out
    assert [it.correct for it in result.queries[0].top] == [False, True, False, True, False]


def test_index_listing_from_csv_and_errors(gld, tmp_path):
    (gld / "index.csv").write_text("id\ni00\ni01\n")
    data = gldv2.load(gld)
    assert data.index_ids == ["i00", "i01"]
    (gld / "retrieval_solution_v2.1.csv").write_text("id,images,Usage\nqa1,i01,Secret\n")
    with pytest.raises(DatasetError, match=r"retrieval_solution_v2.1.csv:2: unknown Usage"):
        gldv2.load(gld)
    (gld / "retrieval_solution_v2.1.csv").unlink()
    with pytest.raises(DatasetError, match=r"retrieval_solution_v2.1.csv[\s\S]*google-landmark"):
        gldv2.load(gld)
