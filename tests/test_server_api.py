"""The REST API of `loupe serve`, through FastAPI's TestClient, on a small real library."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from loupe.core.config import IndexOptions
from loupe.library import Library
from loupe.server import create_app
from loupe.server.auth import TOKEN_FILENAME, load_or_create_token, token_matches
from loupe.storage.catalog import Catalog

MODEL = "loupe-tiny:random"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Y2020 = time.mktime((2020, 6, 1, 12, 0, 0, 0, 0, -1))
Y2023 = time.mktime((2023, 6, 1, 12, 0, 0, 0, 0, -1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image(path: Path, seed: int, size: tuple[int, int] = (96, 72), when: float | None = None) -> Path:
    """A distinct picture per seed: coloured blocks, so no two share a vector."""
    rng = np.random.default_rng(seed)
    blocks = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(blocks).resize(size, Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    if when is not None:
        os.utime(path, (when, when))
    return path


def jpeg_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("serve-api")
    root = base / "photos"
    for i in range(8):
        make_image(root / "a" / f"a{i}.jpg", seed=i, when=Y2020)
        make_image(root / "b" / f"b{i}.png", seed=100 + i, when=Y2023)
    make_image(root / "a" / "gone.jpg", seed=50, when=Y2020)
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    # A link inside the photo folder to a picture outside it: the scanner does not follow
    # it; a catalog row naming it (an older library, a tampered one) is refused by the server.
    secret = make_image(base / "outside" / "secret.jpg", seed=999)
    (root / "link.jpg").symlink_to(secret)
    lib = Library.open(root / ".loupe", model=MODEL, device="cpu")
    lib.index()
    ids = {rel: lib.catalog.id_of_path(rel) for rel in lib.catalog.files()}
    (root / "a" / "gone.jpg").unlink()  # deleted after indexing, before any re-index
    app = create_app(lib, TOKEN)
    client = TestClient(app)
    yield SimpleNamespace(base=base, root=root, lib=lib, app=app, client=client, ids=ids)
    lib.close()


def error_of(resp, status: int) -> str:
    """The response has this status and a readable JSON error; returns the message."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    message = resp.json()["error"]
    assert isinstance(message, str) and message
    return message


# --- basics -------------------------------------------------------------------------------------
def test_health_stats_and_openapi(env):
    h = env.client.get("/api/health").json()
    assert h["status"] == "ok" and h["searchable"] == 17  # 16 + gone.jpg; link.jpg not followed
    s = env.client.get("/api/stats").json()
    assert s["files"] == 18 and s["indexed"] == 17 and s["errors"] == 1
    assert s["error_list"][0]["path"] == "broken.jpg"
    assert s["indexing"]["state"] == "idle"
    schema = env.client.get("/api/openapi.json").json()
    for path in ("/api/search", "/api/search/image", "/api/images/{image_id}",
                 "/api/images/{image_id}/thumb", "/api/images/{image_id}/file",
                 "/api/index", "/api/index/stop", "/api/stats", "/api/health"):
        assert path in schema["paths"], path


def test_page_and_security_headers(env):
    r = env.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<label for="q"' in r.text and 'type="file"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/app.js", "/static/style.css"):
        assert env.client.get(asset).status_code == 200


