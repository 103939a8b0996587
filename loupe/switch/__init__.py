"""Switching a library's model without downtime: spaces, the target's fill, the bridge, the swap.

    lib.add_model("ViT-L-14:datacomp_xl_s13b_b90k")     # a space, empty
    lib.switch_model("ViT-L-14:datacomp_xl_s13b_b90k")  # the target; fills it (Ctrl-C safe)
    lib.models()                                         # every space, its coverage, which is which
    lib.drop_model("ViT-B-32:laion2b_s34b_b79k")         # once the old one is no longer active

How a switch goes (the design, and why):

1. `switch` records the target space (one meta key) and fills it: every indexed content without
   a vector there is read, embedded by the new model and committed one batch per transaction,
   through the ingest pipeline's own pure steps (`loupe.ingest.embed.read` / `embed`) and its
   bounded read-ahead. A kill loses at most the batch in flight; the next `loupe models switch`,
   `loupe models fill` or `loupe index` (which continues a switch after its own work) carries
   on. The fill walks contents in hash order: fixed across runs, and independent of folders, so
   the first contents filled are a uniform sample of the library.
2. Once `bridge_sample` contents are in both spaces (or all of them, in a smaller library), a
   linear bridge is fitted on them (`loupe.switch.bridge`: Procrustes, least squares and a
   text-only fit compete on held-out pairs; the best is kept and recorded). From then on a
   search uses the new model: its query is searched in the new space for the images already
   there, and through the bridge against the old vectors for the rest; bridged scores are moved
   onto the new space's scale per query (calibrated on the sample in both spaces) before the two
   lists are merged. One image is scored in one space only, so no raw scores of different spaces
   are ever compared. Before the bridge exists, searches use the old space alone, as before.
3. When every indexed content has a vector in the target, its search index is saved and the
   active space changes in one transaction that re-checks completeness inside it. Readers in
   other processes (a server) see the new active space at their next search or refresh.
4. The old space stays until `drop`: its index files first, then its rows (a crash between
   leaves rows without files, which are rebuilt; never files of a dropped space).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loupe.core.config import SPACES_DIRNAME, IndexOptions, default
from loupe.core.errors import LibraryError
from loupe.core.files import atomic_write
from loupe.storage import spaces as sp
from loupe.storage.catalog import Catalog
from loupe.switch.bridge import Bridge, fit, from_arrays

if TYPE_CHECKING:
    from loupe.library import Library

BRIDGE_FILE = "bridge.npz"
target_space = sp.target_space
# progress(done, total) after each committed batch, as `loupe index` reports it.
Progress = Callable[[int, int], None]


@dataclass
class FillReport:
    target: int | None = None
    todo: int = 0                 # contents the target lacked when the run started
    embedded: int = 0             # contents embedded and committed by this run
    stale: list[str] = field(default_factory=list)   # files changed or gone since indexed
    errors: list[tuple[str, str]] = field(default_factory=list)
    bridge: dict[str, Any] | None = None            # fitted by this run
    switched: bool = False        # the target became the active space
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = [{"path": p, "error": e} for p, e in self.errors]
        d["seconds"] = round(self.seconds, 3)
        return d


# --- spaces ---------------------------------------------------------------------------------

def models(lib: Library) -> list[dict[str, Any]]:
    """Every space: id, name, model, weights, pixel pipeline, images embedded / total,
    active, target, and the bridge when one is fitted."""
    target = sp.target_space(lib.catalog)
    out = []
    for s in sp.space_rows(lib.catalog):
        ident = s["identity"]
        out.append({
            "id": s["id"], "name": s["name"], "model": ident.get("model"),
            "arch": ident.get("arch"), "source": ident.get("source"),
            "weights": ident.get("weights_path"), "dim": ident.get("dim"),
            "image_size": ident.get("image_size"), "pipeline": ident.get("pipeline"),
            "embedded": s["embedded"], "total": s["total"],
            "active": s["active"], "target": s["id"] == target,
            "bridge": s["state"].get("bridge"), "switched": s["state"].get("switched"),
        })
    return out


def find_space(lib: Library, name: str, weights: str | Path | None = None) -> int | None:
    """The space a user means by NAME (an id, a name as added, or ARCH:TAG / ARCH + weights)."""
    name = name.strip()
    rows = lib.catalog.spaces()
    if name.isdigit():
        return int(name) if any(s["id"] == int(name) for s in rows) else None
    from loupe.models.openclip import ModelSpec, resolve_source

    spec = ModelSpec.parse(name, weights)
    if weights is not None:
        source = resolve_source(spec)
        found = [s for s in rows if s["identity"].get("arch") == spec.arch
                 and s["identity"].get("source") == source]
    else:
        found = [s for s in rows if name in (s["name"], s["identity"].get("model"),
                                             s["identity"].get("model_name"))]
    if len(found) > 1:
        raise LibraryError(f"{name!r} names {len(found)} spaces "
                           f"({', '.join(str(s['id']) for s in found)}): give the space's id")
    return found[0]["id"] if found else None


def add_model(lib: Library, name: str, weights: str | Path | None = None) -> tuple[int, bool]:
    """The space of NAME (+ weights), created empty when new: (space id, created). Loads the
    model's image tower once, to learn its identity (dimension, pixel pipeline)."""
    from loupe.models import ModelSpec, load_encoder
    from loupe.models.hub import ensure_downloadable

    if not name or not name.strip():
        raise LibraryError("give a model name, e.g. ViT-B-32:laion2b_s34b_b79k")
    existing = find_space(lib, name, weights)
    if existing is not None:
        return existing, False
    spec = ModelSpec.parse(name, weights)
    if weights is not None and not Path(weights).exists():
        raise LibraryError(f"--weights {weights}: no such file or folder")
    if spec.weights is None:
        ensure_downloadable(spec.arch, spec.tag)
    if lib.catalog.active_space() is None:
        raise LibraryError("this library has no model yet: index it first (`loupe index FOLDER "
                           "--model NAME`); `loupe models add` adds a second model")
    with lib.writing():
        enc = load_encoder(name, weights, lib.device, towers=("image",), backend=lib.backend,
                           precision=lib.precision)
        identity = {**enc.identity, "model_name": name,
                    "weights_path": str(Path(weights).resolve()) if weights else None}
        known = lib.catalog.space_for(identity)
        space = lib.catalog.add_space(name, identity)
        lib._encoders[(space, frozenset({"image"}))] = enc
    return space, known is None


