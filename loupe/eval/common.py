"""What every protocol shares: options, cached embedding, an in-memory store, reranking, results."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.config import DEFAULT_MODEL, default
from loupe.core.files import file_sha256
from loupe.core.types import Box, Query, Store
from loupe.eval.cache import EmbeddingCache, files_digest, texts_digest
from loupe.search import pipeline
from loupe.storage.memory import open_image


class DatasetError(ValueError):
    """A dataset folder that is missing files or holds malformed ones."""


def require_files(dataset: str, root: Path, paths: Sequence[Path], how_to_get: str) -> None:
    """Raise a DatasetError naming the missing files (the first few) and where to get them."""
    if not root.is_dir():
        raise DatasetError(f"{dataset}: data folder {root} does not exist.\n{how_to_get}")
    missing = [p for p in paths if not p.exists()]
    if missing:
        shown = ", ".join(str(_rel(p, root)) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{dataset}: {len(missing)} of {len(paths)} expected file(s) missing under {root}: "
            f"{shown}{more}.\n{how_to_get}"
        )


def _rel(p: Path, root: Path) -> Path:
    try:
        return p.relative_to(root)
    except ValueError:
        return p



@dataclass
class EvalOptions:
    """How to run one evaluation; the CLI fills it from its flags."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str = "auto"
    # the settings (LOUPE_BACKEND / LOUPE_PRECISION) unless the CLI says otherwise
    backend: str = field(default_factory=lambda: default("backend"))
    precision: str = field(default_factory=lambda: default("precision"))
    batch_size: int = 64
    workers: int = 4
    cache_dir: Path | None = None
    use_cache: bool = True
    rerank: str | None = None
    rerank_depth: int | None = None
    progress: bool = False
    report_queries: int = 100      # queries shown with thumbnails in the HTML report
    report_top: int = 10           # results shown per query

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache_dir"] = str(d["cache_dir"]) if d["cache_dir"] else None
        return d


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr, or a no-op when progress is off."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


