"""Milvus behind the `VectorIndex` protocol: the vectors live in a Milvus collection.

    index = MilvusIndex("milvus:/data/photos.milvus.db?index=FLAT", 512)     # Milvus Lite
    index = MilvusIndex("milvus:http://milvus:19530?index=HNSW&ef=128", 512)  # a server/cluster
    index.add(ids, vectors); index.search(q, 10, allowed=some_ids)
    index.save(folder)                       # the connection and collection, not the data
    index = MilvusIndex.load(folder)

Spec: ``milvus:URI[?key=value&...]``. URI is a Milvus Lite database (a local path ending in
``.db``: Milvus Lite runs inside this process; one process per database) or a server address
(``http(s)://host:19530``). Keys:

- ``collection``: prefix of the collection names (default ``loupe``); each built index gets a
  collection of its own, ``<prefix>_<12 hex>``, so a rebuild never disturbs the collection a
  saved snapshot (or another process) still reads;
- ``index``: ``FLAT`` (exact), ``HNSW`` (default), ``HNSW_SQ``, ``IVF_FLAT``, ``IVF_SQ8``, or on
  a server ``DISKANN`` and ``AUTOINDEX``; build knobs ``M`` (32), ``efConstruction`` (200),
  ``nlist`` (1024); search knobs ``ef`` (64; DISKANN's search_list), ``nprobe`` (16);
- ``db``: the database on a server (default: the server's default).
A server's token is read from the environment (``MILVUS_TOKEN``), never from the spec, which the
library records in its catalog.

Milvus holds the data; this object holds the connection and a mirror of the live ids (8 bytes
per vector: `len`, `ids`, and checking `vectors()` requests without a round trip). The
library's SQLite catalog stays the source of truth: a collection that does not match it is
rebuilt from the catalog, as any other index kind would be.

Filters: `allowed` becomes ``id in [...]`` and `exclude` ``id not in [...]``, Milvus boolean
expressions evaluated inside the search (Milvus keeps k results whenever k rows pass). Allowed
sets larger than `MAX_IN_LIST` ids are searched in parts and the parts' top-k merged, which is
exact as far as each part's search is. Results are ordered best first, equal scores to the
lower id, padded with (-1, -inf), as the protocol asks.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from loupe.core.errors import LibraryError
from loupe.index.base import (
    FORMAT,
    as_additions,
    as_ids,
    as_queries,
    current_generation,
    merge_topk,
    save_generation,
    topk,
)

PREFIX = "milvus:"
INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "DISKANN", "AUTOINDEX")
DEFAULTS = {"index": "HNSW", "collection": "loupe", "M": 32, "efConstruction": 200, "ef": 64,
            "nlist": 1024, "nprobe": 16}
INT_KEYS = ("M", "efConstruction", "ef", "nlist", "nprobe")
KNOWN_KEYS = (*DEFAULTS, "db")
# Milvus answers at most 16384 results per query (topk) and per query() call.
MAX_TOPK = 16384
# Rows per insert/upsert call: ~4 MiB of 512-d float32, well under gRPC's message limit.
WRITE_ROWS = 2048
# Ids per `in [...]` expression. Beyond it a filtered search runs once per part of the allowed
# set and merges the parts' top-k (Milvus Lite parses the expression in Python: a 65536-id list
# is ~0.5 MB of text).
MAX_IN_LIST = 65536
# A filtered search that came back with fewer than min(k, allowed) hits (an HNSW graph cut off by
# a very selective filter) is redone with the search widened; if that is still short and at most
# this many rows are allowed, the allowed rows are fetched and scored exactly.
EXACT_FALLBACK_ROWS = 20_000
EF_MAX = 32768
LITE_RETRIES = 3

ID, VEC = "id", "vector"


class MilvusUnavailable(ConnectionError):
    """Milvus could not be reached or opened; the message says which and why."""


def is_milvus(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """(uri, options) of a ``milvus:`` spec; ValueError naming what is wrong."""
    if not is_milvus(spec):
        raise ValueError(f"not a Milvus spec (milvus:URI[?key=value&...]): {spec!r}")
    body = spec[len(PREFIX):]
    uri, _, query = body.partition("?")
    if not uri:
        raise ValueError(f"{spec!r}: give a Milvus Lite file (milvus:/path/loupe.db) "
                         "or a server (milvus:http://host:19530)")
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")) and not uri.endswith(".db"):
        raise ValueError(f"{spec!r}: a Milvus Lite database is a path ending in .db")
    opts: dict[str, Any] = dict(DEFAULTS)
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in KNOWN_KEYS:
            raise ValueError(f"{spec!r}: unknown option {key!r} (known: {', '.join(KNOWN_KEYS)})")
        opts[key] = value
    opts["index"] = str(opts["index"]).upper()
    if opts["index"] not in INDEX_TYPES:
        raise ValueError(f"{spec!r}: index must be one of {', '.join(INDEX_TYPES)}")
    for key in INT_KEYS:
        try:
            opts[key] = int(opts[key])
        except (TypeError, ValueError):
            raise ValueError(f"{spec!r}: {key} must be an integer, not {opts[key]!r}") from None
        if opts[key] < 1:
            raise ValueError(f"{spec!r}: {key} must be positive")
    if not str(opts["collection"]).replace("_", "").isalnum():
        raise ValueError(f"{spec!r}: collection must be letters, digits and _")
    return uri, opts


def is_lite(uri: str) -> bool:
    return uri.endswith(".db") and not uri.startswith(("http://", "https://", "tcp://"))


def require(spec: str) -> None:
    """ValueError for a malformed spec; ImportError naming the extra when the client (or, for
    a .db file, Milvus Lite) is not installed. Imports neither."""
    import importlib.util

    uri, _ = parse_spec(spec)
    missing = [m for m in ("pymilvus", *(("milvus_lite",) if is_lite(uri) else ()))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the Milvus index needs {' and '.join(missing)}: "
                          "pip install 'loupe-search[scale]'")


def absolute_spec(spec: str, base: str | Path | None = None) -> str:
    """The spec with a Milvus Lite path made absolute (relative to `base`, default the current
    folder), as a library should record it: every process then opens the same database."""
    uri, _ = parse_spec(spec)
    if not is_lite(uri) or Path(uri).expanduser().is_absolute():
        return spec
    full = (Path(base or Path.cwd()) / Path(uri).expanduser()).absolute()
    return PREFIX + str(full) + spec[len(PREFIX) + len(uri):]


class MilvusIndex:
    """A Milvus collection behind the `VectorIndex` protocol (see the module doc)."""

    kind = "milvus"

    def __init__(self, spec: str, dim: int, *, collection: str | None = None, **options: Any):
        if options:
            raise TypeError(f"Milvus options go in the spec (milvus:URI?ef=...), "
                            f"not {sorted(options)}")
        self.spec = spec
        self.dim = int(dim)
        self.uri, self.opts = parse_spec(spec)
        self.collection = collection or f"{self.opts['collection']}_{uuid.uuid4().hex[:12]}"
        self.recall_at_10: float | None = None
        self.rebuilds = 0
        self._ids = np.zeros(0, np.int64)      # sorted live ids (the mirror)
        self._client: Any = None
        self._created = False
        self._private = False   # created by this object and never saved: only it writes there
        self._lock = threading.RLock()

    # -- connection ----------------------------------------------------------------------------

    @property
    def client(self):
        """The pymilvus client, connected on first use (Milvus Lite starts in this process)."""
        if self._client is None:
            try:
                from pymilvus import MilvusClient
            except ImportError:
                raise ImportError("the Milvus index needs pymilvus (and milvus-lite for a .db "
                                  "file): pip install 'loupe-search[scale]'") from None
            kwargs: dict[str, Any] = {}
            if not is_lite(self.uri):
                if os.environ.get("MILVUS_TOKEN"):
                    kwargs["token"] = os.environ["MILVUS_TOKEN"]
                if self.opts.get("db"):
                    kwargs["db_name"] = self.opts["db"]
            else:
                Path(self.uri).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
            try:
                self._client = MilvusClient(self.uri, **kwargs)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException
                hint = (" (Milvus Lite serves one process per database file: is another Loupe "
                        "process using it? For several processes use a Milvus server)"
                        if is_lite(self.uri) else "")
                raise MilvusUnavailable(f"cannot open Milvus at {self.uri}{hint}: {exc}") from exc
        return self._client

    def _ensure(self, indexed: bool = True) -> None:
        """Create the collection (first write of a fresh index); `indexed=False` leaves the
        vector index to `_index_and_load` (a bulk load: one index build after the inserts)."""
        if self._created:
            return
        from pymilvus import DataType

        c = self.client
        if not c.has_collection(self.collection):
            self._private = True
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID, DataType.INT64, is_primary=True)
            schema.add_field(VEC, DataType.FLOAT_VECTOR, dim=self.dim)
            if indexed:
                c.create_collection(self.collection, schema=schema,
                                    index_params=self._index_params(),
                                    consistency_level="Strong")
            else:
                c.create_collection(self.collection, schema=schema, consistency_level="Strong")
        self._created = True

    def _index_params(self):
        params = self.client.prepare_index_params()
        params.add_index(field_name=VEC, index_type=self.opts["index"], metric_type="IP",
                         params=self._build_params())
        return params

    def _index_and_load(self) -> None:
        """After a bulk load: seal what was inserted, build the index once, load."""
        c = self.client
        self._retry(c.flush, self.collection)
        try:
            c.create_index(self.collection, self._index_params())
        except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException
            # pymilvus retries a call whose connection dropped (a long index build outlives
            # the gRPC keepalive): the retry finds the index the first call made.
            if "already exists" not in str(exc):
                raise
        c.load_collection(self.collection)

    def _build_params(self) -> dict[str, Any]:
        t, o = self.opts["index"], self.opts
        if t in ("HNSW", "HNSW_SQ"):
            out = {"M": o["M"], "efConstruction": o["efConstruction"]}
            return {**out, "sq_type": "SQ8"} if t == "HNSW_SQ" else out
        if t in ("IVF_FLAT", "IVF_SQ8"):
            return {"nlist": o["nlist"]}
        return {}

    def _search_params(self, k: int, widen: bool = False, share: float = 1.0) -> dict[str, Any]:
        """Search breadth for top-k when `share` of the rows pass the filter: the graph's ef
        (IVF's nprobe) grows as 1/share, as FAISS's selector searches do, because a walk that
        may only keep 1 row in 100 must visit ~100 times as many to find k of them (measured:
        with ef=64 a 1% filter on 100k rows gave recall@10 0.435, benchmarks/results/scale.json).
        `widen` (a search that came back short) asks for 16 times more again."""
        t, o = self.opts["index"], self.opts
        boost = (16.0 if widen else 1.0) / min(1.0, max(share, 1e-9))
        params: dict[str, Any] = {}
        if t in ("HNSW", "HNSW_SQ", "DISKANN"):
            ef = max(o["ef"], k)
            ef = min(max(math.ceil(ef * boost), k), max(EF_MAX, k))
            params["search_list" if t == "DISKANN" else "ef"] = ef
        elif t in ("IVF_FLAT", "IVF_SQ8"):
            params["nprobe"] = min(math.ceil(min(o["nprobe"], o["nlist"]) * boost), o["nlist"])
        return {"metric_type": "IP", "params": params}

    def flush(self) -> None:
        """Seal what was written: Milvus builds the ANN index of sealed segments (Milvus Lite
        searches rows not yet flushed by brute force)."""
        with self._lock:
            if self._created:
                self._retry(self.client.flush, self.collection)

    def drop(self) -> None:
        """Delete the collection and forget its rows (benchmarks and tests clean up with it)."""
        with self._lock:
            if self.client.has_collection(self.collection):
                self._retry(self.client.drop_collection, self.collection)
            self._ids = np.zeros(0, np.int64)
            self._created = False

    def release(self, saved: bool = False) -> None:
        """What the library does with an index it replaces: drop the collection if this object
        made it and never saved it (no other process can be reading it), or with `saved`, the
        collection of a save that was just replaced by another kind of index."""
        with self._lock:
            if (self._private or saved) and self._created:
                self.drop()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the protocol --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids.copy()

    @property
    def tombstones(self) -> int:
        return 0

    def add(self, ids, vectors) -> None:
        ids, rows = as_additions(ids, vectors, self.dim)
        if len(ids) == 0:
            return
        with self._lock:
            self._ensure()
            # Plain inserts only into a collection no other process has seen (created here and
            # never saved): Milvus does not check primary keys on insert, so anywhere else an
            # id the mirror does not know yet may be in the collection, and upsert is the safe
            # write.
            present = self._contains(ids) if self._private else np.ones(len(ids), bool)
            for mask, write in ((~present, self.client.insert), (present, self.client.upsert)):
                sel = np.flatnonzero(mask)
                for s in range(0, len(sel), WRITE_ROWS):
                    part = sel[s: s + WRITE_ROWS]
                    write(self.collection, [{ID: int(i), VEC: r}
                                            for i, r in zip(ids[part], rows[part], strict=True)])
            self._ids = np.union1d(self._ids, ids)

    def remove(self, ids) -> None:
        ids = np.unique(as_ids(ids))
        with self._lock:
            ids = ids[self._contains(ids)]
            if len(ids) == 0:
                return
            for s in range(0, len(ids), WRITE_ROWS * 8):
                self.client.delete(self.collection, ids=ids[s: s + WRITE_ROWS * 8].tolist())
            self._ids = np.setdiff1d(self._ids, ids, assume_unique=True)

    def vectors(self, ids) -> np.ndarray:
        ids = as_ids(ids)
        with self._lock:
            found = self._contains(ids)
            if not found.all():
                missing = ids[~found]
                raise KeyError(f"ids not in the index: {missing[:20].tolist()}"
                               + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
            uniq = np.unique(ids)
            got: dict[int, np.ndarray] = {}
            for s in range(0, len(uniq), MAX_TOPK // 2):
                part = uniq[s: s + MAX_TOPK // 2].tolist()
                for row in self._retry(self.client.query, self.collection, ids=part,
                                       output_fields=[ID, VEC]):
                    got[int(row[ID])] = np.asarray(row[VEC], np.float32)
        missing = [int(i) for i in uniq if int(i) not in got]
        if missing:
            raise KeyError(f"ids in the mirror but not in Milvus collection {self.collection}: "
                           f"{missing[:20]} (rebuild the index from the catalog)")
        out = np.empty((len(ids), self.dim), np.float32)
        for n, i in enumerate(ids.tolist()):
            out[n] = got[i]
        return out

    def search(self, queries, k: int, allowed=None, exclude=None):
        q, k, single = as_queries(queries, k, self.dim)
        if k > MAX_TOPK - 1:
            raise ValueError(f"Milvus returns at most {MAX_TOPK - 1} results per query here, "
                             f"not {k}")
        ids, scores = self._search(q, k, allowed, exclude)
        return (ids[0], scores[0]) if single else (ids, scores)

    def _search(self, q: np.ndarray, k: int, allowed, exclude):
        n = len(q)
        empty = topk(np.zeros((n, 0), np.float32), np.zeros(0, np.int64), k)
        with self._lock:
            if k == 0:
                return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
            excl = np.unique(as_ids(exclude)) if exclude is not None else np.zeros(0, np.int64)
            excl = excl[self._contains(excl)]
            if allowed is None:
                avail = len(self._ids) - len(excl)
                if avail <= 0 or not self._created:
                    return empty
                expr = _not_in(excl) if len(excl) else ""
                return self._filtered(q, k, [(expr, avail)], None)
            allow = np.unique(as_ids(allowed))
            allow = allow[self._contains(allow)]
            if len(excl):
                allow = np.setdiff1d(allow, excl, assume_unique=True)
            if len(allow) == 0 or not self._created:
                return empty
            parts = [allow[s: s + MAX_IN_LIST] for s in range(0, len(allow), MAX_IN_LIST)]
            return self._filtered(q, k, [(_in(p), len(p)) for p in parts], allow)

    def _filtered(self, q: np.ndarray, k: int, exprs: list[tuple[str, int]],
                  allow: np.ndarray | None):
        """Top-k under each expression (the parts of one filter, with how many rows each
        lets through), merged; short rows redone."""
        best = None
        avail = sum(n for _, n in exprs)
        total = max(len(self._ids), 1)
        for expr, n in exprs:
            part = self._milvus_search(q, k, expr, widen=False, share=n / total)
            best = part if best is None else merge_topk(best, part, k)
        ids, scores = best
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, avail))
        if len(short) and self.opts["index"] != "FLAT":
            redo = None
            for expr, n in exprs:
                part = self._milvus_search(q[short], k, expr, widen=True, share=n / total)
                redo = part if redo is None else merge_topk(redo, part, k)
            ids[short], scores[short] = redo
            short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, avail))
        if len(short) and allow is not None and len(allow) <= EXACT_FALLBACK_ROWS:
            rows = self.vectors(allow)
            ids[short], scores[short] = topk(q[short] @ rows.T, allow, k)
        return ids, scores

    def _milvus_search(self, q: np.ndarray, k: int, expr: str, widen: bool,
                       share: float = 1.0):
        """One Milvus search of all queries -> (ids, scores) [n, k], best first, equal scores
        to the lower id, padded. (Which of several rows tied at the k-th place Milvus returns
        is its choice; inner products of equal vectors also differ in the last bits between
        batched and single searches, in Milvus as in numpy.)"""
        res = self._retry(self.client.search, self.collection, data=[row for row in q],
                          limit=k, filter=expr, output_fields=[ID], anns_field=VEC,
                          search_params=self._search_params(k, widen, share))
        n = len(q)
        ids = np.full((n, k), -1, np.int64)
        sc = np.full((n, k), -np.inf, np.float32)
        for r, hits in enumerate(res):
            for j, h in enumerate(hits[:k]):
                ids[r, j] = int(h["id"])
                sc[r, j] = np.float32(h["distance"])
        return topk(sc, ids, k)

    def _retry(self, fn, *args, **kwargs):
        """Reads, flushes and drops, retried on Milvus Lite's race between its background
        compaction and the index build of a segment it just merged away (milvus-lite 3.2.2
        answers "[Errno 2] No such file or directory: '<segment>.vector.hnsw.idx'" now and
        then, seen on flush and drop_collection after inserts of 100k-1M rows)."""
        for attempt in range(LITE_RETRIES + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException
                if (attempt == LITE_RETRIES or not is_lite(self.uri)
                        or "No such file or directory" not in str(exc)):
                    # One line naming where and what, as every Loupe error: the faces print
                    # it instead of a gRPC traceback.
                    raise LibraryError(f"Milvus at {self.uri} failed ({getattr(fn, '__name__', fn)} "
                                       f"on collection {self.collection}): {exc}") from exc
                time.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        if len(self._ids) == 0 or len(ids) == 0:
            return np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        return self._ids[at] == ids

    # -- size, persistence ---------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        t = self.opts["index"]
        keys = {"HNSW": ("M", "efConstruction", "ef"), "HNSW_SQ": ("M", "efConstruction", "ef"),
                "IVF_FLAT": ("nlist", "nprobe"), "IVF_SQ8": ("nlist", "nprobe"),
                "DISKANN": ("ef",)}.get(t, ())
        return {"index_type": t, "collection": self.collection, **{k: self.opts[k] for k in keys}}

    def stats(self) -> dict[str, Any]:
        out = {"spec": self.spec, "kind": self.kind, "dim": self.dim, "count": len(self),
               "tombstones": 0, "ram_bytes": int(self._ids.nbytes), "disk_bytes": self._disk(),
               "rebuilds": self.rebuilds, "params": self.params(),
               "server": "milvus-lite" if is_lite(self.uri) else self.uri}
        if self.recall_at_10 is not None:
            out["recall_at_10"] = float(self.recall_at_10)
        return out

    def _disk(self) -> int:
        """Bytes of this collection in a Milvus Lite database (0 for a server: Milvus's own)."""
        if not is_lite(self.uri):
            return 0
        folder = Path(self.uri).expanduser() / "collections" / self.collection
        if not folder.is_dir():
            return 0
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "spec": self.spec, "dim": self.dim, "kind": self.kind,
                "collection": self.collection, "params": self.params(), "count": len(self),
                "recall_at_10": self.recall_at_10, "rebuilds": self.rebuilds}

    def save(self, folder) -> None:
        """Persist the connection: a new generation folder holding meta.json (spec, collection,
        count) and the id mirror (ids.npy), switched to atomically as the other kinds do. The
        data is Milvus's: it is flushed first. Collections named by the generations this save
        replaces are dropped."""
        folder = Path(folder)
        with self._lock:
            self.flush()
            self._private = False
            older = _saved_collections(folder) if folder.is_dir() else []

            def write(tmp: Path) -> None:
                np.save(tmp / "ids.npy", self._ids)
                (tmp / "meta.json").write_text(json.dumps(self.meta(), indent=1))

            save_generation(folder, write)
            for (uri, name) in older:
                if name != self.collection and uri == self.uri and \
                        self.client.has_collection(name):
                    self._retry(self.client.drop_collection, name)

    @classmethod
    def load(cls, folder) -> MilvusIndex:
        """Reconnect to the collection a save names. The id mirror comes from the save when
        Milvus holds as many rows (one count query), else it is read back from Milvus."""
        gen = current_generation(Path(folder))
        meta = json.loads((gen / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("kind") != cls.kind:
            raise ValueError(f"{gen}: not a saved Milvus index")
        index = cls(meta["spec"], int(meta["dim"]), collection=meta["collection"])
        index.recall_at_10 = meta.get("recall_at_10")
        index.rebuilds = int(meta.get("rebuilds", 0))
        c = index.client
        if not c.has_collection(index.collection):
            if meta.get("count"):
                raise FileNotFoundError(f"Milvus collection {index.collection} at {index.uri} "
                                        "is gone (rebuild the index from the catalog)")
            return index
        c.load_collection(index.collection)
        index._created = True
        saved = gen / "ids.npy"
        ids = np.load(saved) if saved.exists() else None
        if ids is not None and len(ids) == index._count():
            index._ids = ids
        else:
            index._ids = index._read_ids()
        return index

    def _count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _read_ids(self) -> np.ndarray:
        it = self.client.query_iterator(self.collection, batch_size=MAX_TOPK // 2,
                                        output_fields=[ID])
        parts = []
        try:
            while True:
                rows = it.next()
                if not rows:
                    break
                parts.append(np.fromiter((int(r[ID]) for r in rows), np.int64, len(rows)))
        finally:
            it.close()
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _saved_collections(folder: Path) -> list[tuple[str, str]]:
    """(uri, collection) named by the saves in `folder` (normally one)."""
    out = []
    for gen in folder.glob("gen-*"):
        try:
            meta = json.loads((gen / "meta.json").read_text())
            out.append((parse_spec(meta["spec"])[0], meta["collection"]))
        except (OSError, ValueError, KeyError):
            continue
    return out


def _in(ids: np.ndarray) -> str:
    return f"{ID} in [{','.join(map(str, ids.tolist()))}]"


def _not_in(ids: np.ndarray) -> str:
    return f"{ID} not in [{','.join(map(str, ids.tolist()))}]"


def build(spec: str, dim: int, ids=None, vectors=None, **options: Any) -> MilvusIndex:
    """A fresh collection for `spec`, filled with (ids, vectors) when given: what
    `loupe.index.build` does for a ``milvus:`` spec."""
    require(spec)
    index = MilvusIndex(spec, dim, **options)
    if ids is not None or vectors is not None:
        if ids is None or vectors is None:
            raise ValueError("give both ids and vectors, or neither")
        if len(as_ids(ids)):
            # A bulk load: insert into an unindexed collection, then build the index once
            # (Milvus's advice for large loads; and Milvus Lite 3.2.2 otherwise races its
            # background compaction against per-segment index builds during the inserts).
            index._ensure(indexed=False)
            index.add(ids, vectors)
            index._index_and_load()
    return index