def switch_model(lib: Library, name: str, weights: str | Path | None = None) -> int:
    """Make NAME the target of a switch (added when new). Returns its space; `fill` does the
    work. Switching to the active model, or back to it mid-switch, ends the switch."""
    space, _ = add_model(lib, name, weights)
    if space == lib.catalog.active_space():
        if sp.target_space(lib.catalog) is not None:
            sp.set_target(lib.catalog, None)   # back to the active model: the switch is off
            return space
        raise LibraryError(f"{name} is already this library's active model")
    if sp.target_space(lib.catalog) != space:
        sp.set_target(lib.catalog, space)
    return space


def drop_model(lib: Library, name: str, weights: str | Path | None = None) -> dict[str, Any]:
    """Delete a space's vectors and saved index (never the active one)."""
    space = find_space(lib, name, weights)
    if space is None:
        raise LibraryError(f"no model {name!r} in this library (`loupe models` lists them)")
    if space == lib.catalog.active_space():
        raise LibraryError(f"{name} is the active model: switch to another one first "
                           "(`loupe models switch OTHER`), then drop it")
    with lib.writing():
        # Files first: a crash before the rows go leaves rows whose index is rebuilt, never
        # index files that a later space reusing the id could mistake for its own.
        shutil.rmtree(lib.path / SPACES_DIRNAME / str(space), ignore_errors=True)
        n = sp.delete_space(lib.catalog, space)
    lib._encoders = {k: v for k, v in lib._encoders.items() if k[0] != space}
    return {"space": space, "vectors": n}


