"""The search page in a real browser: headless Chromium (Debian's) against a live server.

Some tests save a screenshot into docs/screenshots/ (the README's pictures); every test
leaves one of its end state in test-artifacts/.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from conftest import served
from PIL import Image

from loupe.library import Library
from loupe.server import create_app

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("LOUPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
TOKEN = "browser-test-token"
TIMEOUT_MS = 15_000


def make_image(path: Path, seed: int, size: tuple[int, int] = (160, 120)) -> Path:
    rng = np.random.default_rng(seed)
    hue = rng.random(3) * 255
    blocks = np.clip(hue + (rng.random((6, 8, 3)) - 0.5) * 160, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blocks).resize(size, Image.NEAREST).save(path)
    return path


WIDE = "trips/img39.png"   # the one landscape photo of 16:9, large enough to need shrinking


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("serve-browser") / "photos"
    for i in range(40):
        rel = f"{'trips' if i % 2 else 'home'}/img{i:02d}.{'jpg' if i % 3 else 'png'}"
        make_image(root / rel, i, (1600, 900) if rel == WIDE else (160, 120))
    lib = Library.open(root / ".loupe", model="loupe-tiny:random", device="cpu")
    lib.index()
    app = create_app(lib, TOKEN, allowed_hosts=["127.0.0.1"])
    with served(app) as url:
        yield SimpleNamespace(url=url, root=root, lib=lib)
    lib.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need it. Install Debian's "
                    "package (`apt-get install chromium`; .ci/run does) or point LOUPE_CHROMIUM at one.",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, request):
    # Short enough that one page of results (30) does not reach the infinite-scroll margin.
    context = browser.new_context(viewport={"width": 1200, "height": 600})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    console_errors: list[str] = []
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    pg.goto(server.url + "/")
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert console_errors == [], console_errors  # no uncaught JS errors on the page


def result_paths(pg) -> list[str]:
    return pg.locator("#results li img").evaluate_all("els => els.map(e => e.alt)")


def test_text_query_shows_results_and_status(page, server):
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_contain_text("40 images searchable")
    page.keyboard.press("/")  # the shortcut focuses the search box
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("a red bicycle")
    page.keyboard.press("Enter")
    expect(page.locator("#results li")).to_have_count(30)
    expect(page.locator("#summary")).to_contain_text("results for “a red bicycle”")
    first = page.locator("#results li img").first
    expect(first).to_have_attribute("alt", server.lib.search("a red bicycle", k=1)[0].meta["rel_path"])
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].slice(0, 6)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    # the next page comes by scrolling (or by the Load more button)
    assert page.evaluate("() => document.getElementById('sentinel').getBoundingClientRect().top"
                         " - innerHeight") > 400
    expect(page.locator("#results li")).to_have_count(30)
    page.locator("#sentinel").scroll_into_view_if_needed()
    expect(page.locator("#results li")).to_have_count(40)
    expect(page.locator("#more")).to_be_hidden()
    assert len(set(result_paths(page))) == 40


def test_filters_narrow_the_results(page):
    from playwright.sync_api import expect

    page.fill("#q", "anything")
    page.press("#q", "Enter")
    expect(page.locator("#results li")).to_have_count(30)
    page.click("#filters summary")
    page.fill("#f-folder", "trips")
    page.select_option("#f-type", "png")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#results li")).to_have_count(7)  # odd i below 40 with i % 3 == 0
    assert all(p.startswith("trips/") and p.endswith(".png") for p in result_paths(page))
    page.select_option("#f-rerank", "superglobal")
    with page.expect_response(lambda r: "rerank=superglobal" in r.url and r.status == 200):
        page.click("#filter-form button[type=submit]")
    expect(page.locator("#results li")).to_have_count(7)


def test_chosen_image_finds_itself_first(page, server):
    from playwright.sync_api import expect

    target = server.root / "trips" / "img07.jpg"
    page.set_input_files("#file", str(target))
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("#results li").first.locator("img")).to_have_attribute("alt", "trips/img07.jpg")
    expect(page.locator("#results li .score").first).to_contain_text("1.000")


def test_dropped_image_finds_itself_then_this_but_text(page, server):
    from playwright.sync_api import expect

    data = base64.b64encode((server.root / "home" / "img12.png").read_bytes()).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""", data)
    expect(page.locator("#results li").first.locator("img")).to_have_attribute("alt", "home/img12.png")
    expect(page.locator("#dropzone")).to_be_hidden()
    expect(page.locator("#query-preview")).to_have_attribute("alt", "Your query image: dropped.png")

    # "this, but ...": all weight on the text gives the text query's ranking
    page.fill("#edit", "at night")
    page.locator("#weight").fill("0")
    expect(page.locator("#weight-out")).to_have_text("0.00")
    page.press("#edit", "Enter")
    expected = server.lib.search("at night", k=1)[0].meta["rel_path"]
    expect(page.locator("#results li").first.locator("img")).to_have_attribute("alt", expected)
    page.click("#clear-image")
    expect(page.locator("#query-image")).to_be_hidden()


