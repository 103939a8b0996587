"""The HTTP API and the web page: one FastAPI app over one `Library`.

Everything the app needs is passed to `create_app`; nothing lives at module level,
so tests (and embedders) can run several apps side by side.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

import loupe
from loupe.core.config import ALLOWED_FORMATS, IndexOptions
from loupe.core.types import Filters
from loupe.library import Library
from loupe.media.decode import DecodeError
from loupe.search.query import QueryError
from loupe.server import thumbs
from loupe.server.auth import token_matches
from loupe.server.files import file_etag, image_record, media_type, safe_file
from loupe.server.indexer import BackgroundIndexer
from loupe.server.middleware import BodyLimit, CrossSiteGuard, SecurityHeaders
from loupe.server.warm import TextTowerWarmer

log = logging.getLogger("loupe.server")

STATIC = Path(__file__).parent / "static"
MAX_K = 100
MAX_OFFSET = 1000
DEFAULT_K = 30
MAX_UPLOAD_BYTES = 20 * 2**20
# Below the indexer's limit: a query image needs no more, and each upload is decoded in memory.
MAX_UPLOAD_PIXELS = 50_000_000
MULTIPART_OVERHEAD = 64 * 1024   # boundaries and part headers around the file
MAX_ID = 2**63 - 1               # SQLite's integer range: larger ids cannot exist
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Catalog id.")]
_STATS_ERROR_LIST = 100


def create_app(lib: Library, token: str, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_upload_pixels: int = MAX_UPLOAD_PIXELS, allowed_hosts: list[str] | None = None,
               index_options: IndexOptions | None = None, refresh_every: float = 1.0,
               thumb_cache_bytes: int = thumbs.DEFAULT_BUDGET,
               max_decodes: int = thumbs.DECODE_SLOTS, warm_text: bool = True) -> FastAPI:
    """The app serving `lib`. `token` guards the endpoints that change the library.

    `allowed_hosts` (e.g. ["127.0.0.1", "localhost"]) rejects other Host headers, which
    stops a web page from reaching a local server through DNS rebinding.
    `max_upload_pixels` bounds every decode the server makes (query uploads, and the
    thumbnails of indexed files too); at most `max_decodes` run at once. Thumbnails are
    kept within `thumb_cache_bytes` (least recently used go first).
    Takes over refreshing `lib`'s search snapshot (`lib.auto_refresh` is turned off):
    searches never wait for a rebuild while a re-index commits batches.
    `warm_text`: load the text tower in the background as the app starts, and keep it.
    """
    if not token:
        raise ValueError("an admin token is required (see loupe.server.auth.load_or_create_token)")
    lib.auto_refresh = False
    lib.refresh()
    indexer = BackgroundIndexer(lib, index_options, refresh_every=refresh_every)
    watcher = _Watcher(lib)
    warmer = TextTowerWarmer(lib)
    decode_slots = threading.BoundedSemaphore(max_decodes)
    thumb_cache = thumbs.ThumbCache(lib.cache_dir("thumbs"), max_pixels=max_upload_pixels,
                                    slots=decode_slots, budget_bytes=thumb_cache_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher.start()
        if warm_text:
            warmer.start()
        yield
        watcher.stop()
        indexer.stop(wait=30)

    app = FastAPI(title="Loupe", version=loupe.__version__, lifespan=lifespan,
                  description="Search a Loupe image library by text, by image, or both.",
                  openapi_url="/api/openapi.json", docs_url=None, redoc_url=None)
    app.state.lib = lib
    app.state.indexer = indexer
    app.state.warmer = warmer
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(CrossSiteGuard)  # outside BodyLimit: refused before the body is read
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)

    def require_token(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), token):
            raise HTTPException(401, "this needs the admin token: send 'Authorization: Bearer "
                                "<token>' (printed by `loupe serve`)",
                                headers={"WWW-Authenticate": "Bearer"})

    Admin = Depends(require_token)

    # --- search -------------------------------------------------------------------------------
    @app.get("/api/search", tags=["search"])
    def search(p: Annotated[SearchParams, Depends()]) -> dict[str, Any]:
        """By text (`q`), by an indexed image (`like`), or both (`like` + `q` as the edit)."""
        for image_id in (*p.liked, *p.unliked):
            image_record(lib, image_id)
        if p.like is not None:
            image_record(lib, p.like)
            if not lib.is_searchable(p.like):
                raise HTTPException(404, f"image {p.like} is not searchable yet: it is being indexed")
            return _page(lib, p, text=p.q, like=p.like, weight=p.weight)
        if (not p.q or not p.q.strip()) and not p.liked:
            raise HTTPException(400, "empty query: give text (q), an indexed image id (like), "
                                "liked images, or upload an image to /api/search/image")
        return _page(lib, p, text=p.q)

    @app.post("/api/search/image", tags=["search"])
    def search_image(p: Annotated[SearchParams, Depends()],
                     image: Annotated[UploadFile, File(description="The query image.")]) -> dict[str, Any]:
        """By an uploaded image, optionally edited by text (`q`: "this, but at night")."""
        if p.like is not None:
            raise HTTPException(400, "give an uploaded image or `like`, not both")
        # One slot per decode in flight, held until the pixels are let go: N parallel
        # uploads cost at most `max_decodes` decoded images of memory.
        with thumbs.decode_slot(decode_slots):
            data = image.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"image too large: the limit is {max_upload_bytes} bytes")
            # Decoded as the indexer decodes (so an indexed photo finds itself at score 1),
            # unless a reranker looks at the query's pixels: then it gets them at full size.
            full = any(getattr(r, "needs_pixels", False) for r in p.rerank or ())
            pixels = thumbs.decode_image(data, max_pixels=max_upload_pixels,
                                         reduce_to=None if full else _image_size(lib))
            del data
            return _page(lib, p, text=p.q, image=pixels, weight=p.weight)

    @app.get("/api/dups", tags=["search"])
    def duplicates(method: Annotated[list[str] | None, Query(
            description="exact, phash[:D], dhash[:D] or embedding[:COSINE] (repeatable). "
            "Default: embedding (the stored vectors: no file is read).")] = None,
            ) -> dict[str, Any]:
        """Near-duplicate groups of the library, best file first (read-only: acting on
        them is `loupe dups` on the machine that holds the files)."""
        from loupe.server.answers import dups_listing

        return dups_listing(lib, method or ["embedding"])

    # --- images -------------------------------------------------------------------------------
    @app.get("/api/images/{image_id}", tags=["images"])
    def metadata(image_id: ImageId) -> dict[str, Any]:
        rec = image_record(lib, image_id)
        out = {k: v for k, v in rec.items() if k != "path"}
        return {**out, "rel_path": rec["path"], **_urls(rec["id"], rec["sha256"])}

    @app.get("/api/images/{image_id}/thumb", tags=["images"],
             responses={200: {"content": {"image/jpeg": {}}}, 304: {}})
    def thumbnail(request: Request, image_id: ImageId,
                  size: Annotated[int, Query(description=f"One of {thumbs.SIZES}.")] = thumbs.SIZES[0],
                  v: Annotated[str | None, Query(description="Content version from a search result.")] = None,
                  ) -> Response:
        if size not in thumbs.SIZES:
            raise HTTPException(400, f"thumbnail size must be one of {list(thumbs.SIZES)}")
        rec = image_record(lib, image_id)
        source = safe_file(lib, rec)
        # The hash of what the file holds now: the catalog's, unless it changed since.
        content = thumb_cache.content(rec, source)
        headers = _thumb_headers(content.sha256, size, v)
        if _not_modified(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        sha, jpeg = thumb_cache.get(content, source, size)
        if sha != content.sha256:  # changed between the look and the read
            headers = _thumb_headers(sha, size, v)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @app.get("/api/images/{image_id}/file", tags=["images"],
             responses={200: {"content": {"image/*": {}}}, 304: {}})
    def original(request: Request, image_id: ImageId) -> Response:
        rec = image_record(lib, image_id)
        path = safe_file(lib, rec)
        headers = {"ETag": file_etag(rec, path), "Cache-Control": "private, no-cache"}
        if _not_modified(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=media_type(rec), headers=headers,
                            filename=Path(rec["path"]).name, content_disposition_type="inline")

    # --- library ------------------------------------------------------------------------------
    @app.get("/api/health", tags=["library"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": loupe.__version__, "searchable": lib.searchable(),
                "indexing": indexer.running, "text_tower": warmer.status()}

    @app.get("/api/stats", tags=["library"])
    def stats() -> dict[str, Any]:
        info = lib.stats()
        info["error_list"] = info["error_list"][:_STATS_ERROR_LIST]
        info["searchable"] = lib.searchable()
        info["indexing"] = indexer.status()
        return jsonable_encoder(info)

    @app.get("/api/index", tags=["index"])
    def index_status() -> dict[str, Any]:
        """The background re-index: state, done, total, left; and the catalog's counts."""
        return {**indexer.status(), **lib.counts(), "searchable": lib.searchable(),
                "switch": lib.switch_status()}

    @app.post("/api/index", tags=["index"], status_code=202, dependencies=[Admin])
    def index_start() -> dict[str, Any]:
        """Start an incremental re-index in the background (needs the admin token)."""
        if indexer.running:
            raise HTTPException(409, "a re-index is already running")
        if lib.writer_busy():
            raise HTTPException(409, "another process is indexing this library; try again when it is done")
        if not indexer.start():
            raise HTTPException(409, "a re-index is already running")
        return indexer.status()

    @app.post("/api/index/stop", tags=["index"], dependencies=[Admin])
    def index_stop() -> dict[str, Any]:
        """Stop the re-index after the batch in flight; committed batches stay."""
        if not indexer.stop():
            raise HTTPException(409, "no re-index is running")
        return indexer.status()

    # --- the page -----------------------------------------------------------------------------
    _install_docs(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class SearchParams:
    """Query-string parameters shared by both search endpoints."""

    def __init__(
        self,
        q: Annotated[str | None, Query(max_length=1000, description="Text query, or the edit applied to the image.")] = None,
        like: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Id of an indexed image: more like this.")] = None,
        weight: Annotated[float, Query(ge=0, le=1, description="Image + text: weight of the image (1 = image only).")] = 0.5,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="Results per page.")] = DEFAULT_K,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Results to skip (paging).")] = 0,
        folder: Annotated[str | None, Query(max_length=1000, description="Only under this folder (relative to the root).")] = None,
        since: Annotated[str | None, Query(description="Taken on or after (YYYY-MM-DD).")] = None,
        until: Annotated[str | None, Query(description="Taken on or before (YYYY-MM-DD).")] = None,
        type: Annotated[list[str] | None, Query(description="Only these formats: jpeg, png, ...")] = None,
        rerank: Annotated[str | None, Query(max_length=200, description="Rerank the head: a reranker name "
                                            "or a chain, e.g. superglobal or superglobal,spatial.")] = None,
        liked: Annotated[list[int] | None, Query(description="Relevance feedback: more like these "
                                                 "image ids (repeatable).")] = None,
        unliked: Annotated[list[int] | None, Query(description="Fewer like these image ids "
                                                   "(repeatable).")] = None,
        all: Annotated[bool, Query(description="Show every result: no confidence cut-off, "
                                   "near-duplicates not grouped.")] = False,
        diverse: Annotated[float | None, Query(ge=0, le=1, description="Vary the results (MMR "
                                               "lambda: 1 = plain relevance).")] = None,
        channels: Annotated[str | None, Query(pattern="^(hybrid|text|vector)$", description=(
            "Text queries: hybrid (vectors and the full-text index fused, the default), text (words "
            "read in the images, file names, camera, date: no model) or vector. Each text hit "
            "carries `why`: the matched terms and the words read in the image, with their boxes "
            "in pixels of the full-size image."))] = None,
    ):
        self.q = q.strip() if q and q.strip() else None
        self.like, self.weight, self.k, self.offset = like, weight, k, offset
        self.filters = Filters(folder=(folder or "").strip("/") or None,
                               since=_date(since, "since"), until=_date(until, "until"),
                               types=tuple(_format(t) for t in type or () if t))
        self.rerank = _rerankers(rerank)
        self.liked, self.unliked = list(liked or [])[:50], list(unliked or [])[:50]
        self.all, self.diverse = all, diverse
        self.channels = channels