def status(lib: Library) -> dict[str, Any] | None:
    """The switch under way (target, coverage, bridge), or None."""
    target = sp.target_space(lib.catalog)
    if target is None:
        return None
    space = lib.catalog.space(target)
    if space is None:
        return None
    embedded, total = sp.coverage(lib.catalog, target)
    return {"target": target, "name": space["name"], "from": lib.catalog.active_space(),
            "embedded": embedded, "total": total, "bridge": space["state"].get("bridge")}


# --- the fill -------------------------------------------------------------------------------

def fill(lib: Library, progress: Progress | None = None, *, options: IndexOptions | None = None,
         locked: bool = False) -> FillReport:
    """Embed what the target space lacks, fit the bridge after the sample, and swap when
    complete. Takes the library's write lock unless the caller holds it (`locked`)."""
    started = time.perf_counter()
    report = FillReport(target=sp.target_space(lib.catalog))
    if report.target is None:
        return report
    with contextlib.nullcontext() if locked else lib.writing():
        _fill(lib, report, progress, options or IndexOptions())
    report.seconds = time.perf_counter() - started
    return report


def _fill(lib: Library, report: FillReport, progress: Progress | None, options: IndexOptions) -> None:
    from loupe.ingest import embed as emb
    from loupe.ingest.run import _ordered
    from loupe.media.scan import FileEntry

    catalog, target = lib.catalog, report.target
    assert target is not None
    sample = int(default("bridge_sample"))
    todo = sp.missing_contents(catalog, target)
    report.todo = len(todo)
    if progress:
        progress(0, len(todo))
    if todo:
        enc = lib.tower("image", space=target)
        by_path = {rel: sha for sha, rel, _, _ in todo}

        def work(entry: FileEntry) -> Any:
            return emb.read(entry, lib.root, known=set(), max_file_bytes=options.max_file_bytes,
                            max_pixels=options.max_pixels, image_size=enc.image_size,
                            prepare=enc.prepare)

        entries = [FileEntry(rel, size, mtime) for _, rel, size, mtime in todo]
        workers = options.workers or 2
        done = 0
        batch: list[Any] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loupe-fill") as pool:
            try:
                for item in _ordered(pool, work, entries, window=options.batch_size * 2 + workers):
                    batch.append(item)
                    if len(batch) >= options.batch_size:
                        done += _commit_batch(lib, target, batch, by_path, enc, report)
                        batch = []
                        _maybe_fit(lib, target, sample, report)
                        if progress:
                            progress(done, len(todo))
                if batch:
                    done += _commit_batch(lib, target, batch, by_path, enc, report)
                    if progress:
                        progress(done, len(todo))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    _maybe_fit(lib, target, sample, report, final=True)
    if not report.stale and not report.errors:
        target_vectors(lib, target).save()   # the next process maps it instead of building it
        report.switched = sp.swap(catalog, target)


def _commit_batch(lib: Library, target: int, batch: list[Any], by_path: dict[str, str],
                  enc: Any, report: FillReport) -> int:
    """Embed and commit one batch: one transaction, as `loupe index` commits. A file whose
    bytes no longer match its row (changed since it was indexed) is left to `loupe index`."""
    from loupe.ingest import embed as emb

    for it in batch:
        if it.error:
            report.errors.append((it.entry.rel, it.error))
            it.pixels = None
        elif it.sha != by_path[it.entry.rel]:
            report.stale.append(it.entry.rel)
            it.pixels = None
    emb.embed(batch, enc.encode_pixels)
    commit_vectors(lib.catalog, target, [(it.sha, it.vector) for it in batch if it.vector is not None])
    n = sum(it.vector is not None for it in batch)
    report.embedded += n
    return len(batch)


def commit_vectors(catalog: Catalog, space: int, rows: list[tuple[str, np.ndarray]]) -> None:
    """One batch of a space's vectors in one transaction (the generation moves on, so readers
    see them at their next refresh)."""
    with catalog.transaction() as db:
        for sha, vector in rows:
            Catalog.put_vector(db, space, sha, vector)


