"""Keep the text tower warm: load it in the background as the server starts, and keep it.

A text query is what a search page sends first, and loading a model costs seconds (an ONNX
Runtime session, a tokenizer; more on torch). The server starts listening at once while
`TextTowerWarmer` loads the text tower in a thread; the `Library` keeps every encoder it has
loaded, so the tower stays in memory for the server's life. A query arriving before the load
ends waits for that same load (the library's model lock), never starts a second one. The
image tower loads only when something needs it (an image query, a re-index).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from loupe.library import Library
from loupe.models.options import runtime_info

log = logging.getLogger("loupe.server")


class TextTowerWarmer:
    """Loads `lib.tower("text")` once in a daemon thread; `status()` says how it went."""

    def __init__(self, lib: Library):
        self.lib = lib
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"state": "idle", "seconds": None, "error": None,
                                        "runtime": None}

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self.lib.identity is None:  # an empty library has no model to warm yet
                self._status["state"] = "no model"
                return
            self._status["state"] = "loading"
            self._thread = threading.Thread(target=self._run, name="loupe-warm-text", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the load ended (or `timeout`); returns the status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            enc = self.lib.tower("text")
            update = {"state": "ready", "runtime": runtime_info(enc)}
        except Exception as exc:  # the first query will load it and report the error itself
            log.warning("could not load the text tower in the background: %s", exc)
            update = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self.lib.close()  # this thread's SQLite connection (the catalog keeps one per thread)
        with self._lock:
            self._status.update(update, seconds=round(time.perf_counter() - started, 3))
