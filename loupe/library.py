"""`Library`: the facade over one image collection; the only thing the faces touch.

    lib = Library.open("photos/.loupe")
    lib.index()                                   # incremental; safe to interrupt
    hits = lib.search("a red bicycle", k=20)      # or image=, like=, expr=, box=, filters=, rerank=

A library is a folder: its catalog (SQLite: rows, and vectors per embedding space),
the saved search index of each space, and caches. One space is active for search.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe import switch as switching
from loupe.core.config import (
    CATALOG_FILENAME,
    LIBRARY_DIRNAME,
    SPACES_DIRNAME,
    IndexOptions,
    default,
)
from loupe.core.errors import LibraryError, ModelMismatch, QueryError
from loupe.core.types import Candidates, Hit, Query, SearchRequest
from loupe.ingest import IndexReport, Progress, plan, run_index
from loupe.ingest.apply import commit_embedded
from loupe.models import Encoder, ModelSpec, load_encoder
from loupe.models.hub import ensure_downloadable
from loupe.models.loader import peek_identity
from loupe.models.options import check_runtime, runtime_info
from loupe.search import pipeline
from loupe.search.query import QueryBuilder
from loupe.storage.catalog import Catalog
from loupe.storage.store import CatalogStore
from loupe.storage.vectors import SpaceVectors

WRITE_LOCK = "write.lock"


def _executor(runner: str, model: str, weights: Path | None, ray_address: str | None,
              ray_options: dict[str, Any] | None, backend: str) -> Any:
    """The function that carries out an index plan (checked before anything changes)."""
    if runner == "ray":
        from loupe.ingest.ray_runner import executor

        return executor(model, weights, ray_address, {"backend": backend, **(ray_options or {})})
    if runner != "local":
        raise LibraryError(f"unknown runner {runner!r} (local or ray)")
    if ray_address is not None or ray_options:
        raise LibraryError("ray_address and ray_options need runner='ray'")
    return run_index


def find_library(start: Path | None = None) -> Path | None:
    """The nearest `.loupe` folder at or above `start` (default: the current directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / LIBRARY_DIRNAME / CATALOG_FILENAME).is_file():
            return folder / LIBRARY_DIRNAME
    return None