# --- the bridge -----------------------------------------------------------------------------

def _maybe_fit(lib: Library, target: int, sample: int, report: FillReport, final: bool = False) -> None:
    """Fit the bridge once the sample is in both spaces (at the end, on whatever is shared)."""
    catalog = lib.catalog
    active = catalog.active_space()
    state = catalog.space_state(target)
    if active is None or (state.get("bridge") or {}).get("from") == active and _bridge_file_ok(lib, target):
        return
    dims = _dim(catalog, target), _dim(catalog, active)
    hashes, x_new, x_old = sp.shared_contents(catalog, target, active, *dims, limit=sample)
    if len(hashes) < 2 or (len(hashes) < sample and not final):
        return
    report.bridge = fit_bridge(lib, target, active, x_new, x_old)


def fit_bridge(lib: Library, target: int, active: int, x_new: np.ndarray, x_old: np.ndarray) -> dict[str, Any]:
    """Fit, save (file first, then the record that names it) and return the summary."""
    from loupe.search.stages.hubness import CAPTIONS

    text_pairs = None
    with contextlib.suppress(Exception):   # a model without a text tower: no text-only candidate
        captions = list(CAPTIONS)
        text_pairs = (lib.tower("text", space=target).encode_text(captions),
                      lib.tower("text", space=active).encode_text(captions))
    bridge = fit(x_new, x_old, text_pairs=text_pairs)
    token = uuid.uuid4().hex
    folder = lib.path / SPACES_DIRNAME / str(target)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / BRIDGE_FILE, lambda fh: np.savez(fh, token=np.array(token), **bridge.arrays()))
    summary = {**bridge.summary(), "from": active, "token": token, "fitted_at": time.time()}
    lib.catalog.update_space_state(target, bump=True, bridge=summary)
    return summary


def _bridge_file_ok(lib: Library, target: int) -> bool:
    return load_bridge(lib, target) is not None


def load_bridge(lib: Library, target: int) -> Bridge | None:
    """The target's bridge into the active space, when one is recorded and its file matches."""
    summary = lib.catalog.space_state(target).get("bridge")
    if not summary or summary.get("from") != lib.catalog.active_space():
        return None
    try:
        with np.load(lib.path / SPACES_DIRNAME / str(target) / BRIDGE_FILE) as data:
            if str(data["token"]) != summary["token"]:
                return None
            return from_arrays(summary, {k: np.array(data[k]) for k in ("w", "cal_new", "cal_old")})
    except (OSError, KeyError, ValueError):
        return None


def _dim(catalog: Catalog, space: int) -> int:
    s = catalog.space(space)
    assert s is not None
    return int(s["identity"]["dim"])


# --- searching mid-switch -------------------------------------------------------------------

def target_vectors(lib: Library, target: int) -> Any:
    """The target space's search-ready vectors, kept on the library between searches."""
    from loupe.switch.search import TargetVectors

    cached = getattr(lib, "_switch_vectors", None)
    if cached is None or cached.space != target:
        cached = TargetVectors(lib.catalog, target, _dim(lib.catalog, target),
                               lib.path / SPACES_DIRNAME / str(target),
                               memory_budget=default("index_memory_budget"))
        lib._switch_vectors = cached
    return cached


def bridged(lib: Library) -> Any:
    """The search to use while a switch is under way with a fitted bridge, else None."""
    target = sp.target_space(lib.catalog)
    if target is None:
        return None
    summary = lib.catalog.space_state(target).get("bridge")
    if not summary or summary.get("from") != lib.catalog.active_space():
        return None
    from loupe.switch.search import BridgedSearch

    cached = getattr(lib, "_switch_search", None)
    if cached is None or cached.key != (target, summary["token"]):
        bridge = load_bridge(lib, target)
        if bridge is None:
            return None
        cached = BridgedSearch(lib, target, bridge, key=(target, summary["token"]))
        lib._switch_search = cached
    return cached
