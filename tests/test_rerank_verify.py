"""The spatial decision rule (adaptive vs fixed) on a hard real pair, and the learned-feature option
(DISK + LightGlue through kornia, random weights: plumbing and cost only, the matches mean nothing)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loupe.core.types import Candidates, Query
from loupe.search.stages import itm as itm_module
from loupe.search.stages import learned_features
from loupe.search.stages.itm import MissingExtra
from loupe.search.stages.spatial import FeatureCache, Spatial, SpatialLearned

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRECHA = DATA / "strecha" / "scenes"
FAST = {"max_side": 640, "workers": 2}


class ImageStore:
    """The Store protocol over image files (ids 100, 101, ...), counting decodes."""

    def __init__(self, paths: list[Path], cache_root: Path):
        self.paths = {100 + i: p for i, p in enumerate(paths)}
        self.cache_root = cache_root
        self.loads: list[int] = []

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.ones((len(ids), 4), np.float32) / 2

    def search_vector(self, vec, k, filters=None, exclude=()) -> Candidates:
        ids = [i for i in sorted(self.paths) if i not in exclude][:k]
        return Candidates(np.array(ids), np.zeros(len(ids)))

    def image_path(self, id_: int) -> Path:
        return self.paths[int(id_)]

    def load_image(self, id_: int) -> Image.Image:
        self.loads.append(int(id_))
        with Image.open(self.paths[int(id_)]) as im:
            return im.convert("RGB")

    def cache_dir(self, name: str) -> Path:
        folder = self.cache_root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def first_stage(store: ImageStore) -> Candidates:
    ids = np.array(sorted(store.paths), dtype=np.int64)
    return Candidates(ids, np.linspace(0.9, 0.5, len(ids)))


def photo_query(path: Path) -> Query:
    with Image.open(path) as im:
        return Query(vector=np.ones(4, np.float32) / 2, image=im.convert("RGB"))


# -- the decision rule --------------------------------------------------------------------------


def test_adaptive_threshold_follows_the_lists_chance_level() -> None:
    spatial = Spatial()
    # A short list: too few candidates to estimate chance, so the minimal sample (4) stands in:
    # verified means more than 2 x 4 inliers.
    assert spatial.decide(np.array([9, 8, 40])).tolist() == [True, False, True]
    assert spatial.evidence["chance_inliers"] == 4.0 and spatial.evidence["min_inliers_needed"] == 9
    # A long list whose typical (median) candidate gets 10 inliers: chance is 10, 21 needed.
    counts = np.array([10] * 9 + [20, 21, 60])
    assert spatial.decide(counts).tolist() == [False] * 10 + [True, True]
    assert spatial.evidence["chance_inliers"] == 10.0 and spatial.evidence["min_inliers_needed"] == 21
    # ...and a long list of near-empty candidates never goes below the minimal sample.
    assert spatial.decide(np.array([0] * 11 + [9])).tolist() == [False] * 11 + [True]
    # The affine model's minimal sample is 3.
    affine = Spatial(model="affine")
    assert affine.decide(np.array([7, 6])).tolist() == [True, False]
    # The fixed rule ignores the list.
    fixed = Spatial(decision="fixed", min_inliers=15)
    assert fixed.decide(counts).tolist() == [False] * 9 + [True, True, True]
    assert fixed.evidence == {"decision": "fixed", "chance_inliers": None, "min_inliers_needed": 15,
                              "verified": 3, "inliers": counts.tolist()}


def test_bad_decision_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="decision must be one of"):
        Spatial(decision="maybe")
    with pytest.raises(ValueError, match="chance_factor must be > 0"):
        Spatial(chance_factor=0)


def test_hard_true_match_is_verified_adaptively_but_not_by_fixed_15(tmp_path: Path) -> None:
    # Four views apart around the castle courtyard: a real match with only about a dozen
    # inliers at 640 px. The other candidates are the Herz-Jesus church (another city).
    true = STRECHA / "castle-P19" / "0004.jpg"
    others = [STRECHA / "Herz-Jesus-P8" / f"{i:04d}.jpg" for i in (0, 3, 6)] + \
             [STRECHA / "Herz-Jesus-P25" / "0010.jpg"]
    store = ImageStore([*others, true], tmp_path)
    query = photo_query(STRECHA / "castle-P19" / "0000.jpg")

    adaptive = Spatial(**FAST)
    out = adaptive.rerank(query, first_stage(store), store)
    inliers = dict(zip(sorted(store.paths), adaptive.evidence["inliers"], strict=True))
    assert 9 <= inliers[104] < 15                              # hard: fewer than the fixed 15
    assert max(inliers[i] for i in range(100, 104)) < 9        # the church never gets there
    assert store.paths[int(out.ids[0])] == true and out.boxes[0] is not None
    assert out.scores[0] == inliers[104]                       # the score is the evidence
    assert out.boxes[1:] == [None] * 4
    assert adaptive.evidence["min_inliers_needed"] == 9 and adaptive.evidence["verified"] == 1
    assert adaptive.timings["candidates"] == 5 and adaptive.timings["ms_per_candidate"] > 0

    fixed = Spatial(decision="fixed", **FAST)                  # the old rule misses it
    out = fixed.rerank(query, first_stage(store), store)
    assert out.ids.tolist() == first_stage(store).ids.tolist()
    assert out.boxes == [None] * 5 and fixed.evidence["verified"] == 0


# -- learned features (kornia) ------------------------------------------------------------------

LEARNED = {"max_side": 192, "max_keypoints": 96, "workers": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def random_disk() -> learned_features.DiskLightGlue:
    pytest.importorskip("kornia")
    return learned_features.disk_lightglue("random", "cpu")


def test_learned_features_run_through_the_reranker_and_are_cached(
    tmp_path: Path, random_disk: learned_features.DiskLightGlue
) -> None:
    paths = [STRECHA / "fountain-P11" / "0004.jpg", STRECHA / "entry-P10" / "0002.jpg"]
    store = ImageStore(paths, tmp_path)
    spatial = SpatialLearned(weights="random", **LEARNED)
    query = photo_query(STRECHA / "fountain-P11" / "0003.jpg")
    out = spatial.rerank(query, first_stage(store), store)

    assert sorted(out.ids.tolist()) == [100, 101]
    assert spatial.timings["candidates"] == 2 and spatial.timings["verify_s"] > 0
    files = list((tmp_path / "local-features").rglob("*.npz"))
    assert len(files) == 2 and all("disk-96-192-random" in str(f) for f in files)
    cached = FeatureCache(files[0].parent.parent, files[0].parent.name, 10**9).load(files[0].stem)
    assert cached.descriptors.dtype == np.float16 and cached.descriptors.shape[1] == 128
    assert 0 < len(cached) <= 96 and cached.size is not None and max(cached.size) == 192
    store.loads.clear()
    again = spatial.rerank(query, first_stage(store), store)
    assert store.loads == [] and again.ids.tolist() == out.ids.tolist()   # from the cache


def test_learned_weights_load_from_a_local_folder(
    tmp_path: Path, random_disk: learned_features.DiskLightGlue
) -> None:
    # Write the random models the way their authors publish them: DISK under "extractor",
    # LightGlue with the original (pre-kornia) layer names.
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"extractor": random_disk.disk.state_dict()}, folder / "disk.pth")
    original = {re.sub(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.", r"\2.\1.", key): value
                for key, value in random_disk.glue.state_dict().items()}
    assert any(k.startswith("self_attn.0.") for k in original)
    torch.save(original, folder / "disk_lightglue.pth")

    loaded = learned_features.DiskLightGlue(str(folder), "cpu")
    image = Image.open(STRECHA / "castle-P30" / "0000.jpg").convert("RGB").resize((160, 107))
    p0, d0 = random_disk.extract(image, 64)
    p1, d1 = loaded.extract(image, 64)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(d0, d1)
    size = np.array([160.0, 107.0], np.float32)
    np.testing.assert_array_equal(random_disk.match(p0, d0, size, p0[::-1], d0[::-1], size),
                                  loaded.match(p0, d0, size, p0[::-1], d0[::-1], size))
    assert learned_features.weights_identity(str(folder)) != "random"

    (folder / "disk_lightglue.pth").unlink()
    with pytest.raises(FileNotFoundError, match="disk_lightglue.pth"):
        learned_features.DiskLightGlue(str(folder), "cpu")


def test_missing_kornia_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(itm_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kornia" else real(name, *a))
    assert not learned_features.available()
    assert SpatialLearned().missing() == ["kornia"] and Spatial().missing() == []
    with pytest.raises(MissingExtra, match=r"spatial-learned reranker needs kornia.*rerank-learned"):
        learned_features.DiskLightGlue("random", "cpu")
