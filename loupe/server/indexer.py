"""Re-index in a background thread while searches keep running on the last snapshot.

The library's snapshot is swapped whole by `Library.refresh()`, so a search sees
either the state before a committed batch or after it, never half of one.
Stopping raises from the progress callback, which the indexer calls only between
batches: every batch committed so far stays, the one in flight is never begun.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from loupe.core.config import IndexOptions
from loupe.library import Library

log = logging.getLogger("loupe.server")


class IndexStopped(Exception):
    """Raised inside the indexing thread to end a run between two batches."""


class BackgroundIndexer:
    """At most one incremental re-index at a time, with a status the page can poll."""

    def __init__(self, lib: Library, options: IndexOptions | None = None,
                 refresh_every: float = 1.0):
        self.lib = lib
        self.options = options or IndexOptions()
        self.refresh_every = refresh_every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {"state": "idle", "done": 0, "total": None,
                                        "started_at": None, "finished_at": None,
                                        "report": None, "error": None}

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = dict(self._status)
        s["running"] = self.running
        total = s["total"]
        s["left"] = None if total is None else max(total - s["done"], 0)
        return s

    def start(self) -> bool:
        """Start a run; False when one is already running."""
        with self._lock:
            if self.running:
                return False
            self._stop.clear()
            self._status.update(state="scanning", done=0, total=None, started_at=time.time(),
                                finished_at=None, report=None, error=None)
            self._thread = threading.Thread(target=self._run, name="loupe-reindex", daemon=True)
            self._thread.start()
        return True

    def stop(self, wait: float | None = None) -> bool:
        """Ask the run to end after the batch in flight; False when none is running."""
        if not self.running:
            return False
        with self._lock:
            self._stop.set()
            self._status["state"] = "stopping"
        if wait is not None:
            self.join(wait)
        return True

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _progress(self, done: int, total: int) -> None:
        # Called after each committed batch: `done` counts what is saved, stop or not.
        with self._lock:
            self._status.update(done=done, total=total)
            if self._status["state"] == "scanning":
                self._status["state"] = "indexing"
        if self._stop.is_set():
            raise IndexStopped

    def _run(self) -> None:
        finished = threading.Event()
        refresher = threading.Thread(target=self._refresh_loop, args=(finished,),
                                     name="loupe-refresh", daemon=True)
        refresher.start()
        state, report, error = "done", None, None
        try:
            report = self.lib.index(self.options, progress=self._progress).to_dict()
        except IndexStopped:
            state = "stopped"
        except Exception as exc:  # a failed run must not take the server down
            log.exception("re-index failed")
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            finished.set()
            refresher.join()
            try:
                self.lib.refresh()  # what was committed becomes searchable before "done" shows
                if state != "done":
                    # A finished run saved its vectors itself; after a stop the next start
                    # should not have to read them all back out of SQLite either.
                    self.lib.save_vectors()
            except Exception:
                log.exception("snapshot refresh failed")
            self.lib.close()  # this thread's SQLite connection
            with self._lock:
                self._status.update(state=state, report=report, error=error,
                                    finished_at=time.time())

    def _refresh_loop(self, finished: threading.Event) -> None:
        """Swap in new snapshots while the run commits. A rebuild of a large library
        costs real time, so the pause grows with it: rebuilds take at most ~20%."""
        pause = self.refresh_every
        try:
            while not finished.wait(pause):
                t0 = time.perf_counter()
                self.lib.refresh()
                pause = max(self.refresh_every, 4 * (time.perf_counter() - t0))
        except Exception:  # keep indexing; the final refresh will try again
            log.exception("snapshot refresh failed")
        finally:
            self.lib.close()
