"""Revisited Oxford protocol end to end on a tiny dataset in the official layout."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from loupe.core.types import Candidates, Query
from loupe.eval import revisitop
from loupe.eval.common import DatasetError, Embedder, EvalOptions, ranked
from loupe.eval.metrics import rank_all, revisitop_protocol, revisitop_query
from loupe.eval.testing import ColorEncoder
from loupe.search.stages import Reranker
from loupe.storage.memory import MemoryStore

# Query A (red crop) ranks the gallery by its green channel: positions 0..7 hold
# items 5, 2, 7, 1, 3, 0, 4, 6. Query B (blue crop) scores every item 0: a full tie.
ORDER_A = [5, 2, 7, 1, 3, 0, 4, 6]
BOX = (16.0, 16.0, 48.0, 48.0)


def _jpg(path, color, size=(64, 64)):
    Image.new("RGB", size, color).save(path, quality=95)


def _query(path, inside, outside=(0, 200, 0)):
    im = Image.new("RGB", (64, 64), outside)
    im.paste(Image.new("RGB", (32, 32), inside), (16, 16))
    im.save(path, quality=95)


@pytest.fixture()
def roxford(tmp_path):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    imlist = [f"oxc1_g{i}" for i in range(8)]
    for pos, item in enumerate(ORDER_A):
        _jpg(root / "jpg" / f"{imlist[item]}.jpg", (250, 30 * pos, 0))
    _query(root / "jpg" / "q_a.jpg", (200, 0, 0))
    _query(root / "jpg" / "q_b.jpg", (0, 0, 200))
    gnd = [
        {"bbx": np.array(BOX), "easy": np.array([1, 3]), "hard": np.array([6]), "junk": np.array([2, 7])},
        {"bbx": np.array(BOX), "easy": np.array([0]), "hard": np.array([], int), "junk": np.array([1])},
    ]
    with open(root / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": ["q_a", "q_b"], "gnd": gnd}, fh)
    return tmp_path


def _run(data_dir, tmp_path, encoder=None, **opts):
    data = revisitop.load("roxford5k", data_dir)
    options = EvalOptions(cache_dir=tmp_path / "cache", **opts)
    embedder = Embedder(options, encoder or ColorEncoder())
    return revisitop.evaluate(data, options, embedder), embedder


def test_hand_computed_map_and_precision(roxford, tmp_path):
    result, _ = _run(roxford, tmp_path)
    m = result.metrics
    # query A, worked out in test_eval_metrics: E 5/12, M 77/180, H 1/8; query B: E = M = 1, H has no positives
    assert m["mAP_E"] == pytest.approx(100 * (5 / 12 + 1) / 2)
    assert m["mAP_M"] == pytest.approx(100 * (77 / 180 + 1) / 2)
    assert m["mAP_H"] == pytest.approx(100 * 1 / 8)
    assert m["mP@1_E"] == pytest.approx(50.0)
    assert m["mP@5_E"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert m["mP@10_M"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert m["mP@5_H"] == pytest.approx(25.0)
    a, b = result.queries
    assert [it.label for it in a.top] == [f"oxc1_g{i}" for i in ORDER_A]
    # tie: every score of B is 0, so the gallery keeps index order
    assert [it.label for it in b.top] == [f"oxc1_g{i}" for i in range(8)]
    assert [it.correct for it in a.top[:4]] == [False, None, None, True]
    assert np.isnan(b.metrics["AP_H"])
    assert result.config["dataset"]["queries"] == 2
    json.dumps(result.to_dict())  # every number serialises


def test_queries_are_cropped_to_their_box(roxford, tmp_path):
    # without the crop, query A's mean colour is mostly green and the ranking reverses
    data = revisitop.load("roxford5k", roxford)
    for g in data.gnd:
        g["bbx"] = np.array([0.0, 0.0, 64.0, 64.0])
    options = EvalOptions(cache_dir=tmp_path / "cache2")
    result = revisitop.evaluate(data, options, Embedder(options, ColorEncoder()))
    assert result.metrics["mAP_M"] != pytest.approx(100 * (77 / 180 + 1) / 2)


def test_embeddings_are_cached_once(roxford, tmp_path):
    first, e1 = _run(roxford, tmp_path)
    enc = ColorEncoder()
    second, e2 = _run(roxford, tmp_path, encoder=enc)
    assert enc.images_encoded == 0 and len(e2.hits) == 2 and not e2.misses
    assert first.metrics == second.metrics


def test_missing_images_are_named(roxford):
    (roxford / "roxford5k" / "jpg" / "oxc1_g3.jpg").unlink()
    with pytest.raises(DatasetError, match=r"oxc1_g3\.jpg.*\n.*revisitop"):
        revisitop.load("roxford5k", roxford)
    with pytest.raises(DatasetError, match="gnd_rparis6k"):
        revisitop.load("rparis6k", roxford)


def test_distractors_append_after_gallery(roxford, tmp_path):
    d = tmp_path / "revisitop1m"
    (d / "jpg" / "a").mkdir(parents=True)
    # a distractor between query A's first and second result
    _jpg(d / "jpg" / "a" / "x1.jpg", (250, 20, 0))
    (d / "revisitop1m.txt").write_text("a/x1.jpg\n")
    data = revisitop.load("roxford5k", roxford, distractors_dir=d)
    options = EvalOptions(cache_dir=tmp_path / "cache")
    result = revisitop.evaluate(data, options, Embedder(options, ColorEncoder()))
    assert [it.label for it in result.queries[0].top[:3]] == ["oxc1_g5", "x1", "oxc1_g2"]
    assert result.config["dataset"]["name"] == "roxford5k+R1M"
    assert result.config["dataset"]["gallery"] == 9
    # medium AP of query A drops: every positive moves down one place
    assert result.metrics["mAP_M"] < 100 * (77 / 180 + 1) / 2
    (d / "jpg" / "a" / "x1.jpg").unlink()
    with pytest.raises(DatasetError, match="x1.jpg"):
        revisitop.load("roxford5k", roxford, distractors_dir=d)


def test_no_rerank_imports_nothing_from_rerank(roxford, tmp_path, monkeypatch):
    # a None entry makes any import of loupe.search.stages fail
    monkeypatch.setitem(sys.modules, "loupe.search.stages", None)
    result, _ = _run(roxford, tmp_path)
    assert result.config["rerank"] == []


def test_rerank_through_the_registry(roxford, tmp_path):
    result, _ = _run(roxford, tmp_path, rerank="superglobal,qe", rerank_depth=5)
    assert [r["name"] for r in result.config["rerank"]] == ["superglobal", "qe"]
    assert all(r["depth"] == 5 and r["params"] for r in result.config["rerank"])
    for q in result.queries:  # still a permutation of the gallery
        assert sorted(it.label for it in q.top) == sorted(f"oxc1_g{i}" for i in range(8))


class _Reverse(Reranker):
    """Reverses whatever head it is handed."""

    name = "reverse"

    def __init__(self):
        self.depth = 3
        self.seen = []

    def rerank(self, query, candidates, store):
        self.seen.append(len(candidates))
        order = np.arange(len(candidates))[::-1]
        out = candidates.take(order)
        return Candidates(out.ids, np.arange(len(out))[::-1].astype(np.float32), out.boxes)


def _gallery_scoring(scores, tmp_path):
    """A gallery whose vectors score exactly `scores` against the query (1, 0)."""
    s = np.asarray(scores, np.float32)
    X = np.stack([s, np.sqrt(1 - s**2)], axis=1).astype(np.float32)
    return MemoryStore([tmp_path / f"{i}.jpg" for i in range(len(s))], X, tmp_path), np.array([1, 0], np.float32)


def test_rerank_chain_reorders_head_keeps_tail(tmp_path):
    store, q = _gallery_scoring([0.1, 0.9, 0.5, 0.7, 0.3], tmp_path)
    r = _Reverse()
    ids, _ = ranked(q, store, [r], None, lambda: Query(vector=q))
    assert ids.tolist() == [2, 3, 1, 4, 0]          # head [1, 3, 2] reversed, tail [4, 0] kept
    ids, _ = ranked(q, store, [r], 4, lambda: Query(vector=q), exclude=[1])
    assert ids.tolist() == [0, 4, 2, 3]
    assert r.seen == [3, 4]


def test_protocol_through_the_pipeline_equals_the_hand_written_ranking(roxford, tmp_path):
    """The protocol's numbers come from loupe.search.pipeline over the gallery's store; the
    same cached vectors ranked by hand (X @ q, ties by index) give the same numbers."""
    result, embedder = _run(roxford, tmp_path)
    data = revisitop.load("roxford5k", roxford)
    X = embedder.images(data.image_dir, [f"{n}.jpg" for n in data.imlist])
    Q = embedder.images(data.image_dir, [f"{q}.jpg" for q in data.qimlist],
                        boxes=[tuple(g["bbx"]) for g in data.gnd])
    by_hand = {"E": [], "M": [], "H": []}
    for i in range(len(Q)):
        ranking = rank_all(X @ Q[i])[0]
        for proto, letter in (("easy", "E"), ("medium", "M"), ("hard", "H")):
            g = revisitop_protocol(data.gnd[i], proto)
            by_hand[letter].append(revisitop_query(ranking, g["ok"], g["junk"], [1, 5, 10])[0])
    for letter, aps in by_hand.items():
        assert result.metrics[f"mAP_{letter}"] == pytest.approx(100 * np.nanmean(aps), abs=1e-9)
    assert embedder.hits and not embedder.misses[2:]   # the same cached vectors, not new ones


def test_cli_json_and_missing_data(roxford, tmp_path):
    import typer
    from typer.testing import CliRunner

    from loupe.eval.cli import register

    app = typer.Typer()
    register(app)
    common = ["--model", "loupe-tiny:random", "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "c")]
    res = CliRunner().invoke(app, ["eval", "roxford5k", "--data", str(roxford), "--json",
                                   "--out", str(tmp_path / "r.json"), *common])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert set(printed["metrics"]) >= {"mAP_E", "mAP_M", "mAP_H", "mP@10_H"}
    assert printed["config"]["model"]["model"] == "loupe-tiny:random"
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == printed["metrics"]
    res = CliRunner().invoke(app, ["eval", "rparis6k", "--data", str(tmp_path / "nowhere"), *common])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "revisitop" in res.output


def _features():
    X = np.zeros((8, 3))
    for pos, item in enumerate(ORDER_A):
        X[item] = [1.0, 0.1 * pos, 0.0]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return np.array([[1.0, 0, 0], [0, 0, 1.0]]), X


@pytest.mark.parametrize("fmt", ["mat", "npz"])
def test_precomputed_features_in_the_official_layout(roxford, tmp_path, fmt):
    import shutil

    from scipy.io import savemat

    Q, X = _features()
    path = tmp_path / f"roxford5k_feats.{fmt}"
    if fmt == "mat":
        savemat(path, {"Q": Q.T, "X": X.T})          # official example features: d x n columns
    else:
        np.savez(path, Q=Q, X=X)
    shutil.rmtree(roxford / "roxford5k" / "jpg")      # no image is read
    data = revisitop.load("roxford5k", roxford, check_images=False)
    options = EvalOptions(cache_dir=tmp_path / "cache")
    result = revisitop.evaluate(data, options, Embedder(options, encoder=object()), features=path)
    assert result.metrics["mAP_M"] == pytest.approx(100 * (77 / 180 + 1) / 2)
    assert result.metrics["mAP_H"] == pytest.approx(100 / 8)
    assert result.config["model"]["model"] == f"features:{path.name}"
    np.savez(tmp_path / "wrong.npz", Q=Q, X=X[:5])
    with pytest.raises(DatasetError, match=r"do not fit 2 queries and 8 gallery images"):
        revisitop.evaluate(data, options, features=tmp_path / "wrong.npz")