class Library:
    """One collection: its root folder, its catalog, its embedding spaces, its model.

    Reads are safe from many threads while one thread indexes: searches use the active
    space's snapshot, which its owner (`SpaceVectors`) brings up to date under a lock.
    """

    def __init__(self, path: Path, catalog: Catalog, root: Path, model: str,
                 weights: Path | None, device: str, backend: str | None = None,
                 precision: str | None = None):
        self.path = path
        self.catalog = catalog
        self.root = root
        self.model = model
        self.weights = weights
        self.device = device
        # backend / precision: the settings (LOUPE_BACKEND, LOUPE_PRECISION) unless given
        self.backend, self.precision = check_runtime(backend or default("backend"),
                                                     precision or default("precision"), device)
        self._encoders: dict[tuple[int | None, frozenset[str]], Encoder] = {}
        self._vectors: SpaceVectors | None = None
        self._text_bank: tuple[Any, Any] | None = None
        self._ocr: Any = None                # the OCR engine, loaded by the first run that reads text
        self._lock = threading.RLock()
        # Loading a model takes seconds: its own lock, so that searches of other kinds, stats
        # and health checks never wait behind a tower loading in the background.
        self._model_lock = threading.Lock()

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, model: str | None = None, weights: str | Path | None = None,
             device: str = "auto", root: str | Path | None = None, create: bool = True,
             backend: str | None = None, precision: str | None = None) -> Library:
        path = Path(path).expanduser().absolute()
        # before anything is read or made: a bad backend/precision changes nothing
        check_runtime(backend or default("backend"), precision or default("precision"), device)
        db_file = path / CATALOG_FILENAME
        if not db_file.exists():
            if not create:
                raise LibraryError(f"no library at {path} (run `loupe index FOLDER` first)")
            if path.exists() and any(path.iterdir()):
                raise LibraryError(f"{path} exists and is not a Loupe library (no {CATALOG_FILENAME})")
            path.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(db_file, read_only=not _writable(path, db_file))
        recorded_root = catalog.get_meta("root")
        wanted_root = Path(root).expanduser().absolute() if root is not None else None
        if recorded_root is not None:
            resolved = (path / recorded_root).resolve()
            if wanted_root is not None and wanted_root.resolve() != resolved:
                raise LibraryError(
                    f"library {path} indexes {resolved}, not {wanted_root}; "
                    f"use --library to make a separate library for that folder"
                )
            the_root = resolved
        else:
            the_root = (wanted_root or path.parent).resolve()
            if not the_root.is_dir():
                raise LibraryError(f"folder to index does not exist: {the_root}")
            # Stored relative when possible, so a copied folder keeps working.
            catalog.set_meta("root", os.path.relpath(the_root, path.resolve()))

        space = catalog.space(catalog.active_space()) if catalog.active_space() else None
        identity = space["identity"] if space else None
        if identity is None:
            name = model or default("model")
            if weights is not None and model is None:
                raise LibraryError("--weights needs --model naming its architecture")
        else:
            name = model or identity["model_name"]
            if model is not None:
                _check_same_model(identity, ModelSpec.parse(model, weights), path)
            if weights is None and identity.get("weights_path"):
                weights = identity["weights_path"]
        return cls(path, catalog, the_root, name, Path(weights) if weights else None, device,
                   backend, precision)

    @property
    def identity(self) -> dict[str, Any] | None:
        """The active space's identity: model, weights, pixel pipeline (None before the first model)."""
        space = self.active_space()
        return space["identity"] if space else None

    def active_space(self) -> dict[str, Any] | None:
        space = self.catalog.active_space()
        return self.catalog.space(space) if space is not None else None

    @property
    def encoder(self) -> Encoder:
        """The active space's model with both towers, loaded on first use (and checked
        against the space)."""
        return self.tower("image", "text")

    def tower(self, *towers: str, space: int | None = None) -> Encoder:
        """The active space's model (or `space`'s) with at least these towers. A text query
        loads only the text tower: from a cached export that is ONNX Runtime and a tokenizer,
        no torch."""
        want = frozenset(towers)
        with self._model_lock:
            active = self.catalog.active_space()
            other = space is not None and space != active   # a switch's target, not the user's model
            space = active if space is None else space
            for (of, have), enc in self._encoders.items():
                if of == space and want <= have:
                    return enc
            recorded = self.catalog.space(space)["identity"] if space is not None else None
            name, weights = self.model, self.weights
            if recorded is None:   # a new library: the model names its space
                spec = ModelSpec.parse(self.model, self.weights)
                if spec.weights is None:
                    ensure_downloadable(spec.arch, spec.tag)
            elif other:   # another space's model, named by what that space recorded
                name, weights = recorded["model_name"], recorded.get("weights_path")
            enc = load_encoder(name, weights, self.device, towers=sorted(want),
                               backend=self.backend, precision=self.precision)
            if recorded is None:
                identity = {**enc.identity, "model_name": self.model,
                            "weights_path": str(self.weights.resolve()) if self.weights else None}
                space = self.catalog.add_space(self.model, identity, activate=True)
            elif not enc.same_model(recorded):
                raise ModelMismatch(_mismatch_message(recorded, enc.identity, self.path))
            self._encoders[(space, want)] = enc
            return enc

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- indexing ---------------------------------------------------------------------------
    def index(self, options: IndexOptions | None = None, progress: Progress | None = None,
              ocr_progress: Progress | None = None, *, runner: str = "local",
              ray_address: str | None = None,
              ray_options: dict[str, Any] | None = None) -> IndexReport:
        """Bring the catalog up to date with the root folder: embed new and changed files,
        keep vectors of moved ones, drop deleted ones. Loads the model only when some
        content is new. One writer per library: a second one gets a clear error.
        With OCR on (`options.ocr`, else the library's recorded choice) a second pass then
        reads the text in every content not read yet (`loupe.ingest.ocr`; `ocr_progress`,
        else `progress`, follows it).

        runner="ray": read, decode and embed on a Ray cluster (`ray_address`, default a local
        instance; `ray_options`: see `loupe.ingest.ray_runner.executor`); the plan and the
        commits stay here (docs/scale.md)."""
        options = options or IndexOptions()
        engine = self.ocr_engine(options.ocr)   # a missing engine is said before anything changes
        execute = _executor(runner, self.model, self.weights, ray_address, ray_options, self.backend)
        with self.writing(), _disk_errors(self.path):
            if options.index_spec is not None:
                self.set_index_spec(options.index_spec)
            todo = plan(self.catalog, self.root, options)
            identity = self.identity
            # a new library's model exported before: pixels are prepared while it loads
            pixels_from = identity or (peek_identity(self.model, self.weights) if todo.todo else None)
            report = execute(
                self.catalog, todo, self.root, options,
                space=lambda: self.catalog.active_space() or self._space_from_encoder(),
                encoder=lambda: self.tower("image"),
                image_size=int(identity["image_size"]) if identity else None,
                progress=progress, identity=pixels_from,
            )
            self.save_vectors()
            report.ocr = self._read_text(engine, options, ocr_progress or progress)
            if switching.target_space(self.catalog) is not None:   # a model switch carries on
                report.switch = switching.fill(self, progress, options=options, locked=True).to_dict()
        return report

    def ocr_engine(self, enable: bool | None = None) -> Any:
        """The OCR engine when reading text is on (`enable`, else the library's recorded
        choice), loaded once; None when off. Raises LibraryError when it is not installed."""
        from loupe.text import store as text_store

        setting = text_store.ocr_setting(self.catalog.db)
        if not (setting.get("enabled", False) if enable is None else enable):
            return None
        if self._ocr is None:
            from loupe.ingest.ocr import load_engine

            self._ocr = load_engine(setting.get("engine") or default("ocr_engine"),
                                    default("ocr_threads"))
        return self._ocr

    def _read_text(self, engine: Any, options: IndexOptions, progress: Progress | None
                   ) -> dict[str, Any] | None:
        from loupe.ingest.ocr import run_ocr
        from loupe.text import store as text_store

        with self.catalog.transaction(bump=False) as db:
            if options.ocr is not None:   # the choice stays for later runs (and `loupe serve`)
                text_store.set_ocr_setting(db, enabled=bool(options.ocr))
            text_store.drop_orphan_ocr(db)
        if engine is None:
            return None
        return run_ocr(self.catalog, self.root, engine, options, progress=progress).to_dict()

    def text_status(self) -> dict[str, Any]:
        """OCR on or off, its engine, and how many indexed contents it has read."""
        from loupe.text import store as text_store

        setting = text_store.ocr_setting(self.catalog.db)
        return {"ocr": bool(setting.get("enabled")), "engine": setting.get("key"),
                **text_store.ocr_counts(self.catalog.db, setting.get("key"))}

    def add_embedded(self, rows: Iterable[tuple[str, str, np.ndarray, dict[str, Any]]],
                     batch_size: int = 10_000) -> int:
        """Add images embedded elsewhere (another machine, a benchmark's synthetic set) as
        (relative path, content sha256, vector of the active space, metadata) rows, through
        the same commit step as `index` (one transaction per batch). Returns rows added."""
        space = self._space_id()
        n = 0
        with self.writing():
            for batch in _batched(rows, batch_size):
                commit_embedded(self.catalog, space, batch)
                n += len(batch)
        return n

    def _space_from_encoder(self) -> int:
        _ = self.tower("image")
        space = self.catalog.active_space()
        assert space is not None
        return space

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the library's write lock (an OS lock: released when the process dies)."""
        if self.catalog.read_only:
            raise LibraryError(f"the library at {self.path} is read-only: it can be searched, not changed")
        fd = os.open(self.path / WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LibraryError(
                    f"another process is indexing {self.root} (library {self.path}); "
                    "wait for it to finish, or stop it"
                ) from None
            yield
        finally:
            os.close(fd)

    def writer_busy(self) -> bool:
        """True while another process holds the write lock (a probe: takes and drops it).
        Lets a face refuse a run up front instead of starting one that fails at once."""
        if self.catalog.read_only:
            return False
        fd = os.open(self.path / WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)   # closing drops the lock if we took it
        return False

    def set_index_spec(self, spec: str | None) -> None:
        """Force the search index kind of the active space (None: chosen by size again)."""
        from loupe import index as ann

        if spec is not None and spec.lower() != "auto":
            try:   # a bad spec (or a missing extra) fails here, before anything changes
                spec = ann.check_spec(spec)
            except (ValueError, ImportError) as exc:
                raise LibraryError(f"--index {spec}: {exc}") from None
        space = self._space_id()
        self.catalog.update_space_state(
            space, bump=True, index_override=None if spec is None or spec.lower() == "auto" else spec)

    def set_dba(self, k: int | None, alpha: float = 3.0) -> None:
        """Turn database-side augmentation on (k neighbours) or off (None)."""
        self.catalog.update_space_state(self._space_id(), bump=True,
                                        dba={"k": int(k), "alpha": float(alpha)} if k else None)

    def _space_id(self) -> int:
        space = self.catalog.active_space()
        return space if space is not None else self._space_from_encoder()

    # --- the active space's vectors ----------------------------------------------------------
    @property
    def vectors_of_space(self) -> SpaceVectors:
        with self._lock:
            space = self._space_id()
            if self._vectors is None or self._vectors.space != space:
                dim = int(self.catalog.space(space)["identity"]["dim"])
                # A switch's target becomes active: a server keeps its refresh policy.
                auto = self._vectors.auto_refresh if self._vectors is not None else True
                self._vectors = SpaceVectors(self.catalog, space, dim,
                                             self.path / SPACES_DIRNAME / str(space),
                                             memory_budget=default("index_memory_budget"))
                self._vectors.auto_refresh = auto
            return self._vectors

    @property
    def store(self) -> CatalogStore:
        """What search stages read (vectors, pixels, caches), by id."""
        return CatalogStore(self.catalog, self.vectors_of_space, self.root, self.path)

    @property
    def auto_refresh(self) -> bool:
        return self.vectors_of_space.auto_refresh

    @auto_refresh.setter
    def auto_refresh(self, value: bool) -> None:
        self.vectors_of_space.auto_refresh = value

    def refresh(self) -> int:
        """Make what was committed searchable; returns how many images are searchable."""
        return len(self.vectors_of_space.refresh().index)

    def searchable(self) -> int:
        """How many images the active space can find now."""
        return len(self.vectors_of_space)

    def is_searchable(self, image_id: int) -> bool:
        return bool(self.vectors_of_space.contains([image_id])[0])

    def counts(self) -> dict[str, int]:
        """Files, indexed, errors, and distinct vectors of the active space."""
        return self.catalog.counts(self.catalog.active_space())

    def count_matching(self, filters: Any) -> int:
        """How many searchable rows pass `filters` (cheap: SQL only, no model)."""
        return len(self.catalog.filter_ids(filters))

    def id_of_path(self, rel: str) -> int | None:
        """The id of a library-relative path, or None."""
        return self.catalog.id_of_path(rel)

    def find_record(self, image_id: int) -> dict[str, Any] | None:
        """The catalog row of an id, or None."""
        return self.catalog.record(image_id)

    def save_vectors(self) -> None:
        """Save the search index for the next process (only once a space exists)."""
        if self.catalog.active_space() is not None:
            self.vectors_of_space.save()

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.vectors_of_space.ids()
        return ids, self.vectors_of_space.vectors(ids)

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.vectors_of_space.vectors(ids)

    def search_vector(self, vector: np.ndarray, k: int, filters: Any = None,
                      exclude: Sequence[int] | frozenset[int] = ()) -> Candidates:
        return self.store.search_vector(vector, k, filters, exclude)

    def record(self, image_id: int) -> dict[str, Any]:
        return self.store.record(image_id)

    def image_path(self, image_id: int) -> Path:
        return self.store.image_path(image_id)

    def load_image(self, image_id: int) -> Image.Image:
        return self.store.load_image(image_id)

    def cache_dir(self, name: str) -> Path:
        return self.store.cache_dir(name)

    # --- searching --------------------------------------------------------------------------
    def resolve(self, ref: int | str | Path) -> int:
        """A catalog id from an id, or from the path of an indexed file."""
        if isinstance(ref, int | np.integer) or (isinstance(ref, str) and ref.isdigit()
                                                 and not (self.root / ref).exists()):
            image_id = int(ref)
            if self.catalog.record(image_id) is None:
                raise QueryError(f"no image with id {image_id} in this library")
            return image_id
        p = Path(ref).expanduser()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, self.root / p]
        for c in candidates:
            try:
                rel = c.resolve().relative_to(self.root).as_posix()
            except ValueError:
                continue
            image_id = self.catalog.id_of_path(rel)
            if image_id is not None:
                return image_id
        raise QueryError(f"{ref} is not an indexed image of this library (root {self.root})")

    def make_query(self, text: str | None = None, *, need_pixels: bool = False, **terms: Any) -> Query:
        """The query vector (and pixels, when stages want them) for these terms."""
        return self._builder().build(SearchRequest(text=text, **terms), need_pixels=need_pixels)

    def _builder(self) -> QueryBuilder:
        return QueryBuilder(lambda: self.encoder, self.store, self.resolve)

    def search(self, text: str | None = None, *, request: SearchRequest | None = None,
               **terms: Any) -> list[Hit]:
        """Search by text, image, image+text, an indexed image, or query arithmetic:
        `search("a dog")`, `search(image="q.jpg", text="at night", rerank="superglobal")`,
        or `search(request=SearchRequest(...))`."""
        request = request or SearchRequest(text=text, **terms)
        hits = self.hits(self.run(request))
        if _channels(request) != "vector":
            from loupe.text.store import explain

            why = explain(self.catalog.db, str(request.text), [h.id for h in hits])
            for h in hits:
                h.meta["why"] = why.get(h.id)
        return hits

    def run(self, request: SearchRequest) -> Candidates:
        """The pipeline's ranked candidates for a request (what `search` turns into hits)."""
        if request.k < 1:
            raise QueryError(f"k must be at least 1, got {request.k}")
        stages = _stages(request.rerank)
        channels = _channels(request)
        if channels == "text" and not stages:   # the full-text index alone: no model loads
            from loupe.storage.store import CatalogStore

            store: Any = CatalogStore(self.catalog, None, self.root, self.path)  # type: ignore[arg-type]
            query = Query(np.zeros(0, np.float32), text=str(request.text), filters=request.filters)
            return pipeline.run(query, store, request.k, channels="text")
        # Mid-switch with a fitted bridge: the new model's query over both spaces (loupe/switch).
        bridged = switching.bridged(self)
        space = bridged.target if bridged is not None else None
        store = bridged.store() if bridged is not None else self.store
        built = request
        if channels != "vector":   # the vectors read the words, not the quotes around a phrase
            from loupe.search.text import vector_text

            built = replace(request, text=vector_text(str(request.text)))
        builder = QueryBuilder(lambda: self.tower(*_towers_for(request), space=space), store,
                               self.resolve)
        need_pixels = any(s.needs_pixels for s in stages)
        if request.liked or request.unliked:   # relevance feedback moves the query first
            from loupe.search.answers import with_feedback

            query = with_feedback(built, lambda r: builder.build(r, need_pixels=need_pixels),
                                  store, self.resolve)
        else:
            query = builder.build(built, need_pixels=need_pixels)
        if channels != "vector":   # the text channel reads the query as typed
            query.text = str(request.text).strip()
        self._give_text_bank(stages, query, store, space)
        return pipeline.run(query, store, request.k, stages, request.rerank_depth, request.threshold,
                            channels=channels)

    def _give_text_bank(self, stages: list[Any], query: Query, store: CatalogStore,
                        space: int | None = None) -> None:
        """Stages that calibrate a text query against typical queries (cut-off, hubness) get
        the bank of generic captions, encoded once per space and index generation."""
        needy = [s for s in stages if hasattr(s, "text_bank") and s.text_bank is None]
        if not needy:
            return
        from loupe.search.answers import text_bank
        from loupe.search.stages.hubness import activation_set, is_text_query

        if not is_text_query(query):
            return
        key = (space or self._space_id(), self.vectors_of_space.snapshot().generation)
        if self._text_bank is None or self._text_bank[0] != key:
            # the captions' vectors come from the library's cache after the first time
            self._text_bank = (key, text_bank(self.tower("text", space=space).encode_text, store,
                                              key[0]))
        if self._text_bank[1].hubs is None and any(getattr(s, "mode", "full") != "full"
                                                   for s in needy):
            self._text_bank[1].hubs = activation_set(store, self._text_bank[1])
        for stage in needy:
            stage.text_bank = self._text_bank[1]

    def hits(self, cands: Candidates) -> list[Hit]:
        """Candidates as the user sees them. An id whose row left the catalog since the
        snapshot was taken (a file deleted by a concurrent index run) is skipped."""
        from loupe.search.answers import hit_meta, member_ids

        records = self.catalog.records(cands.ids)
        if cands.members:   # collapsed duplicates are listed with their paths
            records = {**self.catalog.records(np.asarray(member_ids(cands), np.int64)), **records}
        out = []
        for row, (i, s, b) in enumerate(zip(cands.ids, cands.scores, cands.boxes, strict=True)):
            rec = records.get(int(i))
            if rec is None:
                continue
            meta = {k: rec[k] for k in ("width", "height", "format", "date", "camera", "sha256")}
            meta["rel_path"] = rec["path"]
            meta.update(hit_meta(cands, row, records))
            out.append(Hit(int(i), self.root / rec["path"], float(s), b, meta))
        return out

    # --- reporting --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        identity = self.identity or {}
        space = self.catalog.active_space()
        index = self.vectors_of_space.stats() if space is not None else None
        return {
            "library": str(self.path),
            "root": str(self.root),
            "model": identity.get("model_name", self.model),
            "model_identity": identity,
            **self.catalog.counts(space),
            "formats": self.catalog.formats(),
            "library_bytes": size,
            "spaces": [{k: s[k] for k in ("id", "name", "vectors", "active", "identity", "state")}
                       for s in self.catalog.spaces()],
            "index": index,
            "dba": self.catalog.space_state(space).get("dba") if space is not None else None,
            "last_index": self.catalog.get_meta("last_index"),
            # what the models loaded in this process run on (a server's warm text tower)
            "encoders": [runtime_info(e) for e in list(self._encoders.values())],
            "text": self.text_status(),
            "switch": switching.status(self),
            "error_list": self.catalog.errors(),
        }

    # --- switching models (loupe/switch) -----------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Every embedding space: model, weights, pixel pipeline, images embedded / total,
        active, target of a switch, its bridge."""
        return switching.models(self)

    def add_model(self, name: str, weights: str | Path | None = None) -> tuple[int, bool]:
        """The space of a model, created empty when new: (space id, created)."""
        return switching.add_model(self, name, weights)

    def switch_model(self, name: str, weights: str | Path | None = None) -> int:
        """Make a model the target of a switch; `fill_switch` embeds and swaps."""
        return switching.switch_model(self, name, weights)

    def fill_switch(self, progress: Progress | None = None,
                    options: IndexOptions | None = None) -> switching.FillReport:
        """Carry on the switch under way: embed what the target lacks, fit the bridge, swap
        atomically when complete. Interruptible: the next call continues."""
        return switching.fill(self, progress, options=options)

    def switch_status(self) -> dict[str, Any] | None:
        """The model switch under way (target, images embedded / total, bridge), or None."""
        return switching.status(self)

    def drop_model(self, name: str, weights: str | Path | None = None) -> dict[str, Any]:
        """Delete a model's vectors and index files (never the active model's)."""
        return switching.drop_model(self, name, weights)


@contextmanager
def _disk_errors(where: Path) -> Iterator[None]:
    """A full disk ends in one clear line (what was committed before it stays)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc):
            raise
        raise LibraryError(f"the disk holding {where} is full ({exc}); every batch committed "
                           "before is kept: free some space and run the same command again") from None
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise LibraryError(f"the disk holding {where} is full; every batch committed before is "
                           "kept: free some space and run the same command again") from None


