"""Index a folder on a Ray cluster: the same plan, the same pure steps, the same commit.

    report = run_index_ray(catalog, plan, root, options, space=..., encoder=...,
                           image_size=..., model="ViT-B-32:laion2b_s34b_b79k",
                           address="ray://head:10001", num_gpus=1, actors=(1, 8))

What runs where:

- here (the driver): the plan (scan + catalog diff), the deletions, and every commit. Results
  come back in batches through `loupe.ingest.apply.commit`, one SQLite transaction per batch,
  so the catalog, the report and the crash behaviour are the local executor's.
- Ray Data map tasks (CPU): read the bytes, hash them, and for content the space has no vector
  for, decode and prepare the model input. This is `loupe.ingest.embed.read`, the function the
  local executor runs in its threads, on the same pixel pipeline (the space's identity).
- a Ray Data actor pool (CPU or GPU, `num_gpus` per actor): each actor loads the model once by
  its identity (name + weights) and embeds batches with `loupe.ingest.embed.embed`. An actor
  refuses to start when the model it loaded is not the space's (its vectors would not compare).

Ray Data streams between the stages with back-pressure: decoded pixels wait in the object
store only as long as the actors are busy, and the driver's commit rate bounds the whole run.
An actor or task that dies is restarted and its batch retried by Ray (Ray Data's defaults for
actor pools: unlimited restarts and task retries); if the driver dies, the next run plans again
and embeds only what was not committed.

Workers read files as `worker_root / relative path`: the folder must be visible to every node at
that path (a shared file system; `worker_root` when it is mounted elsewhere than on the driver),
and `weights` (a local file) must be readable at the same path on every node.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.config import IndexOptions
from loupe.core.errors import LibraryError, ModelError
from loupe.ingest import embed as emb
from loupe.ingest.apply import IndexReport
from loupe.ingest.embed import Item
from loupe.ingest.plan import Plan
from loupe.ingest.run import Batches, Progress, begin, finish
from loupe.media.scan import FileEntry
from loupe.storage.catalog import Catalog

# Files per read task (one input block each): small enough that a slow file does not hold up
# many others, large enough that task overhead (a few ms) stays small against decoding (tens of
# ms per photo). Small runs are cut into more, smaller blocks so that every core decodes.
READ_BATCH = 16
MIN_BLOCKS = 16
# Memory each read task asks Ray for: a worker process with Pillow decoding one large photo
# (Ray schedules by it; it also keeps Ray Data from fusing the read tasks into the embed actors,
# which it does when both stages ask for the same resources: then each actor would decode and
# embed in turn instead of side by side).
READ_TASK_MEMORY = 512 * 1024**2
# Files per Ray Data pipeline: the input of one chunk sits in the object store at a time.
CHUNK_FILES = 200_000
# A commit carries at most this many rows (moves and copies carry no pixels and are cheap).
MAX_COMMIT_ROWS = 1024

__all__ = ["RayIndexStats", "connect", "executor", "require_ray", "run_index_ray"]

log = logging.getLogger("loupe.ingest.ray")


class RayIndexStats(dict):
    """What the Ray side did, attached to the report as `report.ray`: `embedded_by` (images
    embedded per "host:pid" of an embedding actor), `actor_init_s` (each actor's model load),
    `read_s` / `embed_s` (worker seconds spent reading + decoding + preparing, and in the
    model, summed over files), `first_to_last_result_s`, and `resources` (the cluster's)."""


# What `Library.index(runner="ray", ray_options=...)` passes on to `run_index_ray`.
OPTIONS = ("actors", "num_gpus", "cpus_per_actor", "worker_root", "runtime_env", "backend",
           "device", "num_cpus")


def require_ray() -> None:
    """LibraryError naming the extra when Ray Data is not installed (checked without importing
    Ray, which takes seconds)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise LibraryError("indexing on Ray needs Ray Data: pip install 'loupe-search[scale]' "
                           "(or pip install 'ray[data]')")


def executor(model: str, weights: str | Path | None, address: str | None = None,
             options: Mapping[str, Any] | None = None) -> Callable[..., IndexReport]:
    """`run_index_ray` bound to a library's model and to the Ray options, with the same call as
    `run_index`. Every option is checked here, before the caller plans or loads anything."""
    require_ray()
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise LibraryError(f"unknown Ray option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    actors = opts.get("actors")
    if actors is not None:
        sizes = [actors] if isinstance(actors, int) else list(actors)
        if (len(sizes) not in (1, 2) or not all(isinstance(a, int) and a >= 1 for a in sizes)
                or sizes != sorted(sizes)):
            raise LibraryError(f"Ray actors must be a count >= 1 or (min, max), not {actors!r}")
        opts["actors"] = actors if isinstance(actors, int) else tuple(sizes)
    for key in ("num_gpus", "cpus_per_actor"):
        if key in opts and not (isinstance(opts[key], int | float) and opts[key] >= 0):
            raise LibraryError(f"Ray {key} must be a number >= 0, not {opts[key]!r}")
    if address is not None and not str(address).strip():
        raise LibraryError("the Ray address is empty (give 'auto', HOST:6379 or ray://HOST:10001)")
    return functools.partial(run_index_ray, model=model, weights=weights, address=address, **opts)


def connect(address: str | None = None, *, num_cpus: int | None = None,
            runtime_env: dict[str, Any] | None = None, **init_kwargs: Any) -> None:
    """Join the Ray cluster at `address` ("auto", "ray://head:10001", "head:6379"), or start a
    local instance (address None) with `num_cpus`. Reuses a connection this process already has."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, **init_kwargs}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise LibraryError(
                f"cannot join the Ray cluster at {address}: {exc}. A cluster with token "
                "authentication (Ray 2.5x and later) needs RAY_AUTH_MODE=token and its token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN); nothing was changed") from None


def run_index_ray(catalog: Catalog, plan: Plan, root: Path, options: IndexOptions, *,
                  space: Callable[[], int], encoder: Callable[[], Any], image_size: int | None,
                  model: str, weights: str | Path | None = None, device: str | None = None,
                  backend: str = "auto", address: str | None = None,
                  actors: int | tuple[int, int] | None = None, num_gpus: float = 0.0,
                  cpus_per_actor: float = 1.0, worker_root: str | Path | None = None,
                  runtime_env: dict[str, Any] | None = None, num_cpus: int | None = None,
                  progress: Progress | None = None,
                  identity: dict[str, Any] | None = None) -> IndexReport:
    """Carry out `plan` with Ray Data doing the reading, decoding and embedding.

    catalog, plan, root, options, space, encoder, image_size, progress: as `run_index`.
    `encoder()` is called only for a library that has no space yet (the model names it);
    otherwise the driver loads no model and the space's recorded identity is what workers
    check theirs against. model, weights, backend: how each actor loads the model (the
    library's `model` and `weights`). device: the actors' device (default "cuda" when
    `num_gpus` > 0, else "cpu"). actors: the embed pool's size, or (min, max) to let Ray Data
    scale it; default (1, the cluster's GPUs / num_gpus), or on CPUs (1, half the cluster's
    CPUs / cpus_per_actor), the other half decoding (1 on a 2-core machine). Keep
    actors x cpus_per_actor below the CPUs, or no read task can run. address / num_cpus /
    runtime_env: see `connect`. identity: accepted for `run_index`'s call and not needed: the
    read tasks prepare pixels from the space's recorded identity.
    """
    started = time.perf_counter()
    total = len(plan.todo)
    if total:   # first: a cluster that cannot be joined changes nothing
        connect(address, num_cpus=num_cpus, runtime_env=runtime_env)
    report, state, image_size = begin(catalog, plan, space=space, encoder=encoder,
                                      image_size=image_size)
    report.ray = RayIndexStats(embedded_by={}, resources={})
    if progress:
        progress(0, total)
    if total:
        recorded = dict(catalog.space(state.space)["identity"])
        rows = _pipeline(plan.todo, state.known, recorded, options,
                         worker_root=str(worker_root or root), model=model,
                         weights=str(weights) if weights else None,
                         device=device or ("cuda" if num_gpus else "cpu"), backend=backend,
                         actors=actors, num_gpus=num_gpus, cpus_per_actor=cpus_per_actor)
        try:
            batches = Batches(catalog, state, report, root, options, total, progress,
                              max_rows=MAX_COMMIT_ROWS)
            report.ray = _commit_all(rows, batches)
        finally:
            rows.close()   # an interrupted run stops the Ray Data execution it started
    return finish(catalog, plan, report, started, executor="ray")


def _commit_all(rows: Iterator[dict[str, Any]], batches: Batches) -> RayIndexStats:
    """Rows as they arrive -> Items -> commits; what the workers reported, summed."""
    workers: dict[str, int] = {}
    times = {"read_s": 0.0, "embed_s": 0.0}
    init: dict[str, float] = {}
    first = last = None
    for row in rows:
        last = time.perf_counter()
        first = first or last
        times["read_s"] += float(row["read_s"])
        times["embed_s"] += float(row["embed_s"])
        if row["worker"]:
            workers[row["worker"]] = workers.get(row["worker"], 0) + 1
            init[row["worker"]] = round(float(row["init_s"]), 2)
        batches.add(_item(row))
    batches.flush()
    if batches.done != batches.total:   # Ray Data lost or duplicated rows: never silently
        raise RuntimeError(f"Ray returned {batches.done} results for {batches.total} files")
    import ray

    return RayIndexStats(embedded_by=workers, resources=dict(ray.cluster_resources()),
                         actor_init_s=init, read_s=round(times["read_s"], 2),
                         embed_s=round(times["embed_s"], 2),
                         first_to_last_result_s=round((last or 0) - (first or 0), 2))


# ---------------------------------------------------------------------------------------------
# the pipeline


def _pipeline(todo: list[FileEntry], known: set[str], identity: dict[str, Any],
              options: IndexOptions, *, worker_root: str, model: str, weights: str | None,
              device: str, backend: str, actors: int | tuple[int, int] | None,
              num_gpus: float, cpus_per_actor: float) -> Iterator[dict[str, Any]]:
    """Results of every file of `todo`, as they come (in no particular order): one Ray Data
    pipeline per CHUNK_FILES files, so the driver never holds more than one chunk's input in
    the object store."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False         # progress is the caller's (one line per commit)
    ctx.print_on_execution_start = False
    # The contents the space held when the run began, as one sorted array of 32-byte digests:
    # one copy in the object store, read zero-copy by every task (a Python set would be
    # unpickled by every task). Content new in this run is not in it: files with the same new
    # content are each embedded (the commit keeps one vector; `copies` counts the others).
    known_ref = ray.put(_digests(known))
    res = ray.cluster_resources()
    if num_gpus and res.get("GPU", 0) < num_gpus:
        log.warning("the embedding actors ask for %s GPU each and the Ray cluster has %s: they "
                    "wait until the cluster gets one", num_gpus, res.get("GPU", 0))
    smallest = actors if isinstance(actors, int) else (actors or (1,))[0]
    if smallest * cpus_per_actor > res.get("CPU", 0) - 1:
        log.warning("%s embedding actor(s) of %s CPU leave less than one of the cluster's %s CPUs "
                    "for reading: the run waits until the cluster grows", smallest,
                    cpus_per_actor, res.get("CPU", 0))
    if actors is None:
        cap = max(1, int(_cluster_capacity(num_gpus, cpus_per_actor)))
        actors = (1, cap) if cap > 1 else 1
    for start in range(0, len(todo), CHUNK_FILES):
        chunk = todo[start: start + CHUNK_FILES]
        items = [{"rel": e.rel, "size": e.size, "mtime": e.mtime} for e in chunk]
        per_block = min(READ_BATCH, max(1, math.ceil(len(items) / MIN_BLOCKS)))
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_block))
        del items
        ds = ds.map_batches(
            _read_batch, batch_size=None, batch_format="numpy", num_cpus=1,
            memory=READ_TASK_MEMORY,
            fn_kwargs={"root": worker_root, "known_ref": known_ref, "identity": identity,
                       "max_file_bytes": options.max_file_bytes,
                       "max_pixels": options.max_pixels, "model": model, "weights": weights,
                       "backend": backend})
        pool = (ray.data.ActorPoolStrategy(size=actors) if isinstance(actors, int)
                else ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]))
        ds = ds.map_batches(
            _Embedder, batch_size=options.batch_size, batch_format="numpy", compute=pool,
            num_gpus=num_gpus or None, num_cpus=cpus_per_actor,
            fn_constructor_kwargs={"model": model, "weights": weights, "device": device,
                                   "backend": backend, "identity": identity,
                                   "threads": max(1, int(cpus_per_actor))})
        for batch in ds.iter_batches(batch_size=options.batch_size, batch_format="numpy",
                                     prefetch_batches=1):
            for i in range(len(batch["rel"])):
                yield {k: batch[k][i] for k in batch}


def _cluster_capacity(num_gpus: float, cpus_per_actor: float) -> float:
    import ray

    res = ray.cluster_resources()
    if num_gpus:
        return res.get("GPU", 0) / num_gpus
    return max(1.0, res.get("CPU", 1) / 2 / cpus_per_actor)   # half the CPUs read and decode


def _digests(known: set[str]) -> np.ndarray:
    arr = np.array(sorted(bytes.fromhex(h) for h in known), dtype="S32")
    return arr if len(arr) else np.zeros(0, "S32")


class _SortedHashes:
    """`sha in known` over a sorted array of digests (what `embed.read` asks of `known`)."""

    def __init__(self, digests: np.ndarray):
        self.digests = digests

    def __contains__(self, sha: object) -> bool:
        if not isinstance(sha, str) or not len(self.digests):
            return False
        d = np.array(bytes.fromhex(sha), dtype="S32")
        at = int(np.searchsorted(self.digests, d))
        return at < len(self.digests) and self.digests[at] == d


# One encoder per worker process, for pixel pipelines `preprocess.prepare` does not cover.
_PREPARE_ENCODER: dict[tuple[Any, ...], Any] = {}


def _prepare_fn(identity: Mapping[str, Any], model: str, weights: str | None,
                backend: str) -> Callable[[Any], np.ndarray]:
    from loupe.models import preprocess

    if preprocess.supports(identity):
        return lambda image: preprocess.prepare(image, identity)
    key = (model, weights, backend)
    if key not in _PREPARE_ENCODER:
        from loupe.models import load_encoder

        _PREPARE_ENCODER[key] = load_encoder(model, weights, "cpu", backend=backend,
                                             towers=("image",), threads=1)
    return _PREPARE_ENCODER[key].prepare


def _read_batch(batch: dict[str, np.ndarray], *, root: str, known_ref: Any,
                identity: dict[str, Any], max_file_bytes: int, max_pixels: int, model: str,
                weights: str | None, backend: str) -> dict[str, np.ndarray]:
    """Map task: read, hash, and (new content only) decode + prepare. Pixels travel as bytes
    (absent: b"") so that rows without pixels cost nothing in the object store."""
    import ray

    known = _SortedHashes(ray.get(known_ref))
    prepare = _prepare_fn(identity, model, weights, backend)
    out: dict[str, list[Any]] = {k: [] for k in ("rel", "size", "mtime", "sha", "meta", "error",
                                                  "reused", "pixels", "read_s")}
    base = Path(root)
    for rel, size, mtime in zip(batch["rel"], batch["size"], batch["mtime"], strict=True):
        entry = FileEntry(str(rel), int(size), float(mtime))
        t = time.perf_counter()
        it = emb.read(entry, base, known=known, max_file_bytes=max_file_bytes,
                      max_pixels=max_pixels, image_size=int(identity["image_size"]),
                      prepare=prepare)
        out["read_s"].append(time.perf_counter() - t)
        out["rel"].append(entry.rel)
        out["size"].append(entry.size)
        out["mtime"].append(entry.mtime)
        out["sha"].append(it.sha or "")
        out["meta"].append(json.dumps(it.meta) if it.meta is not None else "")
        out["error"].append(it.error or "")
        out["reused"].append(it.reused)
        out["pixels"].append(np.ascontiguousarray(it.pixels, np.float32).tobytes()
                             if it.pixels is not None else b"")
    return _columns(out)


def _columns(out: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for k, v in out.items():
        if k in ("pixels", "vector"):
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            cols[k] = arr
        elif k == "size":
            cols[k] = np.asarray(v, np.int64)
        elif k in ("mtime", "read_s"):
            cols[k] = np.asarray(v, np.float64)
        elif k == "reused":
            cols[k] = np.asarray(v, bool)
        else:
            cols[k] = np.asarray(v, dtype=object)
    return cols


class _Embedder:
    """Actor: loads the model once, checks it is the space's, embeds batches of pixels."""

    def __init__(self, *, model: str, weights: str | None, device: str, backend: str,
                 identity: dict[str, Any], threads: int):
        from loupe.models import load_encoder, space_key

        started = time.perf_counter()
        self.encoder = load_encoder(model, weights, device, backend=backend, towers=("image",),
                                    threads=threads if device == "cpu" else None)
        if space_key(self.encoder.identity) != space_key(identity):
            raise ModelError(
                f"the Ray worker on {socket.gethostname()} loaded {model} as "
                f"{space_key(self.encoder.identity)}, not the library's space "
                f"{space_key(identity)}: its vectors would not compare")
        if device == "cpu" and self.encoder.backend == "torch":
            import torch

            torch.set_num_threads(threads)
        size = int(identity["image_size"])
        self.shape = (3, size, size)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.init_s = time.perf_counter() - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Item(FileEntry("", 0, 0.0), pixels=np.frombuffer(p, np.float32).reshape(self.shape)
                      if len(p) else None) for p in batch["pixels"]]
        t = time.perf_counter()
        emb.embed(items, self.encoder.encode_pixels)
        secs = time.perf_counter() - t
        vectors = [np.asarray(it.vector, np.float32).tobytes() if it.vector is not None else b""
                   for it in items]
        out = {k: v for k, v in batch.items() if k != "pixels"}
        arr = np.empty(len(vectors), dtype=object)
        arr[:] = vectors
        out["vector"] = arr
        out["worker"] = np.asarray([self.worker if len(v) else "" for v in vectors], dtype=object)
        n_new = max(1, sum(1 for v in vectors if len(v)))
        out["embed_s"] = np.asarray([secs / n_new if len(v) else 0.0 for v in vectors])
        out["init_s"] = np.full(len(vectors), self.init_s)
        return out


def _item(row: Mapping[str, Any]) -> Item:
    meta = json.loads(row["meta"]) if row["meta"] else None
    vector = np.frombuffer(row["vector"], np.float32).copy() if len(row["vector"]) else None
    return Item(FileEntry(str(row["rel"]), int(row["size"]), float(row["mtime"])),
                sha=str(row["sha"]) or None, meta=meta, error=str(row["error"]) or None,
                reused=bool(row["reused"]), vector=vector)