class Embedder:
    """Encodes dataset images and texts through one encoder, through the cache."""

    def __init__(self, options: EvalOptions, encoder: Any = None):
        self.options = options
        self._encoder = encoder
        self.cache = EmbeddingCache(options.cache_dir, enabled=options.use_cache)
        self.hits: list[str] = []      # cache keys read (reported in the JSON)
        self.misses: list[str] = []

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from loupe.models import load_encoder

            self._encoder = load_encoder(self.options.model, self.options.weights, self.options.device,
                                         backend=self.options.backend,
                                         precision=self.options.precision)
        return self._encoder

    def images(self, root: Path, relpaths: Sequence[str], boxes: Sequence[Box | None] | None = None,
               description: str = "embedding images") -> np.ndarray:
        """Vectors [n, d] of `root/relpath` images (cropped to `boxes` where given)."""
        extra = [tuple(round(float(v), 3) for v in b) if b is not None else None for b in boxes] \
            if boxes is not None else None
        key = self.cache.key(self.encoder.identity, "images", files_digest(root, relpaths, extra))
        cached = self.cache.get(key, rows=len(relpaths))
        if cached is not None:
            self.hits.append(key)
            return cached
        self.misses.append(key)
        out = self._encode_images([root / r for r in relpaths], boxes, description)
        self.cache.put(key, out, {"kind": "images", "root": str(root), "count": len(relpaths),
                                  "model": self.encoder.identity.get("model")})
        return out

    def _encode_images(self, paths: Sequence[Path], boxes: Sequence[Box | None] | None,
                       description: str) -> np.ndarray:
        enc = self.encoder
        bs = max(1, self.options.batch_size)

        def prepare(i: int) -> Any:
            im = open_image(paths[i])
            if boxes is not None and boxes[i] is not None:
                im = im.crop(tuple(float(v) for v in boxes[i]))
            return enc.prepare(im)

        chunks: list[np.ndarray] = []
        batches = [range(s, min(s + bs, len(paths))) for s in range(0, len(paths), bs)]
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool, \
                progress_bar(self.options.progress, description, len(paths)) as advance:
            # decode batch i+1 while batch i is in the model
            pending = [pool.submit(prepare, i) for i in batches[0]] if batches else []
            for b in range(len(batches)):
                tensors = [f.result() for f in pending]
                pending = [pool.submit(prepare, i) for i in batches[b + 1]] if b + 1 < len(batches) else []
                # prepare() gives CHW float32 arrays (a CPU tensor converts the same way)
                chunks.append(enc.encode_pixels(np.stack([np.asarray(t) for t in tensors])))
                advance(len(tensors))
        if not chunks:
            return np.zeros((0, enc.dim), np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def texts(self, texts: Sequence[str], description: str = "embedding texts") -> np.ndarray:
        key = self.cache.key(self.encoder.identity, "texts", texts_digest(texts))
        cached = self.cache.get(key, rows=len(texts))
        if cached is not None:
            self.hits.append(key)
            return cached
        self.misses.append(key)
        bs = max(1, self.options.batch_size)
        chunks = []
        with progress_bar(self.options.progress, description, len(texts)) as advance:
            for s in range(0, len(texts), bs):
                chunks.append(self.encoder.encode_text(list(texts[s:s + bs])))
                advance(len(chunks[-1]))
        out = np.concatenate(chunks) if chunks else np.zeros((0, self.encoder.dim), np.float32)
        self.cache.put(key, out, {"kind": "texts", "count": len(texts),
                                  "model": self.encoder.identity.get("model")})
        return out


# --------------------------------------------------------------------------
# Ranking: the product's pipeline over an in-memory gallery
# --------------------------------------------------------------------------


def load_rerankers(spec: str | None) -> list[Any]:
    """The reranker chain for `--rerank`; the stages are imported only when one is asked for."""
    if not spec:
        return []
    from loupe.search.stages import get

    return get(spec)


def ranked(vector: np.ndarray, store: Store, stages: Sequence[Any] = (), depth: int | None = None,
           make_query: Callable[[], Query] | None = None, exclude: Sequence[int] = (),
           k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ranking users would get, best first: `loupe.search.pipeline.run` over `store`
    (the whole gallery unless `k`). `make_query` builds the full query (pixels, text) and
    is called only when a stage will look at it; `exclude` ids never appear."""
    query = make_query() if stages and make_query is not None else Query(vector=vector)
    query.exclude_ids = frozenset(int(i) for i in exclude)
    cands = pipeline.run(query, store, k or len(store), stages, depth)
    return cands.ids, cands.scores


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class ResultItem:
    """One retrieved item as the report shows it."""

    label: str                     # file name, or caption text
    path: Path | None = None       # image to show, None for text results
    correct: bool | None = None    # None: ignored by the protocol (junk)
    score: float | None = None
    box: Box | None = None


@dataclass
class QueryRecord:
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    path: Path | None = None       # query image
    box: Box | None = None         # query crop
    text: str | None = None        # query text
    top: list[ResultItem] = field(default_factory=list)
    n_relevant: int | None = None


@dataclass
class Curve:
    name: str
    x: list[float]
    y: list[float]
    xlabel: str
    ylabel: str


@dataclass
class EvalResult:
    protocol: str
    metrics: dict[str, float]                    # headline numbers, in percent
    config: dict[str, Any]
    queries: list[QueryRecord] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_query_metric: str | None = None          # which per-query number the report plots

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "units": "percent",
            "metrics": {k: _num(v) for k, v in self.metrics.items()},
            "config": self.config,
            "notes": self.notes,
            "per_query": [
                {"query": q.name, "n_relevant": q.n_relevant,
                 **{k: _num(v) for k, v in q.metrics.items()}}
                for q in self.queries
            ],
            "curves": [asdict(c) for c in self.curves],
        }

    def write_json(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        tmp.replace(path)


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return None if np.isnan(v) else round(v, 6)
    if isinstance(v, np.integer):
        return int(v)
    return v


def pct(x: float) -> float:
    return float(x) * 100.0


def environment() -> dict[str, Any]:
    """Versions of what produced the numbers."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("loupe-search", "torch", "open_clip_torch", "numpy", "faiss-cpu", "pillow", "opencv-python-headless"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions


def weights_checksum(identity: dict[str, Any]) -> str | None:
    """sha256 of the weights file behind an encoder identity, when it is on disk.

    Local files already carry it in `source`; hub weights are looked up in the
    local Hugging Face cache only (never downloaded). None when not found
    (random weights, or a cache elsewhere).
    """
    source = str(identity.get("source") or "")
    if source.startswith("sha256:"):
        return source.split(":", 1)[1]
    if ":" in source or source in ("", "precomputed"):
        return None   # random weights, hub or folder models, test encoders: no single tagged file
    try:
        import huggingface_hub
        from open_clip import pretrained

        cfg = pretrained.get_pretrained_cfg(identity.get("arch", ""), source) or {}
        repo = str(cfg.get("hf_hub", "")).strip("/")
        if not repo:
            return None
        for fname in (pretrained.HF_SAFE_WEIGHTS_NAME, pretrained.HF_WEIGHTS_NAME):
            hit = huggingface_hub.try_to_load_from_cache(repo, fname)
            if isinstance(hit, str) and Path(hit).is_file():
                return file_sha256(Path(hit))
    except Exception:  # noqa: BLE001 - a checksum is best effort, never a reason to fail a run
        return None
    return None


def base_config(protocol: str, options: EvalOptions, embedder: Embedder, dataset: dict[str, Any],
                rerankers: Sequence[Any], extra: dict[str, Any] | None = None,
                identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full configuration block of a result: enough to reproduce the number.

    `identity` replaces the encoder's when the vectors were not made by one
    (precomputed features); the encoder is then never loaded.
    """
    identity = dict(identity if identity is not None else embedder.encoder.identity)
    return {
        "protocol": protocol,
        "model": identity,
        "weights_sha256": weights_checksum(identity),
        "index": {"kind": "Exact (loupe.index through loupe.search.pipeline)",
                  "similarity": "inner product of L2-normalised vectors",
                  "ties": "higher score first, then lower gallery index"},
        "rerank": [
            {"name": r.name, "depth": options.rerank_depth or int(r.depth), "params": r.params()}
            for r in rerankers
        ],
        "dataset": dataset,
        "options": options.public(),
        "cache": {"dir": str(embedder.cache.root), "hits": len(embedder.hits), "misses": len(embedder.misses)},
        "environment": environment(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
