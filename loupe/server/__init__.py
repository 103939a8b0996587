"""`loupe serve`: the REST API and the web page over one library.

    from loupe.server import create_app
    app = create_app(Library.open("photos/.loupe"), token="...")
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `loupe --help` does not import FastAPI just to list `serve`.
    if name == "create_app":
        from loupe.server.app import create_app

        return create_app
    raise AttributeError(name)