def _page(lib: Library, p: SearchParams, **query: Any) -> dict[str, Any]:
    from loupe.search.answers import face_chain, summary
    from loupe.server.answers import with_member_urls

    started = time.perf_counter()
    # The answer stages judge vectors; a words-only search loads no model.
    chain = p.rerank or [] if p.channels == "text" else face_chain(p.rerank, show_all=p.all,
                                                                   diverse=p.diverse)
    # One extra result says whether another page exists.
    hits = lib.search(**query, k=p.offset + p.k + 1, filters=p.filters, rerank=chain,
                      liked=p.liked, unliked=p.unliked, channels=p.channels)
    page = hits[p.offset:p.offset + p.k]
    results = []
    for rank, h in enumerate(page, p.offset + 1):
        d = h.to_dict()
        del d["path"]  # the server's own paths are none of the client's business
        results.append(with_member_urls({**d, "rank": rank, **_urls(h.id, h.meta["sha256"])}))
    return {"offset": p.offset, "k": p.k, "has_more": len(hits) > p.offset + p.k,
            **summary(chain, len(hits), p.offset + p.k + 1),
            "results": results, "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def _image_size(lib: Library) -> int:
    """The model's input size, from the library's record: no need to load the image tower
    (and the text tower with it) only to read a number."""
    identity = lib.identity
    return int(identity["image_size"]) if identity else lib.tower("image").image_size


def _urls(image_id: int, sha256: str | None) -> dict[str, str]:
    base = f"/api/images/{image_id}"
    version = (sha256 or "")[:16]
    return {"url": base, "thumb": f"{base}/thumb?v={version}", "large": f"{base}/thumb?size=1024&v={version}",
            "file": f"{base}/file"}


def _thumb_headers(sha: str, size: int, v: str | None) -> dict[str, str]:
    # A URL naming the version of the content it serves never changes meaning: cached for
    # good. Any other (no version, or a file changed since the URL was made) is revalidated.
    cache = "private, max-age=31536000, immutable" if v == sha[:16] else "private, no-cache"
    return {"ETag": f'"{sha[:32]}-{size}"', "Cache-Control": cache}


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    tags = [t.strip().removeprefix("W/") for t in wanted.split(",")]
    return "*" in tags or etag in tags


def _date(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        (datetime.fromisoformat if "T" in value else date.fromisoformat)(value)
    except ValueError:
        raise HTTPException(400, f"{name} wants a date like 2024-05-31, got {value!r}") from None
    return value


def _format(name: str) -> str:
    upper = name.strip().lstrip(".").upper()
    upper = FORMAT_ALIASES.get(upper, upper)
    if upper not in ALLOWED_FORMATS:
        raise HTTPException(400, f"unknown image type {name!r}; one of: "
                            f"{', '.join(sorted(ALLOWED_FORMATS))}")
    return upper


def _rerankers(spec: str | None) -> list[Any] | None:
    """Reranker instances by name only: parameters stay at their defaults, so a request
    cannot ask for, say, a million keypoints per image."""
    names = [n.strip().lower() for n in (spec or "").split(",") if n.strip()]
    if not names or names == ["none"]:
        return None
    from loupe.search.stages import REGISTRY

    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise HTTPException(400, f"unknown reranker {unknown[0]!r}; one of: {', '.join(REGISTRY)} "
                            "(by name only: parameters are not taken over HTTP)")
    return [REGISTRY[n]() for n in names]


def _decode_status(reason: str) -> int:
    if reason.startswith(("too many pixels", "file too large")):
        return 413
    if reason.startswith(("not an image", "unsupported format")):
        return 415
    return 400


DOCS_ASSETS = "/api/docs/assets"


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle-v2 package (module swagger_ui_bundle),
    when installed and of version 5 or later (4 cannot show FastAPI's OpenAPI 3.1)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    version = re.search(r"(\d+)\.\d+", folder.name)
    if not (folder / "swagger-ui-bundle.js").is_file() or (version and int(version[1]) < 5):
        return None
    return folder


def _install_docs(app: FastAPI) -> None:
    """/api/docs from this server alone, so it works offline: Swagger UI from a package's
    files when there is one, else a plain list of the endpoints."""
    assets = _swagger_assets()
    if assets is None:
        @app.get("/api/docs", include_in_schema=False)
        def endpoint_list() -> HTMLResponse:
            return HTMLResponse(_endpoint_list_html(app), headers={"Cache-Control": "no-cache"})
        return

    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    html = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/api/openapi.json", title=f"{app.title} API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None}).body
    # The page's one inline script (Swagger UI's start) is allowed by its hash, nothing else.
    inline = re.findall(rb"<script>(.*?)</script>", html, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in inline)
    csp = (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
           "frame-ancestors 'none'")

    @app.get("/api/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp,
                                           "Cache-Control": "no-cache"})


