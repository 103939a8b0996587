"""`loupe serve` as the weak point it must not be: cross-site writes, decompression bombs,
thin images, parallel decodes, corrupt and replaced files, a bounded thumbnail cache, and
a busy port. Each test reproduces one hole; all run on loopback, in-process, in seconds."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import cli
from fastapi.testclient import TestClient
from PIL import Image, ImageFile, features

from loupe.library import Library
from loupe.server import create_app, thumbs
from loupe.storage.catalog import Catalog

MODEL = "loupe-tiny:random"
TOKEN = "hardening-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- pictures, good and bad -----------------------------------------------------------------------
def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.NEAREST)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def solid(colour: str, size: tuple[int, int] = (96, 72), fmt: str = "PNG") -> bytes:
    return encoded(Image.new("RGB", size, colour), fmt)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(w: int, h: int) -> bytes:
    """A 74-byte PNG whose header claims w x h RGB pixels (w*h*3 bytes once decoded)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))


def gif_declaring(w: int, h: int) -> bytes:
    """A 35-byte GIF whose screen and only frame claim w x h pixels."""
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x4c\x01\x00" + b";")


AVIF_HEADER = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"


def avif_with_corrupt_pixels() -> bytes | None:
    """A real AVIF whose boxes are intact and whose coded pixels are garbage: the container
    opens, the AV1 decoder fails (with RuntimeError in Pillow's plugin)."""
    if not features.check("avif"):
        return None
    data = encoded(picture(7, (320, 240)), "AVIF")
    start = data.find(b"mdat") + 4
    garbage = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8)
    return data[:start] + garbage.tobytes()