# --- search -------------------------------------------------------------------------------------
def test_text_search_returns_hits_without_server_paths(env):
    r = env.client.get("/api/search", params={"q": "a red bicycle", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 5 and body["has_more"] is True
    first = body["results"][0]
    assert {"id", "rel_path", "score", "rank", "thumb", "file", "url", "width", "format"} <= set(first)
    assert first["rank"] == 1
    assert [h["score"] for h in body["results"]] == sorted((h["score"] for h in body["results"]), reverse=True)
    assert "path" not in first and str(env.root) not in r.text


def test_paging_is_consistent_and_bounded(env):
    def ids(**params):
        return [h["id"] for h in env.client.get("/api/search", params={"q": "tree", **params}).json()["results"]]

    whole = ids(k=10)
    assert ids(k=5) + ids(k=5, offset=5) == whole
    last = env.client.get("/api/search", params={"q": "tree", "k": 10, "offset": 10}).json()
    assert len(last["results"]) == 7 and last["has_more"] is False
    assert last["results"][0]["rank"] == 11
    assert env.client.get("/api/search", params={"q": "tree", "offset": 50}).json()["results"] == []
    for bad in ({"k": 0}, {"k": 101}, {"offset": -1}, {"offset": 1001}, {"k": "many"}):
        assert "k" in error_of(env.client.get("/api/search", params={"q": "x", **bad}), 422) or "offset" in \
            error_of(env.client.get("/api/search", params={"q": "x", **bad}), 422)


def test_empty_query_is_a_clear_400(env):
    assert "empty query" in error_of(env.client.get("/api/search"), 400)
    assert "empty query" in error_of(env.client.get("/api/search", params={"q": "   "}), 400)


def test_more_like_this_by_id(env):
    a0 = env.ids["a/a0.jpg"]
    body = env.client.get("/api/search", params={"like": a0, "k": 30}).json()
    assert body["results"] and a0 not in [h["id"] for h in body["results"]]
    edited = env.client.get("/api/search", params={"like": a0, "q": "at night", "weight": 0.0, "k": 30}).json()
    text = env.client.get("/api/search", params={"q": "at night", "k": 30}).json()
    # weight 0 = the text alone; the liked image itself stays excluded
    assert [h["id"] for h in edited["results"]] == [h["id"] for h in text["results"] if h["id"] != a0]
    assert "no image with id 999999" in error_of(env.client.get("/api/search", params={"like": 999999}), 404)
    for bad in ("abc", "-1", "0", "../a/a0.jpg", "/etc/passwd", str(2**70)):
        error_of(env.client.get("/api/search", params={"like": bad}), 422)


def test_image_upload_finds_itself_first(env):
    for rel in ("a/a3.jpg", "b/b5.png"):
        data = (env.root / rel).read_bytes()
        r = env.client.post("/api/search/image", files={"image": ("q", data, "application/octet-stream")},
                            params={"k": 3})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["rel_path"] == rel and top["score"] > 0.9999


def test_image_plus_text_fuses_by_weight(env):
    data = (env.root / "a/a1.jpg").read_bytes()

    def ranked(**params):
        r = env.client.post("/api/search/image", files={"image": ("q.jpg", data)}, params={"k": 18, **params})
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["results"]]

    image_only = ranked()
    assert ranked(q="in the snow", weight=1.0) == image_only
    text_only = [h["id"] for h in env.client.get("/api/search", params={"q": "in the snow", "k": 18}).json()["results"]]
    assert ranked(q="in the snow", weight=0.0) == text_only
    assert "like" in error_of(env.client.post("/api/search/image", files={"image": ("q.jpg", data)},
                                              params={"like": env.ids["a/a0.jpg"]}), 400)
    error_of(env.client.post("/api/search/image", files={"image": ("q.jpg", data)}, params={"weight": 1.5}), 422)


def test_filters(env):
    def rels(**params):
        r = env.client.get("/api/search", params={"q": "x", "k": 50, **params})
        assert r.status_code == 200, r.text
        return [h["rel_path"] for h in r.json()["results"]]

    assert sorted(rels(folder="a")) == [f"a/a{i}.jpg" for i in range(8)] + ["a/gone.jpg"]
    assert sorted(rels(folder="/b/")) == [f"b/b{i}.png" for i in range(8)]
    assert all(p.endswith(".png") for p in rels(type="png")) and len(rels(type="png")) == 8
    assert len(rels(type=["jpg", "png"])) == 17
    assert sorted(rels(since="2023-01-01", until="2023-12-31")) == [f"b/b{i}.png" for i in range(8)]
    assert rels(folder="nowhere") == []
    assert "since" in error_of(env.client.get("/api/search", params={"q": "x", "since": "last week"}), 400)
    assert "type" in error_of(env.client.get("/api/search", params={"q": "x", "type": "exe"}), 400)


def test_rerank_by_name_only(env):
    plain = env.client.get("/api/search", params={"q": "stairs", "k": 10}).json()["results"]
    r = env.client.get("/api/search", params={"q": "stairs", "k": 10, "rerank": "superglobal"})
    assert r.status_code == 200, r.text
    reranked = r.json()["results"]
    # superglobal re-scores the head it is given; with M >= the whole library, same set of ids
    assert len(reranked) == 10 and [h["rank"] for h in reranked] == list(range(1, 11))
    assert [h["score"] for h in reranked] != [h["score"] for h in plain]
    assert env.client.get("/api/search", params={"q": "stairs", "rerank": "none"}).json()["results"][0] \
        == env.client.get("/api/search", params={"q": "stairs"}).json()["results"][0]
    for bad in ("bogus", "superglobal,bogus", "spatial:max_keypoints=99999999", "../qe"):
        assert "reranker" in error_of(env.client.get("/api/search", params={"q": "x", "rerank": bad}), 400)


def test_like_of_an_image_not_yet_in_the_snapshot_is_404(env):
    """Committed by a re-index but not yet refreshed into the searchable snapshot."""
    with env.lib.catalog.transaction() as db:
        Catalog.put_image(db, "pending.jpg", 10, 0.0, sha="e" * 64, meta={"width": 8, "height": 8})
        Catalog.put_vector(db, env.lib.catalog.active_space(), "e" * 64, np.ones(env.lib.encoder.dim, np.float32))
    i = env.lib.catalog.id_of_path("pending.jpg")
    try:
        assert "not searchable yet" in error_of(env.client.get("/api/search", params={"like": i}), 404)
    finally:
        with env.lib.catalog.transaction() as db:
            Catalog.delete_paths(db, ["pending.jpg"])
            Catalog.drop_orphan_vectors(db)


# --- bad uploads ------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "status", "words"), [
    (b"hello, I am text", 415, "not an image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", 415, "not an image"),
    (jpeg_bytes((64, 64))[:300], 400, "corrupt or truncated"),
    (b"", 400, "empty"),
])
def test_bad_uploads_are_readable_4xx(env, data, status, words):
    r = env.client.post("/api/search/image", files={"image": ("x.png", data, "image/png")})
    assert words in error_of(r, status)


