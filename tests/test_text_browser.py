"""The page outlines the words a text query matched, on the thumbnail and in the large view:
headless Chromium against a live server over a library indexed with real OCR.

Saves docs/screenshots/text-matches.png and text-matches-large.png (the README's pictures)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from conftest import TINY, served
from test_server_browser import SCREENSHOTS, TIMEOUT_MS, browser, make_image  # noqa: F401

from loupe import IndexOptions, Library
from loupe.server import create_app
from loupe.text import testset

pytestmark = pytest.mark.browser
pytest.importorskip("rapidocr_onnxruntime", reason='needs the extra: pip install "loupe-search[ocr]"')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_data) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("text-browser") / "photos"
    fonts = testset.find_fonts(limit=8)
    photo = shared_data / "strecha" / "scenes" / "fountain-P11" / "0004.jpg"
    sample = testset.make_sample(photo, 7, fonts, n_lines=3, max_side=768, sizes=(28, 44),
                                 contrasts=("high",), upright=True, name="walks/fountain.jpg")
    (root / "walks").mkdir(parents=True)
    sample.image.save(root / sample.name, quality=92)
    for i in range(8):
        make_image(root / "home" / f"img{i:02d}.jpg", i)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index(IndexOptions(ocr=True))
    app = create_app(lib, "text-browser-token", allowed_hosts=["127.0.0.1"])
    with served(app) as url:
        yield SimpleNamespace(url=url, root=root, lib=lib, sample=sample)
    lib.close()


def overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def test_matched_words_are_outlined_on_the_thumbnail_and_the_large_view(browser, server):  # noqa: F811
    from playwright.sync_api import expect

    # a word drawn on the photo that the engine read (the API says which, with its box)
    truth = next(w for w in server.sample.words
                 if server.lib.search(w.text.lower(), k=1, channels="text"))
    word = truth.text.lower()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server.url + "/")
    with pg.expect_response(lambda r: "/api/search?" in r.url) as answer:
        pg.fill("#q", word)
        pg.press("#q", "Enter")
    first = answer.value.json()["results"][0]
    assert first["rel_path"] == "walks/fountain.jpg"
    boxes = [w["box"] for w in first["why"]["words"]]
    assert boxes and overlap(boxes[0], truth.box) > 0.5            # the API gives the word's box
    assert first["why"]["fields"] == {"ocr": [word]}

    card = pg.locator("#results li").first
    expect(card.locator("img")).to_have_attribute("alt", "walks/fountain.jpg")
    expect(card.locator(".mark")).to_have_count(len(boxes))
    expect(card.locator(".matched")).to_have_text(f"{word} (in the image)")
    expect(pg.locator("#results li").nth(1).locator(".mark")).to_have_count(0)
    pg.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                         ".every(i => i.complete && i.naturalWidth > 0)")
    # on the square thumbnail (the photo's centre), the outline sits where the word is
    thumb = card.locator("img").bounding_box()
    side = min(first["width"], first["height"])
    dx, dy = (first["width"] - side) / 2, (first["height"] - side) / 2
    shown = card.locator(".mark").first.bounding_box()
    scale = thumb["width"] / side
    in_image = ((shown["x"] - thumb["x"]) / scale + dx, (shown["y"] - thumb["y"]) / scale + dy,
                (shown["x"] + shown["width"] - thumb["x"]) / scale + dx,
                (shown["y"] + shown["height"] - thumb["y"]) / scale + dy)
    assert overlap(in_image, truth.box) > 0.5, (in_image, truth.box)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / "text-matches.png"))

    card.locator("button.hit").click()
    expect(pg.locator("#viewer")).to_be_visible()
    pg.wait_for_function("() => document.getElementById('viewer-img').naturalWidth > 0")
    marks = pg.locator("#viewer-marks .mark")
    expect(marks).to_have_count(len(boxes))
    expect(pg.locator("#viewer-meta")).to_contain_text(f"{word} (in the image)")
    image = pg.locator("#viewer-img").bounding_box()
    shown = marks.first.bounding_box()
    sx, sy = image["width"] / first["width"], image["height"] / first["height"]
    in_image = ((shown["x"] - image["x"]) / sx, (shown["y"] - image["y"]) / sy,
                (shown["x"] + shown["width"] - image["x"]) / sx,
                (shown["y"] + shown["height"] - image["y"]) / sy)
    assert overlap(in_image, truth.box) > 0.5, (in_image, truth.box)
    pg.screenshot(path=str(SCREENSHOTS / "text-matches-large.png"))

    # words only: the file names and the words read, no vectors (set from the filters)
    pg.keyboard.press("Escape")
    pg.click("#filters summary")
    pg.select_option("#f-channels", "text")
    pg.click("#filter-form button[type=submit]")
    expect(pg.locator("#results li")).to_have_count(1)
    assert "channels=text" in pg.url
    context.close()
    assert errors == [], errors