def error_of(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    message = resp.json()["error"]
    assert isinstance(message, str) and message
    return message


def upload(client: TestClient, data: bytes, headers: dict | None = None, **params):
    return client.post("/api/search/image", files={"image": ("q.png", data, "image/png")},
                       params={"k": 3, **params}, headers=headers or {})


@pytest.fixture
def decodes_counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes pixels of, while the test runs."""
    seen: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        if self.tile:  # pixels still to decode (a loaded image has none left)
            seen.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


# --- the library ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("serve-hardening") / "photos"
    files = {
        **{f"a/p{i}.jpg": encoded(picture(i), "JPEG") for i in range(4)},
        "thin/tall.png": encoded(Image.new("RGB", (1, 200_000), "gray"), "PNG"),
        "thin/wide.png": encoded(Image.new("RGB", (200_000, 1), (90, 60, 30)), "PNG"),
        "big/photo.jpg": encoded(picture(20, (2048, 1536)), "JPEG", quality=80),
        "big/drawing.png": encoded(picture(21, (2048, 1536)), "PNG"),
        "copies/one.png": solid("red"), "copies/two.png": solid("red"),
        "change/swap.png": solid("red"), "change/text.png": solid("green"),
        "change/avif.png": solid("yellow"), "change/empty.png": solid("purple"),
        "change/folder.png": solid("orange"), "change/bomb.png": solid("navy"),
        "change/doomed.png": solid("teal"),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    lib = Library.open(root / ".loupe", model=MODEL, device="cpu")
    lib.index()
    ids = {rel: lib.catalog.id_of_path(rel) for rel in files}
    assert None not in ids.values(), ids
    app = create_app(lib, TOKEN)
    yield SimpleNamespace(root=root, lib=lib, app=app, client=TestClient(app), ids=ids)
    lib.close()


# --- cross-site writes ----------------------------------------------------------------------------
REFUSED = [
    pytest.param({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                 id="cross-site"),
    pytest.param({"Origin": "https://evil.example"}, id="origin-only"),
    pytest.param({"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"},
                 id="other-port"),
    pytest.param({"Origin": "null"}, id="null-origin"),
    pytest.param({"Origin": "http://testserver.evil.example"}, id="lookalike-origin"),
    pytest.param({"Origin": "http://testserver:8080"}, id="other-port-origin-only"),
]


@pytest.mark.parametrize("headers", REFUSED)
def test_cross_site_writes_are_refused(env, headers):
    image = (env.root / "a/p0.jpg").read_bytes()
    assert "cross-site request refused" in error_of(upload(env.client, image, headers), 403)
    # even with the admin token (a page cannot read it, but a stolen one must not help either)
    r = env.client.post("/api/index", headers={**AUTH, **headers})
    assert "cross-site request refused" in error_of(r, 403)
    assert env.app.state.indexer.status()["state"] == "idle"
    # refused before the body is read: an oversized body gets the 403, not the 413
    big = env.client.post("/api/search/image", content=b"x" * (21 * 2**20),
                          headers={**headers, "Content-Type": "application/octet-stream"})
    error_of(big, 403)


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="script-no-browser-headers"),
    pytest.param({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, id="the-page"),
    pytest.param({"Origin": "http://testserver"}, id="same-origin-older-browser"),
    pytest.param({"Origin": "http://elsewhere.example", "Sec-Fetch-Site": "same-origin"},
                 id="behind-a-proxy-rewriting-host"),
])
def test_same_origin_and_scripted_writes_pass(env, headers):
    r = upload(env.client, (env.root / "a/p1.jpg").read_bytes(), headers)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["rel_path"] == "a/p1.jpg"
    # past the guard to the endpoint itself: nothing to stop
    stop = env.client.post("/api/index/stop", headers={**AUTH, **headers})
    assert "no re-index" in error_of(stop, 409)


def test_cross_site_reads_still_work(env):
    """Reading is not refused: a foreign page cannot read the answers (no CORS), and an
    <img> of a thumbnail on another site is the user's own business."""
    headers = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert env.client.get("/api/search", params={"q": "x"}, headers=headers).status_code == 200
    health = env.client.get("/api/health", headers=headers)
    assert "access-control-allow-origin" not in health.headers


# --- bombs and thin images ------------------------------------------------------------------------
@pytest.mark.parametrize("bomb", [png_declaring(12000, 12000), gif_declaring(12000, 12000)],
                         ids=["png", "gif"])
def test_decompression_bomb_upload_is_refused_unread(env, bomb, decodes_counted):
    assert len(bomb) < 100
    assert "too many pixels: 12000x12000" in error_of(upload(env.client, bomb), 413)
    assert decodes_counted == []  # refused from the header: not one pixel decoded


def test_thumbnail_of_a_file_replaced_by_a_bomb_is_refused_unread(env, decodes_counted):
    i = env.ids["change/bomb.png"]
    (env.root / "change/bomb.png").write_bytes(gif_declaring(12000, 12000))
    for size in thumbs.SIZES:
        r = env.client.get(f"/api/images/{i}/thumb", params={"size": size})
        assert "too many pixels: 12000x12000" in error_of(r, 413)
    assert decodes_counted == []


def test_thumbnails_obey_the_upload_pixel_limit(env, decodes_counted):
    """Not the indexer's 150 MP: the server decodes no more than it would for an upload.
    A JPEG counts at the scale it is decoded at: 1/4 (512 x 384) for a 256 px thumbnail of
    2048 x 1536, but full size for a 1024 px one."""
    client = TestClient(create_app(env.lib, TOKEN, max_upload_pixels=1_000_000))
    png, jpeg = env.ids["big/drawing.png"], env.ids["big/photo.jpg"]
    for size in thumbs.SIZES:
        r = client.get(f"/api/images/{png}/thumb", params={"size": size})
        assert "too many pixels: 2048x1536 > limit 1000000" in error_of(r, 413)
    r = client.get(f"/api/images/{jpeg}/thumb", params={"size": 1024})
    assert "too many pixels: 2048x1536 > limit 1000000" in error_of(r, 413)
    assert decodes_counted == []
    r = client.get(f"/api/images/{jpeg}/thumb", params={"size": 256})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (256, 192)
    assert decodes_counted == [(512, 384)]
    # with the default limit (50 MP), both sizes are made
    assert env.client.get(f"/api/images/{png}/thumb", params={"size": 1024}).status_code == 200


@pytest.fixture
def resizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    seen = []
    real = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        seen.append((self.size, tuple(size)))
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return seen


@pytest.mark.parametrize("rel", ["thin/tall.png", "thin/wide.png"])
def test_thin_images_cost_bounded_work(env, rel, resizes):
    data = (env.root / rel).read_bytes()
    r = upload(env.client, data)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["rel_path"] == rel  # still finds itself
    i = env.ids[rel]
    for size in thumbs.SIZES:
        t = env.client.get(f"/api/images/{i}/thumb", params={"size": size})
        assert t.status_code == 200, t.text
        w, h = Image.open(io.BytesIO(t.content)).size
        assert max(w, h) / min(w, h) <= thumbs.MAX_ASPECT  # cropped, not a 1 x 256 line
    # nothing resized from or to a huge picture (shortest side to 224 would be 224 x 44.8M)
    assert resizes and all(a * b <= 4_000_000 and c * d <= 4_000_000
                           for (a, b), (c, d) in resizes), max(resizes)


def test_parallel_decodes_are_bounded(env, monkeypatch):
    app = create_app(env.lib, TOKEN, max_decodes=2)
    client = TestClient(app)
    lock = threading.Lock()
    active, peak = 0, 0
    real = thumbs.decode

    def tracked(*args, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)  # long enough for the others to pile up behind the slots
            return real(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(thumbs, "decode", tracked)
    images = [(env.root / f"a/p{i}.jpg").read_bytes() for i in range(4)]
    thumb_urls = [f"/api/images/{env.ids[f'a/p{i}.jpg']}/thumb?size=1024" for i in range(4)]

    def request(n: int) -> int:  # uploads and thumbnails not made yet, all at once
        if n % 2:
            return upload(client, images[n % 4]).status_code
        return client.get(thumb_urls[n // 2 % 4]).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(request, range(8)))
    assert codes == [200] * 8
    assert 1 <= peak <= 2, peak


# --- corrupt and replaced files -------------------------------------------------------------------
def test_corrupt_avif_upload_is_a_4xx_with_a_reason(env):
    garbage = AVIF_HEADER + np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    r = upload(env.client, garbage)
    assert r.status_code in (400, 415) and "image" in error_of(r, r.status_code)
    corrupt = avif_with_corrupt_pixels()
    if corrupt is None:
        pytest.skip("this Pillow has no AVIF codec: the decoder-failure half cannot run")
    assert "corrupt or truncated image" in error_of(upload(env.client, corrupt), 400)


def test_thumbnails_of_files_broken_since_indexing_are_4xx(env):
    def thumb(rel: str):
        return env.client.get(f"/api/images/{env.ids[rel]}/thumb", params={"size": 1024})

    (env.root / "change/text.png").write_text("no longer a picture")
    assert "not an image" in error_of(thumb("change/text.png"), 415)
    (env.root / "change/empty.png").write_bytes(b"")
    assert "empty" in error_of(thumb("change/empty.png"), 400)
    (env.root / "change/folder.png").unlink()
    (env.root / "change/folder.png").mkdir()
    assert "no longer on disk" in error_of(thumb("change/folder.png"), 404)
    corrupt = avif_with_corrupt_pixels()
    if corrupt is not None:
        (env.root / "change/avif.png").write_bytes(corrupt)
        assert "corrupt or truncated image" in error_of(thumb("change/avif.png"), 400)


def centre_colour(jpeg: bytes) -> tuple[int, ...]:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return im.getpixel((im.width // 2, im.height // 2))


def test_replaced_file_is_never_served_from_a_stale_thumbnail(env):
    i, path = env.ids["change/swap.png"], env.root / "change/swap.png"
    old = env.client.get(f"/api/images/{i}").json()
    first = env.client.get(old["thumb"])  # the URL a search result gives: versioned
    assert first.status_code == 200 and "immutable" in first.headers["cache-control"]
    assert centre_colour(first.content)[0] > 200  # red
    original = env.client.get(f"/api/images/{i}/file")

    path.write_bytes(solid("blue"))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a later edit, whatever the clock
    again = env.client.get(old["thumb"], headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 200, again.status_code  # not a 304 for the old picture
    assert centre_colour(again.content)[2] > 200  # blue: what the file holds now
    assert again.headers["etag"] != first.headers["etag"]
    assert "immutable" not in again.headers["cache-control"]  # the URL names the old content
    # the original too: a new validator, so no browser keeps the old bytes
    fresh = env.client.get(f"/api/images/{i}/file",
                           headers={"If-None-Match": original.headers["etag"]})
    assert fresh.status_code == 200 and fresh.content == path.read_bytes()
    assert env.client.get(f"/api/images/{i}/thumb", headers={"If-None-Match": again.headers["etag"]}
                          ).status_code == 304


def test_thumbnails_are_filed_by_the_content_rendered(env):
    """Two files with one content share a thumbnail; when one of them changes before its
    thumbnail is made, the new picture must not be filed under the shared hash."""
    one, two = env.ids["copies/one.png"], env.ids["copies/two.png"]
    assert env.lib.record(one)["sha256"] == env.lib.record(two)["sha256"]
    path = env.root / "copies/one.png"
    path.write_bytes(solid("blue"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert centre_colour(env.client.get(f"/api/images/{one}/thumb").content)[2] > 200  # blue
    assert centre_colour(env.client.get(f"/api/images/{two}/thumb").content)[0] > 200  # red


def test_an_id_whose_row_was_deleted_is_404_everywhere(env):
    """Deleted from the catalog (a concurrent index run) while still in the snapshot."""
    i = env.ids["change/doomed.png"]
    assert env.lib.is_searchable(i)
    with env.lib.catalog.transaction() as db:
        Catalog.delete_paths(db, ["change/doomed.png"])
    assert env.lib.is_searchable(i)  # the snapshot has not moved on
    r = env.client.get("/api/search", params={"q": "teal", "k": 100})
    assert r.status_code == 200 and i not in [h["id"] for h in r.json()["results"]]
    for url in (f"/api/images/{i}", f"/api/images/{i}/thumb", f"/api/images/{i}/file"):
        assert f"no image with id {i}" in error_of(env.client.get(url), 404)
    like = env.client.get("/api/search", params={"like": i})
    assert f"no image with id {i}" in error_of(like, 404)


# --- the thumbnail cache's budget -----------------------------------------------------------------
def test_thumbnail_cache_stays_within_its_budget_least_recently_used_first(tmp_path):
    cache_dir = tmp_path / "thumbs"
    pictures = [encoded(picture(100 + n, (300, 200)), "PNG") for n in range(10)]
    probe = thumbs.ThumbCache(tmp_path / "probe", max_pixels=10**6, slots=threading.Semaphore(1))
    sizes = [len(probe.render(p, 256)) for p in pictures]
    budget = sum(sizes[:3]) + min(sizes) // 2  # three fit; a fourth does not
    cache = thumbs.ThumbCache(cache_dir, max_pixels=10**6, slots=threading.Semaphore(1),
                              budget_bytes=budget)

    def get(n: int) -> tuple[str, bytes]:
        import hashlib

        content = thumbs.Content(hashlib.sha256(pictures[n]).hexdigest(), True, pictures[n])
        return cache.get(content, Path("unused"), 256)

    def stored() -> int:
        return sum(f.stat().st_size for f in cache_dir.glob("*/*.jpg"))

    made = [get(n) for n in range(3)]
    paths = [cache.path(sha, 256) for sha, _ in made]
    assert stored() == sum(sizes[:3])
    past = time.time() - 3600
    for n, path in enumerate(paths):  # used an hour ago, in this order
        os.utime(path, (past + n, path.stat().st_mtime))
    assert get(0) == made[0]  # a hit: picture 0 becomes the most recently used
    get(3)  # over budget: the least recently used go (1, then 2), not picture 0
    assert paths[0].is_file() and not paths[1].exists() and not paths[2].exists()
    for n in range(4, 10):
        get(n)
        assert stored() <= budget
    # a thumbnail evicted is made again, identical
    assert get(1) == made[1]


# --- `loupe serve` --------------------------------------------------------------------------------
def test_serve_on_a_busy_port_says_so_and_exits_2(env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", str(env.root / ".loupe"), "--port", str(port), "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: port {port} is in use: pass --port N"], lines
    assert "serving" not in result.output


def test_api_docs_are_served_from_this_server(env):
    from loupe.server.app import _swagger_assets

    r = env.client.get("/api/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "https://" not in r.text and "//cdn" not in r.text  # nothing from elsewhere
    if _swagger_assets() is None:
        assert "/api/search/image" in r.text  # the plain list of endpoints
        return
    assert "/api/docs/assets/swagger-ui-bundle.js" in r.text
    js = env.client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text[:5000]
    assert env.client.get("/api/docs/assets/swagger-ui.css").status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in csp and "unsafe-inline" not in csp.split("style-src")[0]