def _endpoint_list_html(app: FastAPI) -> str:
    from html import escape

    rows = []
    for path, ops in app.openapi().get("paths", {}).items():
        for method, op in ops.items():
            summary = op.get("summary") or ""
            rows.append(f"<li><code>{escape(method.upper())} {escape(path)}</code> "
                        f"{escape(summary)}</li>")
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>Loupe API</title>"
            "<h1>Loupe API</h1><p>The full description, as JSON: "
            f"<a href='{escape(app.openapi_url or '')}'>{escape(app.openapi_url or '')}</a>."
            f"</p><ul>{''.join(rows)}</ul></html>")


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with an `error` message a person can read."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors]
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse({"error": "; ".join(parts) or "invalid request", "details": details}, 422)

    @app.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    @app.exception_handler(DecodeError)
    async def decode_error(_: Request, exc: DecodeError) -> JSONResponse:
        return JSONResponse({"error": f"could not use the image: {exc}"}, _decode_status(str(exc)))


class _Watcher:
    """Picks up commits made by other processes (a `loupe index` run in a terminal):
    with auto-refresh off, nothing else would."""

    def __init__(self, lib: Library, every: float = 5.0):
        self.lib = lib
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loupe-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.lib.refresh()
            except Exception:
                log.exception("snapshot refresh failed")
        self.lib.close()