def test_upload_without_file_field(env):
    assert "image" in error_of(env.client.post("/api/search/image", data={"q": "x"}), 422)


def test_upload_limits_bytes_and_pixels(env):
    small = TestClient(create_app(env.lib, TOKEN, max_upload_bytes=20_000, max_upload_pixels=10_000))
    big = jpeg_bytes((400, 400))  # ~100 KB of noise
    assert len(big) > 20_000 + 64 * 1024
    # announced length: refused before the body is read
    assert "too large" in error_of(small.post("/api/search/image", files={"image": ("b.jpg", big)}), 413)

    # no announced length (chunked): refused while counting
    boundary = "loupeboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    r = small.post("/api/search/image", content=chunks(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert "too large" in error_of(r, 413)

    # over the byte limit of the app, under the middleware's slack for multipart overhead
    mid = jpeg_bytes((200, 200))
    assert 20_000 < len(mid) < 20_000 + 64 * 1024
    assert "too large" in error_of(small.post("/api/search/image", files={"image": ("m.jpg", mid)}), 413)

    # few bytes, many pixels: a flat PNG of 200 x 200 compresses to almost nothing
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "white").save(buf, "PNG")
    assert len(buf.getvalue()) < 20_000
    assert "too many pixels" in error_of(small.post("/api/search/image", files={"image": ("p.png", buf.getvalue())}), 413)


# --- images: metadata, thumbnails, originals ---------------------------------------------------
def test_metadata(env):
    i = env.ids["b/b2.png"]
    m = env.client.get(f"/api/images/{i}").json()
    assert m["rel_path"] == "b/b2.png" and m["width"] == 96 and m["format"] == "PNG"
    assert m["thumb"].startswith(f"/api/images/{i}/thumb") and "path" not in m
    assert "999999" in error_of(env.client.get("/api/images/999999"), 404)
    assert "could not be indexed" in error_of(env.client.get(f"/api/images/{env.ids['broken.jpg']}"), 404)
    for bad in ("abc", "0", "-3", str(2**64), "1.5"):
        error_of(env.client.get(f"/api/images/{bad}"), 422)


