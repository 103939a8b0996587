"""Two small ASGI middlewares: a hard cap on request bodies, and security headers."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page and its assets come only from this server; dropped images are shown
# from blob: URLs. Nothing may frame the page.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /api/docs page loads Swagger UI from a CDN; it gets no CSP of ours.
NO_CSP_PREFIXES = ("/api/docs", "/api/redoc")


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


class SecurityHeaders:
    """nosniff, no framing, no referrer, and a strict CSP on every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not scope["path"].startswith(NO_CSP_PREFIXES)

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if csp:
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
