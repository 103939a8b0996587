"""Small ASGI middlewares: a hard cap on request bodies, a refusal of cross-site writes,
and security headers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page and its assets come only from this server; dropped images are shown
# from blob: URLs. Nothing may frame the page.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Methods that may change something or cost the server work on a stranger's behalf.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not the client
    announces the length: the body is counted as it arrives, before it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body too large: the limit is {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _send_json(send, 413, {"error": message})
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched (any other
                    # exception there becomes a 400), and reaches the JSON error handler.
                    raise HTTPException(413, message)
            return msg

        async def tracked(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except HTTPException as exc:
            if started or exc.status_code != 413:
                raise
            await _send_json(send, 413, {"error": message})


class CrossSiteGuard:
    """Refuse writes and uploads that a browser sends on behalf of another site, with 403.

    Any web page can make its visitor's browser POST a form (multipart included) to
    127.0.0.1 without a CORS preflight. Browsers label such requests: `Sec-Fetch-Site`
    (anything but same-origin is refused; a page on another port of localhost is
    "same-site", and refused too) and, where that is missing, `Origin` (must name this
    server's own Host). Requests with neither (curl, scripts) are no browser's: they pass.
    The check runs before the body is read.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            reason = cross_site_reason(dict(scope["headers"]))
            if reason is not None:
                await _send_json(send, 403, {
                    "error": f"cross-site request refused: {reason}. Use the page this server "
                             "serves, or call the API from a script (no browser headers)."})
                return
        await self.app(scope, receive, send)


def cross_site_reason(headers: dict[bytes, bytes]) -> str | None:
    """Why a request comes from another site's page, or None when it does not."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        # Set by the browser itself (no page can forge it): it decides on its own, which
        # also keeps a reverse proxy that rewrites Host working for modern browsers.
        value = site.decode("latin-1").strip().lower()
        if value in ("same-origin", "none"):  # "none": typed or bookmarked by the user
            return None
        return f"the browser says it was sent from a {value} page (Sec-Fetch-Site: {value})"
    origin = headers.get(b"origin")
    if origin is None:
        return None
    origin_text = origin.decode("latin-1").strip()
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if not _same_origin(origin_text, host):
        return f"sent from {origin_text!r}, not from this server ({host or 'no Host header'})"
    return None


def _same_origin(origin: str, host: str) -> bool:
    if not host or origin.lower() == "null":  # sandboxed frames, file: pages, redirects
        return False
    try:
        o = urlsplit(origin.lower())
        h = urlsplit(f"//{host}")
        o_port = o.port or DEFAULT_PORTS.get(o.scheme)
        h_port = h.port or DEFAULT_PORTS.get(o.scheme)
    except ValueError:  # a port that is not a number, or out of range
        return False
    return o.scheme in DEFAULT_PORTS and bool(o.hostname) and \
        (o.hostname, o_port) == (h.hostname, h_port)


class SecurityHeaders:
    """nosniff, no framing, no referrer, and a strict CSP on every response that does
    not bring its own (the API docs page allows its one inline script by hash)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                own_csp = any(k.lower() == b"content-security-policy" for k, _ in headers)
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if not own_csp:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, with_headers)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
