"""How indexing shares the CPU: decode threads run at a lower priority than the model."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from conftest import TINY, make_folder

from loupe.ingest.run import DECODE_NICE, lower_priority
from loupe.library import Library
from loupe.models import load_encoder

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux
def test_lower_priority_renices_only_the_calling_thread():
    before = _nice()
    seen = {}

    def worker():
        lower_priority()
        seen["worker"] = _nice()
        lower_priority()  # twice: capped at 19, never an error
        seen["again"] = _nice()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["worker"] == min(19, before + DECODE_NICE)
    assert seen["again"] == min(19, before + 2 * DECODE_NICE)
    assert _nice() == before  # the calling (model) thread keeps its priority


@linux
def test_decode_threads_run_niced_and_the_model_does_not(tmp_path, monkeypatch):
    """A new library with an earlier export: pixels are prepared in niced decode threads while
    the model loads (and runs) at the process's own priority."""
    import loupe.ingest.run as run
    from loupe.models.cache import EXPORT_FORMAT, export_dir, write_json

    monkeypatch.setenv("LOUPE_MODEL_CACHE", str(tmp_path / "models"))
    ref = load_encoder(TINY, device="cpu", backend="torch", towers=("image",))
    write_json(export_dir("loupe-tiny", "random:seed0") / "manifest.json",
               {"format": EXPORT_FORMAT, "identity": ref.identity, "towers": {}})
    base = _nice()
    prepared, loaded = [], []
    real_prepare, real_tower = run.preprocess.prepare, Library.tower

    def prepare(image, identity):
        prepared.append((threading.current_thread().name, _nice()))
        return real_prepare(image, identity)

    def tower(self, *towers):
        loaded.append((threading.current_thread().name, _nice()))
        return real_tower(self, *towers)

    monkeypatch.setattr(run.preprocess, "prepare", prepare)
    monkeypatch.setattr(Library, "tower", tower)
    root = tmp_path / "photos"
    make_folder(root, 10)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu", backend="torch")
    report = lib.index()
    lib.close()
    assert report.added == 10 and report.errors == 0
    assert len(prepared) == 10
    assert all(name.startswith("loupe-decode") and nice == min(19, base + DECODE_NICE)
               for name, nice in prepared), prepared
    assert loaded and all(nice == base for _, nice in loaded), loaded