def test_thumbnails_are_cached_with_etags(env):
    i = env.ids["a/a2.jpg"]
    r = env.client.get(f"/api/images/{i}/thumb")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256
    sha = env.lib.record(i)["sha256"]
    cached = env.lib.cache_dir("thumbs") / sha[:2] / f"{sha}-256.jpg"
    assert cached.is_file()
    made = cached.stat().st_mtime_ns
    etag = r.headers["etag"]
    assert etag and "no-cache" in r.headers["cache-control"]

    again = env.client.get(f"/api/images/{i}/thumb")
    assert again.content == r.content and cached.stat().st_mtime_ns == made  # generated once
    nm = env.client.get(f"/api/images/{i}/thumb", headers={"If-None-Match": etag})
    assert nm.status_code == 304 and nm.content == b"" and nm.headers["etag"] == etag
    assert env.client.get(f"/api/images/{i}/thumb", headers={"If-None-Match": '"other"'}).status_code == 200

    versioned = env.client.get(f"/api/images/{i}/thumb", params={"v": sha[:16]})
    assert "immutable" in versioned.headers["cache-control"]
    large = env.client.get(f"/api/images/{i}/thumb", params={"size": 1024})
    assert large.status_code == 200 and large.headers["etag"] != etag
    assert "size" in error_of(env.client.get(f"/api/images/{i}/thumb", params={"size": 77}), 400)
    search = env.client.get("/api/search", params={"q": "x", "k": 1}).json()["results"][0]
    assert env.client.get(search["thumb"]).status_code == 200


def test_original_file(env):
    i = env.ids["a/a4.jpg"]
    r = env.client.get(f"/api/images/{i}/file")
    assert r.status_code == 200 and r.content == (env.root / "a/a4.jpg").read_bytes()
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"
    assert env.client.get(f"/api/images/{i}/file", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_file_deleted_since_indexing_is_404(env):
    i = env.ids["a/gone.jpg"]
    assert "no longer on disk" in error_of(env.client.get(f"/api/images/{i}/file"), 404)
    assert "no longer on disk" in error_of(env.client.get(f"/api/images/{i}/thumb"), 404)


# --- path traversal -----------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "/api/images/../../../../etc/passwd",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/images/%2Fetc%2Fpasswd/file",
    "/api/images//etc/passwd/file",
    "/api/images/1%2F..%2F..%2Fcatalog.db/file",
    "/api/images/1/file/../../../etc/passwd",
    "/api/images/1/thumb?size=256/../../etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e/app.py",
    "/static/..%2fapp.py",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/..%2f..%2fetc%2fpasswd",
])
def test_traversal_urls_never_reach_files(env, url):
    r = env.client.get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code)
    assert "root:" not in r.text and "create_app" not in r.text
    assert r.json()["error"]


def test_symlink_out_of_root_is_refused(env):
    assert "link.jpg" not in env.ids                      # the scanner did not follow it
    with env.lib.catalog.transaction() as db:
        Catalog.put_image(db, "link.jpg", 10, 0.0, sha="d" * 64, meta={"width": 8, "height": 8, "format": "JPEG"})
    i = env.lib.catalog.id_of_path("link.jpg")
    try:
        assert env.lib.image_path(i).resolve().is_relative_to(env.base / "outside")
        assert "outside the library root" in error_of(env.client.get(f"/api/images/{i}/file"), 403)
        assert "outside the library root" in error_of(env.client.get(f"/api/images/{i}/thumb"), 403)
    finally:
        with env.lib.catalog.transaction() as db:
            Catalog.delete_paths(db, ["link.jpg"])


@pytest.mark.parametrize("stored", ["../outside/secret.jpg", "a/../../outside/secret.jpg", "/etc/passwd"])
def test_catalog_paths_escaping_the_root_are_refused(env, stored):
    """Even a tampered catalog row cannot make the server read outside the root."""
    with env.lib.catalog.transaction() as db:
        Catalog.put_image(db, stored, 10, 0.0, sha="f" * 64, meta={"width": 8, "height": 8, "format": "JPEG"})
    i = env.lib.catalog.id_of_path(stored)
    try:
        assert "outside the library root" in error_of(env.client.get(f"/api/images/{i}/file"), 403)
        assert "outside the library root" in error_of(env.client.get(f"/api/images/{i}/thumb"), 403)
    finally:
        with env.lib.catalog.transaction() as db:
            Catalog.delete_paths(db, [stored])