def _writable(folder: Path, db_file: Path) -> bool:
    """Can this process write the library (the catalog and its WAL beside it)?"""
    if not os.access(folder, os.W_OK):
        return False
    return not db_file.exists() or os.access(db_file, os.W_OK)


def _batched(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _channels(request: SearchRequest) -> str:
    """The channels a request searches: hybrid for a text query unless it says otherwise; the
    vectors alone for image, indexed-image and arithmetic queries (asking for text there is
    an error)."""
    from loupe.search.text import CHANNELS

    asked = request.channels
    if asked is not None and asked not in CHANNELS:
        raise QueryError(f"channels must be one of {', '.join(CHANNELS)}, got {asked!r}")
    text_query = (request.expr is None and request.image is None and request.like is None
                  and isinstance(request.text, str) and bool(request.text.strip()))
    if asked is None:
        return "hybrid" if text_query else "vector"
    if asked == "text" and request.threshold is not None:
        raise QueryError("a score floor (threshold) is on vector similarity: the text-only search "
                         "has none")
    if asked != "vector" and not text_query:
        raise QueryError(f"the {asked} search needs a text query alone (no image, like or "
                         "query arithmetic)")
    return asked


def _towers_for(request: SearchRequest) -> tuple[str, ...]:
    """The towers a request's terms need: text only for a text query (the common case)."""
    if request.expr is not None:
        return ("image", "text")
    towers = ("text",) if request.text and str(request.text).strip() else ()
    if request.image is not None or (request.like is not None and request.box is not None):
        towers += ("image",)
    return towers or ("text",)


def _stages(spec: Any) -> list[Any]:
    if not spec:
        return []
    from loupe.search import stages

    try:
        return stages.get(spec)
    except ValueError as exc:  # an unknown name or parameter is the user's to fix
        raise QueryError(str(exc)) from None


def _check_same_model(identity: dict[str, Any], spec: ModelSpec, path: Path) -> None:
    if spec.weights is not None:
        if spec.arch != identity.get("arch"):
            raise ModelMismatch(_mismatch_message(identity, {"model": f"{spec.arch}@{spec.weights}"}, path))
        return  # the weights' checksum is compared when the encoder loads
    asked = f"{spec.arch}:{spec.tag}" if spec.tag else spec.arch
    if asked != identity.get("model_name"):
        raise ModelMismatch(_mismatch_message(identity, {"model": asked}, path))


def _mismatch_message(recorded: dict[str, Any], asked: dict[str, Any], path: Path) -> str:
    return (
        f"library {path} was built with model {recorded.get('model_name', recorded.get('model'))} "
        f"({recorded.get('source')}); you asked for {asked.get('model')}"
        + (f" ({asked['source']})" if asked.get("source") else "")
        + ". Vectors of different models cannot be compared: drop --model to use the library's, "
        "`loupe models switch` to move this library to the other model without downtime, "
        "or give a new --library for it."
    )
