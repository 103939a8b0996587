"""`loupe serve`: the web page and the REST API, in one process."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from loupe.core.config import CATALOG_FILENAME, LIBRARY_DIRNAME
from loupe.core.errors import LoupeError
from loupe.library import Library, LibraryError, find_library

LOOPBACK_NAMES = ["127.0.0.1", "localhost"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    library: Annotated[Path | None, typer.Argument(
        help="Library folder (e.g. ~/Pictures/.loupe) or the folder holding it. "
        "Default: the nearest .loupe at or above here.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. 0.0.0.0 makes it reachable "
                                      "from other machines.", metavar="TEXT")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.", metavar="N")] = 8000,
    token: Annotated[str | None, typer.Option(
        envvar="LOUPE_TOKEN", help="Admin token for the endpoints that change the library. "
        "Default: the one stored in the library folder (made on first run).",
        show_default=False, metavar="TEXT")] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest query image accepted, MiB.", metavar="X")] = 20.0,
    max_upload_mp: Annotated[float, typer.Option(
        min=0.01, help="Largest image decoded, megapixels: query images, and the thumbnails of "
        "indexed files (a JPEG counts at the reduced scale it is decoded at).",
        metavar="X")] = 50.0,
    thumb_cache_mb: Annotated[float, typer.Option(
        min=1, help="Disk kept for thumbnails, MiB; the least recently used go first.",
        metavar="X")] = 512.0,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="Host name clients may use (repeatable). Default: loopback names when --host is "
        "loopback, else any.", show_default=False, metavar="TEXT")] = None,
    reindex: Annotated[bool, typer.Option("--reindex", help="Start an incremental re-index "
                                          "in the background right away.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.", metavar="TEXT")] = "auto",
    backend: Annotated[str | None, typer.Option(
        "--backend", help="auto, torch, onnx or openvino (default: $LOUPE_BACKEND or auto).",
        show_default=False, metavar="NAME")] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="auto, fp32, fp16 (GPU), int8 or bf16 (CPU, opt-in) (default: "
        "$LOUPE_PRECISION or auto).", show_default=False, metavar="NAME")] = None,
    threads: Annotated[int, typer.Option(
        min=1, help="CPU threads per model call (any backend), the background re-index's "
        "included. Concurrent requests already use the cores; more threads per call make them "
        "fight over the cores (and slow everything down on a busy machine).", metavar="N")] = 1,
) -> None:
    """Serve the library: a search page in the browser and a JSON API (docs at /api/docs).

    `loupe serve ~/Pictures/.loupe` listens on 127.0.0.1:8000; add `--host 0.0.0.0` to be
    reachable from the network. The text model loads in the background as the server starts
    and stays loaded; the image model loads when something needs it.
    """
    check_port(host, port)  # before the model loads: a busy port fails in a second
    import os
    import sys

    import uvicorn

    from loupe.server.app import create_app
    from loupe.server.auth import TOKEN_FILENAME, load_or_create_token

    lib = Library.open(_library_path(library), device=device, create=False, backend=backend,
                       precision=precision)
    # Every backend reads $LOUPE_THREADS as it loads; torch is set now only if something
    # already imported it (importing it here would cost seconds a text query never needs).
    os.environ["LOUPE_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    token_source = "from --token / LOUPE_TOKEN"
    if not token:
        token = load_or_create_token(lib.path)
        token_source = f"stored in {lib.path / TOKEN_FILENAME}"
    app = create_app(lib, token, max_upload_bytes=int(max_upload_mb * 2**20),
                     max_upload_pixels=int(max_upload_mp * 1e6),
                     thumb_cache_bytes=int(thumb_cache_mb * 2**20),
                     allowed_hosts=allowed_host or _default_hosts(host))
    if reindex:
        app.state.indexer.start()

    out = Console(stderr=True, highlight=False, soft_wrap=True)  # no line breaks inside a URL or token
    shown = f"[{host}]" if ":" in host else host
    out.print(f"[bold]Loupe[/] serving {lib.path} ({lib.searchable()} searchable images; "
              "the text model is loading in the background)")
    out.print(f"  page:        http://{shown}:{port}/")
    out.print(f"  API docs:    http://{shown}:{port}/api/docs")
    out.print(f"  admin token: [bold]{token}[/]")
    out.print(f"               ({token_source}; re-index and stop need "
              "'Authorization: Bearer <token>')")
    if not _is_loopback(host):
        out.print("[yellow]warning[/]: listening beyond this machine: anyone who can reach it can "
                  "search and view these images (changes still need the token).")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def check_port(host: str, port: int) -> None:
    """Bind (host, port) as uvicorn will, and let go at once: a port in use, an address not
    on this machine or a port that needs privileges becomes one line and exit code 2."""
    if port == 0:
        return  # any free port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind((host, port))
    except socket.gaierror:
        raise LoupeError(f"cannot listen on {host}: no such host name") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LoupeError(f"port {port} is in use: pass --port N") from None
        if exc.errno == errno.EACCES:
            raise LoupeError(f"port {port} needs administrator rights: pass --port N "
                             "(1024 or above)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise LoupeError(f"cannot listen on {host}: not an address of this machine "
                             "(try --host 127.0.0.1)") from None
        raise LoupeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _library_path(given: Path | None) -> Path:
    if given is None:
        found = find_library()
        if found is None:
            raise LibraryError("no library here or in any folder above; pass its folder, "
                               "e.g. `loupe serve ~/Pictures/.loupe`")
        return found
    given = given.expanduser()
    if not (given / CATALOG_FILENAME).is_file() and (given / LIBRARY_DIRNAME / CATALOG_FILENAME).is_file():
        return given / LIBRARY_DIRNAME
    return given


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_hosts(host: str) -> list[str] | None:
    """Loopback servers answer only to loopback names: a web page that rebinds its own
    domain to 127.0.0.1 (DNS rebinding) then cannot read the library."""
    if not _is_loopback(host) or ":" in host:
        return None  # IPv6 Host headers ([::1]:8000) do not fit Starlette's host check
    return sorted({*LOOPBACK_NAMES, host})