# --- host check -----------------------------------------------------------------------------------
def test_unknown_host_header_is_refused_when_hosts_are_set(env):
    app = create_app(env.lib, TOKEN, allowed_hosts=["127.0.0.1", "localhost"])
    ok = TestClient(app, base_url="http://127.0.0.1:8000")
    assert ok.get("/api/health").status_code == 200
    rebound = TestClient(app, base_url="http://attacker.example:8000")
    assert rebound.get("/api/health").status_code == 400


# --- auth and the background re-index -------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer "}, {"Authorization": TOKEN},
])
def test_mutating_endpoints_need_the_token(env, headers):
    for url in ("/api/index", "/api/index/stop"):
        r = env.client.post(url, headers=headers)
        assert "admin token" in error_of(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    assert env.app.state.indexer.status()["state"] == "idle"


def test_create_app_refuses_an_empty_token(env):
    with pytest.raises(ValueError, match="token"):
        create_app(env.lib, "")


def test_token_file(tmp_path):
    token = load_or_create_token(tmp_path)
    path = tmp_path / TOKEN_FILENAME
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token
    os.chmod(path, 0o644)
    assert load_or_create_token(tmp_path) == token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_matches(f"Bearer {token}", token) and token_matches(f"bearer  {token}", token)
    assert not token_matches(f"Bearer {token}x", token) and not token_matches(None, token)


def test_serve_command_is_registered():
    from loupe.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert all(flag in out for flag in ("--host", "--port", "--token", "--max-upload-mb"))


@pytest.fixture
def fresh(tmp_path: Path) -> SimpleNamespace:
    """A library of its own, for tests that change it."""
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / "old" / f"o{i}.jpg", seed=300 + i)
    lib = Library.open(root / ".loupe", model=MODEL, device="cpu")
    lib.index()
    for i in range(24):
        make_image(root / "new" / f"n{i:02d}.jpg", seed=400 + i)
    app = create_app(lib, TOKEN, index_options=IndexOptions(batch_size=4, workers=2), refresh_every=0.05)
    yield SimpleNamespace(root=root, lib=lib, app=app, client=TestClient(app))
    app.state.indexer.stop(wait=30)
    lib.close()


