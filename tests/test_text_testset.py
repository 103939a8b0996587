"""The labelled test-set generator: real photos, installed fonts, exact ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loupe.text import testset


@pytest.fixture(scope="module")
def fonts():
    return testset.find_fonts(limit=6)


@pytest.fixture(scope="module")
def photo(shared_data):
    return testset.photos(shared_data, ("strecha/scenes/castle-P19/*.jpg",))[0]


def test_fonts_come_from_installed_packages(fonts):
    assert fonts, "find_fonts returned nothing without raising"
    assert all(p.suffix.lower() in (".ttf", ".otf") and p.is_file() for p in fonts)


def test_no_fonts_fails_clearly(tmp_path):
    (tmp_path / "not-a-font.ttf").write_bytes(b"garbage")
    with pytest.raises(testset.NoFontsError, match="apt-get install fonts-"):
        testset.find_fonts([tmp_path])
    with pytest.raises(testset.NoFontsError):
        testset.build_testset([], n_text=1, n_plain=0, fonts=[])


def test_no_photos_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no photos"):
        testset.photos(tmp_path)


def test_sample_is_deterministic_and_truth_covers_all_ink(photo, fonts):
    a = testset.make_sample(photo, 11, fonts, n_lines=3, max_side=640)
    b = testset.make_sample(photo, 11, fonts, n_lines=3, max_side=640)
    c = testset.make_sample(photo, 12, fonts, n_lines=3, max_side=640)
    assert a.words == b.words
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.words != c.words
    assert len(a.lines) == 3 and a.has_text
    original = np.asarray(testset.load_photo(photo, 640)).astype(int)
    drawn = np.asarray(a.image).astype(int)
    changed = np.abs(drawn - original).max(axis=2) > 0
    inside = np.zeros_like(changed)
    h, w = changed.shape
    for word in a.words:
        x0, y0, x1, y1 = word.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert changed[int(y0):int(y1), int(x0):int(x1)].mean() > 0.02   # ink inside each box
        inside[max(0, int(y0) - 2):int(y1) + 2, max(0, int(x0) - 2):int(x1) + 2] = True
    # between the words of a phrase (the space) is outside every box but may hold antialiasing;
    # nothing else outside the boxes changed
    for line in {w.line for w in a.words}:
        boxes = [w.box for w in a.words if w.line == line]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        inside[max(0, int(y0) - 2):int(y1) + 2, max(0, int(x0) - 2):int(x1) + 2] = True
    assert not changed[~inside].any()


def test_text_free_sample_is_the_photo(photo, fonts):
    s = testset.make_sample(photo, 3, fonts, n_lines=0, max_side=512)
    assert s.words == [] and not s.has_text
    assert np.array_equal(np.asarray(s.image), np.asarray(testset.load_photo(photo, 512)))


def test_build_write_and_queries(shared_data, fonts, tmp_path):
    photos = testset.photos(shared_data, ("strecha/scenes/fountain-P11/*.jpg",))
    samples = testset.build_testset(photos, n_text=3, n_plain=2, seed=5, fonts=fonts,
                                    max_side=320, sizes=(14, 30))
    assert [s.has_text for s in samples] == [True, True, True, False, False]
    assert len({s.source for s in samples}) == 5            # distinct photos
    truth_file = testset.write_testset(samples, tmp_path)
    truth = json.loads(truth_file.read_text())
    assert [t["name"] for t in truth] == [s.name for s in samples]
    assert all((tmp_path / s.name).is_file() for s in samples)
    assert truth[0]["words"][0]["text"] == samples[0].words[0].text
    qrels = testset.queries(samples)
    for i, s in enumerate(samples):
        for w in s.words:
            assert i in qrels[testset.normalise(w.text)]
    assert all(not q.startswith('"') or " " in q for q in qrels)
