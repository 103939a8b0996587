"""`Library`: a folder holding the catalog of one image collection, and the way to search it."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.catalog import Catalog
from loupe.config import CATALOG_FILENAME, DEFAULT_MODEL, LIBRARY_DIRNAME, Filters, IndexOptions
from loupe.decode import load_image
from loupe.encoders import Encoder, ModelSpec, load_encoder
from loupe.index import VectorIndex
from loupe.ingest import IndexReport, Progress, run_index
from loupe.query import QueryError, combine, fuse, parse_expr
from loupe.types import Box, Candidates, Hit, Query


class LibraryError(ValueError):
    """A library that cannot be opened or used as asked."""


class ModelMismatch(LibraryError):
    """The library's vectors come from another model than the one asked for."""


class UnknownImage(LibraryError, KeyError):
    """An id that names no (searchable) image of this library. A KeyError too, for
    callers that look ids up; a LibraryError, so the CLI reports it as the user's."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Snapshot:
    generation: int
    index: VectorIndex
    plain: bool = True      # vectors as stored (no DBA): safe to bring up to date row by row


def find_library(start: Path | None = None) -> Path | None:
    """The nearest `.loupe` folder at or above `start` (default: the current directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / LIBRARY_DIRNAME / CATALOG_FILENAME).is_file():
            return folder / LIBRARY_DIRNAME
    return None


