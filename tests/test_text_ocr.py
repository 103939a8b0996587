"""The OCR engine: real RapidOCR models on real photos with rendered words; the registry."""

from __future__ import annotations

import builtins
import json

import pytest
from PIL import Image

from loupe.text import ocr, testset
from loupe.text.ocr import Word


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("rapidocr_onnxruntime", reason='needs the extra: pip install "loupe[ocr]"')
    return ocr.get_engine("rapidocr", threads=2, side=768)


@pytest.fixture(scope="module")
def fonts():
    return testset.find_fonts(limit=8)


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small


def test_reads_rendered_words_on_a_real_photo(engine, fonts, shared_data):
    photo = shared_data / "strecha" / "scenes" / "fountain-P11" / "0004.jpg"
    sample = testset.make_sample(photo, 7, fonts, n_lines=3, max_side=768, sizes=(28, 44),
                                 contrasts=("high",), upright=True)
    assert len(sample.words) >= 3
    words = engine.read(sample.image)
    assert all(isinstance(w, Word) and 0 <= w.confidence <= 1 for w in words)
    found = []
    for truth in sample.words:
        for w in words:
            if testset.normalise(w.text) == testset.normalise(truth.text):
                found.append(truth.text)
                # the word's own box, not its whole line's
                assert _overlap(w.box, truth.box) > 0.5, (w, truth)
                assert (w.box[2] - w.box[0]) < 1.6 * (truth.box[2] - truth.box[0]), (w, truth)
                break
    recall = len(found) / len(sample.words)
    assert recall >= 0.75, (sample.words, words)


def test_boxes_are_in_pixels_of_the_image_given(engine, fonts, shared_data):
    """A larger image than the engine's side: boxes come back in the caller's pixels."""
    photo = shared_data / "strecha" / "scenes" / "castle-P30" / "0003.jpg"
    sample = testset.make_sample(photo, 2, fonts, n_lines=1, max_side=1536, sizes=(70, 80),
                                 contrasts=("high",), upright=True)
    truth = sample.words[0]
    words = engine.read(sample.image)
    match = [w for w in words if testset.normalise(w.text) == testset.normalise(truth.text)]
    assert match, (truth, words)
    assert _overlap(match[0].box, truth.box) > 0.5
    assert any(_overlap(b, truth.box) > 0.5 for b in engine.detect(sample.image))


def test_gate_reads_big_text_and_skips_blank_images(engine, fonts, shared_data):
    gated = ocr.get_engine("rapidocr", threads=2, side=768, gate_side=512)
    assert gated.identity["options"]["gate_side"] == 512
    assert gated.key != engine.key
    photo = shared_data / "strecha" / "scenes" / "entry-P10" / "0002.jpg"
    sample = testset.make_sample(photo, 4, fonts, n_lines=1, max_side=768, sizes=(48, 56),
                                 contrasts=("high",), upright=True)
    wanted = {testset.normalise(w.text) for w in sample.words}
    assert wanted & {testset.normalise(w.text) for w in gated.read(sample.image)}
    assert gated.detect(Image.new("RGB", (640, 480), (200, 200, 200)), 512) == []
    assert gated.read(Image.new("RGB", (640, 480), (200, 200, 200))) == []


def test_text_free_photo_reads_nothing_confident(engine, shared_data):
    # the detector fires on this photo's masonry; the recogniser rejects what it finds there
    im = testset.load_photo(shared_data / "strecha" / "scenes" / "castle-P19" / "0000.jpg", 768)
    words = engine.read(im)
    assert len(words) <= 1 and all(w.confidence < 0.8 for w in words), words
    assert engine.read(Image.new("RGB", (300, 200), (90, 120, 200))) == []


def test_identity_names_engine_version_and_models(engine):
    ident = engine.identity
    assert ident["engine"] == "rapidocr"
    assert ident["version"].count(".") >= 1
    assert len(ident["models"]) >= 2 and all(len(d) == 16 for d in ident["models"].values())
    assert ident["options"]["side"] == 768
    other = dict(ident, options={**ident["options"], "side": 1536})
    assert ocr.identity_key(ident) != ocr.identity_key(other)
    assert ocr.identity_key(ident) == ocr.identity_key(json.loads(json.dumps(ident)))
    assert engine.key.startswith("rapidocr:")


def test_missing_extra_names_it(monkeypatch):
    real_import = builtins.__import__

    def no_rapidocr(name, *args, **kwargs):
        if name.startswith("rapidocr_onnxruntime"):
            raise ImportError("No module named 'rapidocr_onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rapidocr)
    with pytest.raises(ocr.OcrUnavailable, match=r'pip install "loupe-search\[ocr\]"'):
        ocr.get_engine("rapidocr")


def test_registry():
    with pytest.raises(ValueError, match="unknown OCR engine 'nope'.*rapidocr"):
        ocr.get_engine("nope")

    class Fixed:
        name = "fixed"
        identity = {"engine": "fixed", "version": "1"}

        def __init__(self, text="hi"):
            self.text = text

        def read(self, image):
            return [Word(self.text, (0, 0, 1, 1), 1.0)]

    ocr.register("fixed", Fixed)
    try:
        eng = ocr.get_engine("fixed", text="hello")
        assert isinstance(eng, ocr.OcrEngine)
        assert eng.read(None) == [Word("hello", (0, 0, 1, 1), 1.0)]
    finally:
        del ocr.ENGINES["fixed"]


def test_words_json_round_trip_and_scaling():
    words = [Word("Zürich", (1.26, 2.0, 30.5, 12.0), 0.98765), Word("2023", (40, 2, 60, 12), 0.5)]
    back = ocr.words_from_json(ocr.words_to_json(words))
    assert [w.text for w in back] == ["Zürich", "2023"]
    assert back[0].box == (1.3, 2.0, 30.5, 12.0)         # stored to a tenth of a pixel
    assert back[0].confidence == pytest.approx(0.9877, abs=1e-4)
    assert ocr.scale_words(words, 2.0)[1].box == (80, 4, 120, 24)
    assert ocr.scale_words(words, 2.0, 0.5)[1].box == (80, 1, 120, 6)