def test_pasted_image_finds_itself(page, server):
    from playwright.sync_api import expect

    data = base64.b64encode((server.root / "trips" / "img21.png").read_bytes()).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "clipboard.png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
        }""", data)
    expect(page.locator("#results li").first.locator("img")).to_have_attribute("alt", "trips/img21.png")


def test_open_result_then_more_like_this(page, server):
    from playwright.sync_api import expect

    page.fill("#q", "a lighthouse")
    page.press("#q", "Enter")
    first = page.locator("#results li button").first
    expect(first).to_be_visible()
    opened = first.locator("img").get_attribute("alt")
    first.focus()
    page.keyboard.press("Enter")  # keyboard opens the large view
    dialog = page.locator("#viewer")
    expect(dialog).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text(opened.split("/")[-1])
    expect(page.locator("#viewer-meta")).to_contain_text("160 × 120")
    expect(page.locator("#more-like")).to_be_focused()
    page.wait_for_function("() => document.getElementById('viewer-img').naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"))

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(first).to_be_focused()  # focus returns to the result that opened it
    first.click()
    page.click("#more-like")
    expect(dialog).to_be_hidden()
    image_id = server.lib.catalog.id_of_path(opened)
    expected = [h.meta["rel_path"] for h in server.lib.search(like=image_id, k=30)]
    expect(page.locator("#results li")).to_have_count(30)
    assert result_paths(page) == expected and opened not in expected
    expect(page.locator("#query-preview")).to_have_attribute("alt", f"Query image: {opened}")


def test_bad_upload_shows_a_readable_error(page, tmp_path):
    from playwright.sync_api import expect

    bogus = tmp_path / "notes.jpg"
    bogus.write_text("these are my notes, not a photo")
    page.set_input_files("#file", str(bogus))
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("not an image")
    expect(page.locator("#results li")).to_have_count(0)
    expect(page.locator("#query-image")).to_be_hidden()  # the unusable file leaves the query
    # and the page still works: the next search clears the error
    page.fill("#q", "a harbour")
    page.press("#q", "Enter")
    expect(page.locator("#results li")).to_have_count(30)
    expect(alert).to_be_hidden()


def test_reindex_needs_the_token_and_reports_progress(page, server):
    from playwright.sync_api import expect

    page.click("#admin summary")
    page.fill("#token", "wrong")
    page.click("#reindex")
    expect(page.get_by_role("alert")).to_contain_text("admin token")
    make_image(server.root / "trips" / "new.jpg", 1234)
    page.fill("#token", TOKEN)
    page.click("#reindex")
    expect(page.locator("#status")).to_contain_text("41 images searchable")
    expect(page.locator("#status")).to_contain_text("1 added")
    expect(page.get_by_role("alert")).to_be_hidden()


def test_phone_sized_screen(browser, server):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url + "/")
    pg.fill("#q", "a beach")
    pg.press("#q", "Enter")
    expect(pg.locator("#results li")).to_have_count(30)
    # nothing overflows sideways, and tiles sit at least three to a row
    assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
    boxes = [pg.locator("#results li").nth(i).bounding_box() for i in range(3)]
    assert len({round(b["y"]) for b in boxes}) == 1 and boxes[2]["x"] + boxes[2]["width"] <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "phone.png"))
    context.close()


# --- the address, the search box, the cards, the large view, the API docs -----------------------
def query_of(pg) -> dict[str, list[str]]:
    return parse_qs(urlsplit(pg.url).query)


def shoot(pg, name: str, **kwargs) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / name), **kwargs)


def test_address_keeps_query_and_filters_for_reload_and_back(page):
    from playwright.sync_api import expect

    page.fill("#q", "a red bicycle")
    page.press("#q", "Enter")
    expect(page.locator("#results li")).to_have_count(30)
    assert query_of(page) == {"q": ["a red bicycle"]}
    unfiltered = result_paths(page)

    page.click("#filters summary")
    page.fill("#f-folder", "trips")
    page.select_option("#f-type", "png")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#results li")).to_have_count(7)
    assert query_of(page) == {"q": ["a red bicycle"], "folder": ["trips"], "type": ["png"]}
    filtered = result_paths(page)

    page.reload()  # as a bookmark would: the query, the filters and the results come back
    expect(page.locator("#results li")).to_have_count(7)
    expect(page.locator("#q")).to_have_value("a red bicycle")
    expect(page.locator("#f-folder")).to_have_value("trips")
    expect(page.locator("#f-type")).to_have_value("png")
    assert result_paths(page) == filtered
    page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shoot(page, "address-restored.png")

    page.go_back()  # the search before the filters
    expect(page.locator("#f-folder")).to_have_value("")
    expect(page.locator("#results li")).to_have_count(30)
    assert result_paths(page) == unfiltered and query_of(page) == {"q": ["a red bicycle"]}
    page.go_back()  # the empty page it started on
    expect(page.locator("#results li")).to_have_count(0)
    expect(page.locator("#q")).to_have_value("")
    page.go_forward()
    expect(page.locator("#q")).to_have_value("a red bicycle")
    expect(page.locator("#results li")).to_have_count(30)


def test_more_like_this_is_in_the_address_and_in_the_search_box(page, server):
    from playwright.sync_api import expect

    page.fill("#q", "a lighthouse")
    page.press("#q", "Enter")
    first = page.locator("#results li button").first
    opened = first.locator("img").get_attribute("alt")
    first.click()
    page.click("#more-like")
    image_id = server.lib.catalog.id_of_path(opened)
    expected = [h.meta["rel_path"] for h in server.lib.search(like=image_id, k=30)]
    expect(page.locator("#results li")).to_have_count(30)
    assert query_of(page) == {"like": [str(image_id)]}
    # the box says what is searched now: not the old text
    expect(page.locator("#q")).to_have_value("")
    expect(page.locator("#q")).to_have_attribute("placeholder", f"More like {opened}: type here "
                                                 "to search by text instead")
    expect(page.locator("#summary")).to_contain_text(f"images like {opened}")
    shoot(page, "more-like-this.png")

    page.reload()
    expect(page.locator("#query-preview")).to_have_attribute("alt", f"Query image: {opened}")
    expect(page.locator("#results li")).to_have_count(30)
    assert result_paths(page) == expected
    page.go_back()
    expect(page.locator("#q")).to_have_value("a lighthouse")
    expect(page.locator("#query-image")).to_be_hidden()
    expect(page.locator("#results li").first.locator("img")).to_have_attribute("alt", opened)


def test_image_query_clears_the_box_and_says_it_cannot_be_bookmarked(page, server):
    from playwright.sync_api import expect

    page.fill("#q", "a harbour")
    page.press("#q", "Enter")
    expect(page.locator("#results li")).to_have_count(30)
    page.set_input_files("#file", str(server.root / "trips" / "img07.jpg"))
    first = page.locator("#results li").first.locator("img")
    expect(first).to_have_attribute("alt", "trips/img07.jpg")
    expect(page.locator("#q")).to_have_value("")
    expect(page.locator("#q")).to_have_attribute(
        "placeholder", "Searching by your image (img07.jpg): type here to search by text instead")
    expect(page.locator("#bookmark-note")).to_be_visible()
    page.fill("#edit", "at night")
    page.press("#edit", "Enter")
    expect(page.locator("#summary")).to_contain_text("your image + “at night”")
    assert query_of(page) == {"image": ["upload"], "edit": ["at night"], "weight": ["0.5"]}
    shoot(page, "image-query.png")

    # Back and Forward within the tab find the image again: each search is one step
    page.go_back()
    expect(page.locator("#edit")).to_have_value("")
    expect(page.locator("#query-preview")).to_have_attribute("alt", "Your query image: img07.jpg")
    expect(first).to_have_attribute("alt", "trips/img07.jpg")
    page.go_back()
    expect(page.locator("#q")).to_have_value("a harbour")
    expect(page.locator("#query-image")).to_be_hidden()
    page.go_forward()
    page.go_forward()
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("#edit")).to_have_value("at night")
    expect(page.locator("#summary")).to_contain_text("your image + “at night”")

    # a reload cannot: the page says so, and keeps the edit text for the image dropped again
    page.reload()
    expect(page.locator("#summary")).to_contain_text("image queries can't be bookmarked")
    expect(page.locator("#results li")).to_have_count(0)
    page.set_input_files("#file", str(server.root / "trips" / "img07.jpg"))
    expect(page.locator("#edit")).to_have_value("at night")
    expect(page.locator("#results li").first).to_be_visible()


def test_cards_show_file_names(page, server):
    from playwright.sync_api import expect

    page.fill("#q", "a beach")
    page.press("#q", "Enter")
    expect(page.locator("#results li")).to_have_count(30)
    names = page.locator("#results li .name")
    expect(names).to_have_count(30)
    paths = result_paths(page)
    assert names.all_inner_texts() == [p.split("/")[-1] for p in paths]
    assert [names.nth(i).get_attribute("title") for i in range(3)] == paths[:3]
    for i in range(3):  # on the card, not spilling out of it
        card, name = page.locator("#results li").nth(i).bounding_box(), names.nth(i).bounding_box()
        assert card["x"] <= name["x"] and name["x"] + name["width"] <= card["x"] + card["width"]
        assert card["y"] <= name["y"] and name["y"] + name["height"] <= card["y"] + card["height"]
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].slice(0, 12)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shoot(page, "results-with-names.png")


def inside(box: dict, width: int, height: int) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width \
        and box["y"] + box["height"] <= height


def test_large_view_fits_a_landscape_photo(browser, server):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server.url + "/?q=anything&folder=trips&type=png")  # a bookmarked search
    expect(pg.locator("#results li")).to_have_count(7)
    pg.locator(f'#results li img[alt="{WIDE}"]').click()
    expect(pg.locator("#viewer")).to_be_visible()
    pg.wait_for_function("() => document.getElementById('viewer-img').naturalWidth > 0")
    expect(pg.locator("#viewer-meta")).to_contain_text("1600 × 900")

    buttons = ("#more-like", "#viewer-original", "#viewer-close")
    image = pg.locator("#viewer-img").bounding_box()
    for sel in (*buttons, "#viewer-img"):
        box = pg.locator(sel).bounding_box()
        assert inside(box, 1280, 900), (sel, box)
    # the whole photo, large and undistorted, with nothing to scroll in the dialog
    assert image["width"] >= 800 and abs(image["width"] / image["height"] - 16 / 9) < 0.02, image
    assert pg.evaluate("() => { const d = document.getElementById('viewer');"
                       " return d.scrollHeight <= d.clientHeight; }")
    shoot(pg, "large-view-landscape.png")

    pg.set_viewport_size({"width": 390, "height": 844})  # a phone: picture above, buttons below
    for sel in (*buttons, "#viewer-img"):
        box = pg.locator(sel).bounding_box()
        assert inside(box, 390, 844), (sel, box)
    shoot(pg, "large-view-phone.png")
    context.close()
    assert errors == [], errors


def test_api_docs_come_from_this_server(browser, server):
    from playwright.sync_api import expect

    from loupe.server.app import _swagger_assets

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []

    def only_here(route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:  # offline: anything from elsewhere would fail to load
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(str(exc)))
    pg.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    pg.goto(server.url + "/api/docs")
    if _swagger_assets() is not None:
        expect(pg.locator("#swagger-ui .opblock").first).to_be_visible()
        expect(pg.locator("#swagger-ui")).to_contain_text("/api/search/image")
        assert pg.locator("#swagger-ui .opblock").count() >= 9
    else:  # without the Swagger UI package: a plain list of the endpoints
        expect(pg.locator("li", has_text="/api/search/image")).to_be_visible()
    shoot(pg, "api-docs.png")
    context.close()
    assert elsewhere == [] and problems == [], (elsewhere, problems)


def test_a_page_elsewhere_cannot_post_to_the_server(browser, server):
    """The classic cross-site form post, from a page on another origin of this machine:
    an auto-submitted multipart form carrying an image, which needs no CORS preflight."""
    elsewhere = "http://localhost:48123/"  # answered by Playwright, never contacted
    context = browser.new_context()
    context.route(elsewhere + "**", lambda route: route.fulfill(
        content_type="text/html", body="<!doctype html><title>another site</title><p>hello"))
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(elsewhere + "page")
    data = base64.b64encode((server.root / "home" / "img12.png").read_bytes()).decode()
    target = server.url + "/api/search/image"
    with pg.expect_response(lambda r: r.url.startswith(target)) as answer:
        pg.evaluate(
            """([url, b64]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const form = Object.assign(document.createElement("form"),
                    { method: "post", enctype: "multipart/form-data", action: url });
                const input = Object.assign(document.createElement("input"), { type: "file", name: "image" });
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], "x.png", { type: "image/png" }));
                input.files = dt.files;
                form.append(input);
                document.body.append(form);
                form.submit();
            }""", [target, data])
    response = answer.value
    assert response.status == 403
    assert "cross-site request refused" in response.json()["error"]
    context.close()
