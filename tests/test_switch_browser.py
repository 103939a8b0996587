"""The page during a model switch: the status line shows the fill's progress, searches keep
answering, and the re-index button finishes the switch (the server's indexer carries it on)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from conftest import served
from test_server_browser import TIMEOUT_MS, TOKEN, browser, make_image  # noqa: F401 - fixture

from loupe import IndexOptions
from loupe.library import Library
from loupe.server import create_app
from loupe.switch.perturb import perturbed_copy

pytestmark = pytest.mark.browser


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def switching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import os

    os.environ["LOUPE_BRIDGE_SAMPLE"] = "12"
    base = tmp_path_factory.mktemp("serve-switch")
    root = base / "photos"
    for i in range(40):
        make_image(root / f"img{i:02d}.png", i)
    lib = Library.open(root / ".loupe", model="loupe-tiny:random", device="cpu")
    lib.index()
    weights = perturbed_copy("loupe-tiny:random", base / "perturbed.pt", 0.3)
    lib.switch_model("loupe-tiny", weights)

    def stop_at_16(done: int, total: int) -> None:
        if done >= 16:
            raise Stop

    with pytest.raises(Stop):
        lib.fill_switch(stop_at_16, IndexOptions(batch_size=8))
    app = create_app(lib, TOKEN, allowed_hosts=["127.0.0.1"])
    with served(app) as url:
        yield SimpleNamespace(url=url, root=root, lib=lib)
    lib.close()
    os.environ.pop("LOUPE_BRIDGE_SAMPLE", None)


def test_the_page_shows_the_switch_and_keeps_answering(browser, switching_server):  # noqa: F811
    from playwright.sync_api import expect

    srv = switching_server
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(srv.url + "/")
    status = page.locator("#status")
    expect(status).to_contain_text("switching to loupe-tiny: 16 of 40 images embedded")
    expect(status).to_contain_text("bridge")
    page.fill("#q", "a blue square")
    page.keyboard.press("Enter")
    expect(page.locator("#results li")).to_have_count(30)          # answered from both spaces
    # the re-index button carries the switch on in the server; the page follows it to the end
    page.click("#admin summary")
    page.fill("#token", TOKEN)
    page.click("#reindex")
    expect(status).not_to_contain_text("switching", timeout=120_000)
    expect(status).to_contain_text("40 images searchable")
    assert srv.lib.catalog.active_space() == 2 and srv.lib.switch_status() is None
    page.fill("#q", "a red square")
    page.keyboard.press("Enter")
    expect(page.locator("#summary")).to_contain_text("a red square")
    expect(page.locator("#results li")).to_have_count(30)          # now from the new space alone
    page.close()
    assert errors == []