def wait_idle(client: TestClient, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = client.get("/api/index").json()
        if not s["running"]:
            return s
        time.sleep(0.02)
    raise AssertionError("re-index did not finish")


def test_reindex_runs_in_background_and_searches_keep_working(fresh):
    c = fresh.client
    assert c.get("/api/index").json()["searchable"] == 6
    r = c.post("/api/index", headers=AUTH)
    assert r.status_code == 202 and r.json()["running"] is True
    failures, sizes = [], set()
    while c.get("/api/index").json()["running"]:
        s = c.get("/api/search", params={"q": "anything", "k": 100})
        if s.status_code != 200:
            failures.append(s.text)
        sizes.add(len(s.json()["results"]))
    status = wait_idle(c)
    assert failures == []
    assert status["state"] == "done" and status["report"]["added"] == 24 and status["left"] == 0
    assert c.get("/api/index").json()["searchable"] == 30
    # every search saw whole batches: the old 6 plus a multiple of the batch size
    assert all((n - 6) % 4 == 0 for n in sizes), sizes
    assert len(c.get("/api/search", params={"q": "x", "k": 100}).json()["results"]) == 30


def test_stop_is_clean_and_keeps_committed_batches(fresh):
    indexer = fresh.app.state.indexer
    original = indexer._progress

    def stop_after_first_batch(done: int, total: int) -> None:
        if done >= 4:
            indexer.stop()  # as if POST /api/index/stop arrived during the second batch
        original(done, total)

    indexer._progress = stop_after_first_batch
    assert fresh.client.post("/api/index", headers=AUTH).status_code == 202
    status = wait_idle(fresh.client)
    assert status["state"] == "stopped", status
    assert status["done"] == 4 and status["error"] is None
    assert fresh.client.get("/api/index").json()["searchable"] == 6 + 4
    assert fresh.lib.catalog.counts()["indexed"] == 6 + 4
    # what was committed is saved for the next start, as after a finished run
    space = fresh.lib.catalog.active_space()
    saved = json.loads((fresh.lib.path / "spaces" / str(space) / "snapshot.json").read_text())
    assert (saved["generation"], saved["count"]) == (fresh.lib.catalog.generation(), 10)
    # the next run picks up where this one stopped
    indexer._progress = original
    assert fresh.client.post("/api/index", headers=AUTH).status_code == 202
    status = wait_idle(fresh.client)
    assert status["state"] == "done" and status["report"]["added"] == 20
    assert fresh.client.get("/api/index").json()["searchable"] == 30


def test_start_twice_is_409_and_stop_when_idle_is_409(fresh, monkeypatch):
    release, first_batch = threading.Event(), threading.Event()

    def slow_index(options=None, progress=None):
        progress(0, 10)
        progress(1, 10)
        first_batch.set()
        while not release.wait(0.01):
            progress(1, 10)  # raises once a stop is asked for

    monkeypatch.setattr(fresh.lib, "index", slow_index)
    assert "no re-index" in error_of(fresh.client.post("/api/index/stop", headers=AUTH), 409)
    assert fresh.client.post("/api/index", headers=AUTH).status_code == 202
    assert "already running" in error_of(fresh.client.post("/api/index", headers=AUTH), 409)
    assert first_batch.wait(10)
    s = fresh.client.get("/api/index").json()
    assert s["running"] and s["total"] == 10 and s["left"] == 9
    assert fresh.client.post("/api/index/stop", headers=AUTH).json()["state"] == "stopping"
    assert wait_idle(fresh.client)["state"] == "stopped"


# --- the `loupe serve` command ----------------------------------------------------------------
def test_serve_command_defaults(env, monkeypatch):
    """Loopback by default, loopback Host names only, the token from LOUPE_TOKEN printed."""
    import torch
    import uvicorn

    from loupe.cli import app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: seen.update(app=app_, **kw))
    # recorded, not applied: the thread count is process-wide and other tests share the process
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    monkeypatch.setenv("LOUPE_TOKEN", "from-the-environment")
    monkeypatch.setenv("LOUPE_THREADS", "")  # serve sets it for its backends: restored after
    result = CliRunner().invoke(app, ["serve", str(env.root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000 and seen["threads"] == 1
    assert "http://127.0.0.1:8000/" in result.output and "from-the-environment" in result.output
    client = TestClient(seen["app"], base_url="http://localhost:8000")
    assert client.post("/api/index/stop", headers={"Authorization": "Bearer from-the-environment"}).status_code == 409
    assert TestClient(seen["app"], base_url="http://rebound.example").get("/api/health").status_code == 400
    assert not (env.lib.path / TOKEN_FILENAME).exists()  # an explicit token is not written down


def test_serve_command_for_real(tmp_path):
    """`loupe serve` as a user runs it: a token made and stored 0600, printed, and working."""
    import re
    import subprocess
    import sys

    import httpx

    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / f"p{i}.jpg", seed=700 + i)
    lib = Library.open(root / ".loupe", model=MODEL, device="cpu")
    lib.index()
    lib.close()
    port = free_port()
    env_vars = {k: v for k, v in os.environ.items() if k != "LOUPE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "loupe.cli", "serve", str(root / ".loupe"),
                             "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_vars,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        lines = []
        while not any("admin token:" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
        printed = "".join(lines)
        token = re.search(r"admin token: (\S+)", printed).group(1)
        stored = root / ".loupe" / TOKEN_FILENAME
        assert stored.read_text().strip() == token and stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert f"http://127.0.0.1:{port}/" in printed
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/api/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < end, "server did not answer"
                time.sleep(0.1)
        assert health.json()["searchable"] == 3
        assert httpx.post(f"{base}/api/index").status_code == 401
        assert httpx.post(f"{base}/api/index", headers={"Authorization": f"Bearer {token}"}).status_code == 202
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_start_while_another_process_indexes_is_409(fresh):
    # Another process (the CLI) holds the library's write lock: the server says so up front
    # instead of answering 202 and failing at once in the background.
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(fresh.lib.path / "write.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "another process" in error_of(fresh.client.post("/api/index", headers=AUTH), 409)
        assert fresh.client.get("/api/index").json()["running"] is False
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert fresh.client.post("/api/index", headers=AUTH).status_code == 202
    assert wait_idle(fresh.client)["state"] == "done"
