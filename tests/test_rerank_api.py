"""The reranker interface: spec parsing, the registry, chaining, `loupe rerankers`, drawing boxes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import loupe.search.stages as rerank
from loupe.core.types import Candidates, Query
from loupe.media.draw import draw_boxes
from loupe.search import pipeline
from loupe.search.stages import AlphaQE, Reranker, Spatial, SpatialORB, SuperGlobal


def test_get_parses_chains_parameters_and_instances() -> None:
    chain = rerank.get("superglobal, qe:n=5:alpha=2.5 ,spatial:detector=orb:max_keypoints=500")
    assert [type(r) for r in chain] == [SuperGlobal, AlphaQE, Spatial]
    assert (chain[1].n, chain[1].alpha) == (5, 2.5)
    assert (chain[2].detector, chain[2].max_keypoints, chain[2].depth) == ("orb", 500, 100)

    mine = Spatial(max_keypoints=2000, max_side=800)
    chain = rerank.get(["superglobal", mine, "spatial-orb"])
    assert chain[1] is mine
    assert isinstance(chain[2], SpatialORB) and chain[2].detector == "orb"
    assert rerank.get(None) == [] and rerank.get("") == [] and rerank.get("none") == []
    assert isinstance(rerank.get(SuperGlobal(k=3))[0], SuperGlobal)


def test_get_rejects_unknown_names_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match="unknown reranker 'colbert'; known: superglobal, qe, spatial, spatial-orb, spatial-learned, itm, vlm, cutoff, mmr, hubness, collapse"):
        rerank.get("superglobal,colbert")
    with pytest.raises(ValueError, match="key one of depth, k, beta, device"):
        rerank.get("superglobal:gamma=2")
    with pytest.raises(ValueError, match="superglobal:k: 'many' is not a valid int"):
        rerank.get("superglobal:k=many")
    with pytest.raises(ValueError, match="detector must be one of"):
        rerank.get("spatial:detector=surf")
    with pytest.raises(ValueError, match="depth must be > 0"):
        rerank.get("qe:depth=0")
    with pytest.raises(TypeError):
        rerank.get([3])


def test_describe_lists_every_registered_method_with_defaults() -> None:
    entries = {e["name"]: e for e in rerank.describe()}
    assert list(entries) == list(rerank.REGISTRY)
    assert entries["superglobal"]["parameters"] == {"depth": 400, "k": 9, "beta": 0.15, "device": "auto"}
    assert entries["qe"]["parameters"]["alpha"] == 3.0
    assert entries["spatial"]["parameters"]["detector"] == "sift"
    assert entries["spatial-orb"]["parameters"]["detector"] == "orb"
    assert entries["spatial"]["class"] == "loupe.search.stages.spatial.Spatial"
    assert all(e["doc"] and "\n" not in e["doc"] for e in entries.values())
    json.dumps(rerank.describe())                                  # what `--json` prints


@dataclass
class Reverse(Reranker):
    """Test double: reverses the head and records what it was given."""

    name: ClassVar[str] = "reverse"
    depth: int = 3

    def __post_init__(self) -> None:
        self.seen: list[list[int]] = []

    def rerank(self, query: Query, candidates: Candidates, store: object) -> Candidates:
        self.seen.append(candidates.ids.tolist())
        order = np.arange(len(candidates))[::-1]
        return Candidates(candidates.ids[order], np.arange(len(order), 0, -1) + 10.0,
                          [(0.0, 0.0, 1.0, 1.0)] * len(order))


@dataclass
class Replace(Reranker):
    """Test double: a reranker that searched again and found ids from the tail."""

    name: ClassVar[str] = "replace"
    depth: int = 3

    def rerank(self, query: Query, candidates: Candidates, store: object) -> Candidates:
        return Candidates(np.array([15, 11, 10]), np.array([3.0, 2.0, 1.0]))


def first_stage() -> Candidates:
    return Candidates(np.arange(10, 16), np.linspace(0.9, 0.4, 6))


def test_apply_reranks_the_head_and_keeps_the_tail() -> None:
    query = Query(vector=np.zeros(2, np.float32))
    first, second = Reverse(), Reverse(depth=2)
    out = pipeline.apply([first, second], query, first_stage(), store=None)
    assert first.seen == [[10, 11, 12]] and second.seen == [[12, 11]]
    assert out.ids.tolist() == [11, 12, 10, 13, 14, 15]
    np.testing.assert_allclose(out.scores[3:], first_stage().scores[3:])
    assert out.boxes[:3] == [(0.0, 0.0, 1.0, 1.0)] * 3 and out.boxes[3:] == [None] * 3

    # An explicit depth overrides every reranker's own.
    out = pipeline.apply([Reverse()], query, first_stage(), store=None, depth=5)
    assert out.ids.tolist() == [14, 13, 12, 11, 10, 15]


def test_apply_neither_repeats_nor_loses_ids_when_a_reranker_searched_again() -> None:
    out = pipeline.apply([Replace()], Query(vector=np.zeros(2, np.float32)), first_stage(), store=None)
    assert out.ids.tolist() == [15, 11, 10, 12, 13, 14]         # 12 left the head, 15 joined it
    np.testing.assert_allclose(out.scores[3:], first_stage().scores[2:5])


def test_loupe_rerankers_command() -> None:
    from loupe.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["rerankers", "--json"])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.output)] == list(rerank.REGISTRY)
    result = runner.invoke(app, ["rerankers"])
    assert result.exit_code == 0, result.output
    for name in rerank.REGISTRY:
        assert name in result.output
    assert "beta=0.15" in result.output and "DBA" in result.output


def test_draw_boxes_outlines_each_box_on_a_copy() -> None:
    image = Image.new("RGB", (200, 100), "white")
    out = draw_boxes(image, [(20, 10, 80, 60), None], color="#ff0000", width=3)
    pixels = np.asarray(out)
    assert tuple(pixels[10, 50]) == (255, 0, 0)                    # top edge
    assert tuple(pixels[35, 79]) == (255, 0, 0)                    # right edge
    assert tuple(pixels[35, 50]) == (255, 255, 255)                # inside stays
    assert tuple(pixels[90, 150]) == (255, 255, 255)
    assert np.asarray(image).min() == 255                          # the input is untouched