class Library:
    """One collection: its root folder, its catalog and vectors, and its model.

    Reads are safe from many threads while one thread indexes: each search uses
    an immutable snapshot of the vectors, replaced whole when a commit lands.
    """

    def __init__(self, path: Path, catalog: Catalog, root: Path, model: str,
                 weights: Path | None, device: str):
        self.path = path
        self.catalog = catalog
        self.root = root
        self.model = model
        self.weights = weights
        self.device = device
        self._encoder: Encoder | None = None
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self.auto_refresh = True

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, model: str | None = None, weights: str | Path | None = None,
             device: str = "auto", root: str | Path | None = None, create: bool = True) -> Library:
        path = Path(path).expanduser().absolute()
        db_file = path / CATALOG_FILENAME
        if not db_file.exists():
            if not create:
                raise LibraryError(f"no library at {path} (run `loupe index FOLDER` first)")
            if path.exists() and any(path.iterdir()):
                raise LibraryError(f"{path} exists and is not a Loupe library (no {CATALOG_FILENAME})")
            path.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(db_file)
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

        identity = catalog.get_meta("model")
        if identity is None:
            name = model or DEFAULT_MODEL
            if weights is not None and model is None:
                raise LibraryError("--weights needs --model naming its architecture")
        else:
            name = model or identity["model_name"]
            if model is not None:
                _check_same_model(identity, ModelSpec.parse(model, weights), path)
            if weights is None and identity.get("weights_path"):
                weights = identity["weights_path"]
        return cls(path, catalog, the_root, name, Path(weights) if weights else None, device)

    @property
    def identity(self) -> dict[str, Any] | None:
        return self.catalog.get_meta("model")

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                enc = load_encoder(self.model, self.weights, self.device)
                recorded = self.identity
                if recorded is None:
                    self.catalog.set_meta("model", {
                        **enc.identity, "model_name": self.model,
                        "weights_path": str(self.weights.resolve()) if self.weights else None,
                    })
                elif not enc.same_model(recorded):
                    raise ModelMismatch(_mismatch_message(recorded, enc.identity, self.path))
                self._encoder = enc
            return self._encoder

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- indexing ---------------------------------------------------------------------------
    def index(self, options: IndexOptions | None = None, progress: Progress | None = None) -> IndexReport:
        """Bring the catalog up to date with the root folder: embed new and changed files,
        keep vectors of moved ones, drop deleted ones."""
        report = run_index(self.catalog, self.encoder, self.root, options or IndexOptions(), progress)
        self.save_vectors()
        return report

    # --- store side: what rerankers, eval and the server read --------------------------------
    def snapshot(self) -> VectorIndex:
        """The searchable vectors as of the last commit. With `auto_refresh` off (a server
        whose indexer commits every few seconds), the last snapshot is served until
        `refresh()` is called, so no search waits for a rebuild."""
        snap = self._snapshot
        if snap is not None and not self.auto_refresh:
            return snap.index
        return self.refresh()

    def refresh(self) -> VectorIndex:
        """Rebuild the searchable vectors if the catalog changed since the last snapshot:
        from the saved copy when it is of this generation, else from the catalog."""
        gen = self.catalog.generation()
        snap = self._snapshot
        if snap is None or snap.generation != gen:
            ids_file, matrix_file = self._vector_files(gen)
            plain = not self.catalog.get_meta("dba")
            try:
                ids, matrix = np.load(ids_file), np.load(matrix_file, mmap_mode="r")
            except (OSError, ValueError):
                # Labelled with the generation read before loading: whatever commits
                # meanwhile is newer than the label and is fetched by the next refresh.
                if snap is not None and snap.plain and plain:
                    ids, matrix = self._updated(snap)
                else:
                    ids, matrix = self._searchable_matrix()
            snap = _Snapshot(gen, VectorIndex(ids, matrix), plain)
            self._snapshot = snap
        return snap.index

    def _updated(self, snap: _Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """The last snapshot, brought up to date with only the rows written since: what a
        server pays per refresh while it re-indexes (not every vector read again).
        Reads that race a commit converge: a row counts by whether it is searchable now."""
        current = self.catalog.searchable_ids()
        new_ids, new_vecs = self.catalog.load_matrix(self._dim(), since=snap.generation)
        fresh = np.isin(new_ids, current)
        new_ids, new_vecs = new_ids[fresh], new_vecs[fresh]
        old = snap.index
        keep = np.isin(old.ids, current) & ~np.isin(old.ids, new_ids)
        return (np.concatenate([old.ids[keep], new_ids]),
                np.concatenate([old.matrix[keep], new_vecs]))

    def _searchable_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        ids, matrix = self.catalog.load_matrix(self._dim())
        dba = self.catalog.get_meta("dba")
        if dba and len(ids) > 1:
            from loupe.rerank.dba import augment

            matrix = augment(matrix, int(dba["k"]), float(dba["alpha"]))
        return ids, matrix

    def _vector_files(self, gen: int) -> tuple[Path, Path]:
        folder = self.path / "vectors"
        return folder / f"ids-{gen}.npy", folder / f"matrix-{gen}.npy"

    def save_vectors(self) -> None:
        """Save the searchable matrix next to the catalog, so the next process memory-maps it
        instead of reading every vector out of SQLite. Written to a temporary name and
        renamed (atomic); named by generation, so a stale copy is never used."""
        gen = self.catalog.generation()
        ids_file, matrix_file = self._vector_files(gen)
        if ids_file.exists() and matrix_file.exists():
            return
        index = self.refresh()
        if self._snapshot is None or self._snapshot.generation != gen:
            return  # the catalog moved on while loading; the next run saves
        ids_file.parent.mkdir(exist_ok=True)
        for path, array in ((matrix_file, index.matrix), (ids_file, index.ids)):
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array))
            os.replace(tmp, path)
        for old in ids_file.parent.glob("*.npy"):
            if old not in (ids_file, matrix_file):
                old.unlink(missing_ok=True)

    def _dim(self) -> int:
        identity = self.identity
        return int(identity["dim"]) if identity else self.encoder.dim

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        index = self.snapshot()
        return index.ids, index.matrix

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        index = self.snapshot()
        ids = np.asarray(ids, dtype=np.int64)
        pos = index.positions(ids)
        if len(pos) != len(ids):
            missing = np.setdiff1d(ids, index.ids)
            raise UnknownImage(f"no searchable image with id(s) {missing[:5].tolist()}")
        return index.matrix[pos]

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters | None = None,
                      exclude: Sequence[int] | frozenset[int] = ()) -> Candidates:
        allowed = self.catalog.filter_ids(filters) if filters and not filters.is_empty() else None
        return self.snapshot().search(vector, k, allowed=allowed, exclude=exclude)

    def record(self, image_id: int) -> dict[str, Any]:
        rec = self.catalog.record(image_id)
        if rec is None:
            raise UnknownImage(f"no image with id {image_id}")
        return rec

    def image_path(self, image_id: int) -> Path:
        return self.root / self.record(image_id)["path"]

    def load_image(self, image_id: int) -> Image.Image:
        return load_image(self.image_path(image_id))

    def cache_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cache name {name!r}")
        folder = self.path / "cache" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def set_dba(self, k: int | None, alpha: float = 3.0) -> None:
        """Turn database-side augmentation on (k neighbours) or off (None)."""
        self.catalog.set_meta("dba", {"k": int(k), "alpha": float(alpha)} if k else None, bump=True)

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

    def make_query(self, text: str | None = None, *, image: str | Path | Image.Image | None = None,
                   like: int | str | Path | None = None, weight: float = 0.5,
                   expr: str | Sequence[str] | None = None, box: Box | None = None,
                   need_pixels: bool = False) -> Query:
        """Turn what the user gave into a query vector (and pixels, when rerankers want them)."""
        text = text.strip() if isinstance(text, str) else text
        if expr is not None:
            if image is not None or like is not None:
                raise QueryError("query arithmetic already names its images; drop --image/--like")
            return self._expr_query(expr)
        pixels: Image.Image | None = None
        exclude: frozenset[int] = frozenset()
        if like is not None:
            if image is not None:
                raise QueryError("give --image or --like, not both")
            like_id = self.resolve(like)
            exclude = frozenset({like_id})
            if box is not None or need_pixels:
                pixels = self.load_image(like_id)
            img_vec = self.vectors([like_id])[0] if box is None else None
        elif image is not None:
            if isinstance(image, Image.Image):
                pixels = image.convert("RGB")
            else:  # decoded as the indexer decodes, unless a box needs full-size pixels
                size = None if box is not None or need_pixels else self.encoder.image_size
                pixels = load_image(image, reduce_to=size)
            img_vec = None
        else:
            if not text:
                raise QueryError("empty query: give text, an image (--image) or an indexed image (--like)")
            return Query(self.encoder.encode_text([text])[0], text=text)
        if box is not None:
            pixels = _crop(pixels, box)
        if img_vec is None:
            img_vec = self.encoder.encode_images([pixels])[0]
        vec = fuse(img_vec, self.encoder.encode_text([text])[0], weight) if text else img_vec
        return Query(vec, text=text or None, image=pixels, box=box, exclude_ids=exclude)

    def _expr_query(self, expr: str | Sequence[str]) -> Query:
        terms = parse_expr(expr)
        vecs = []
        for t in terms:
            if t.is_image:
                pixels = load_image(t.value, reduce_to=self.encoder.image_size)
                vecs.append(self.encoder.encode_images([pixels])[0])
            else:
                vecs.append(self.encoder.encode_text([t.value])[0])
        label = " ".join(f"{t.weight:+g}:{t.value}" for t in terms)
        return Query(combine(vecs, [t.weight for t in terms]), text=label)

    def search(self, text: str | None = None, *, image: str | Path | Image.Image | None = None,
               like: int | str | Path | None = None, weight: float = 0.5,
               expr: str | Sequence[str] | None = None, k: int = 20, filters: Filters | None = None,
               threshold: float | None = None, rerank: Any = None, rerank_depth: int | None = None,
               box: Box | None = None) -> list[Hit]:
        """Search by text, image, image+text, an indexed image, or query arithmetic."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        rerankers = _rerankers(rerank)
        query = self.make_query(text, image=image, like=like, weight=weight, expr=expr, box=box,
                                need_pixels=any(getattr(r, "needs_pixels", False) for r in rerankers))
        query.filters = filters
        depth = max([k] + [rerank_depth or r.depth for r in rerankers])
        cands = self.search_vector(query.vector, depth, filters, exclude=query.exclude_ids)
        if rerankers:
            from loupe import rerank

            cands = rerank.apply(rerankers, query, cands, self, depth=rerank_depth)
        cands = cands.take(np.arange(min(k, len(cands))))
        if threshold is not None:
            cands = cands.take(np.flatnonzero(cands.scores >= threshold))
        return self.hits(cands)

    def hits(self, cands: Candidates) -> list[Hit]:
        records = self.catalog.records(cands.ids)
        out = []
        for i, s, b in zip(cands.ids, cands.scores, cands.boxes, strict=True):
            rec = records[int(i)]
            meta = {k: rec[k] for k in ("width", "height", "format", "date", "camera", "sha256")}
            meta["rel_path"] = rec["path"]
            out.append(Hit(int(i), self.root / rec["path"], float(s), b, meta))
        return out

    # --- reporting --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        identity = self.identity or {}
        return {
            "library": str(self.path),
            "root": str(self.root),
            "model": identity.get("model_name", self.model),
            "model_identity": identity,
            **self.catalog.counts(),
            "formats": self.catalog.formats(),
            "library_bytes": size,
            "dba": self.catalog.get_meta("dba"),
            "last_index": self.catalog.get_meta("last_index"),
            "error_list": self.catalog.errors(),
        }


def _rerankers(spec: Any) -> list[Any]:
    if not spec:
        return []
    from loupe import rerank

    try:
        return rerank.get(spec)
    except ValueError as exc:  # an unknown name or parameter is the user's to fix
        raise QueryError(str(exc)) from None


def _crop(image: Image.Image, box: Box) -> Image.Image:
    x0, y0, x1, y1 = box
    w, h = image.size
    if x0 >= w or y0 >= h:
        raise QueryError(f"box {box} lies outside the {w}x{h} image")
    return image.crop((int(x0), int(y0), int(min(x1, w)), int(min(y1, h))))


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
        "or give a new --library for the other model."
    )
