"""Cross-encoder reranking: an image-text matching (ITM) head scores (candidate image, query text).

score = the model's ITM probability P(match | image, text) (shared/methods.md, "Learned second
stage"). The image side (the vision tower's token embeddings) is computed once per image and
cached on disk under `store.cache_dir("itm-<model identity>")`, one file per image named by the
sha256 of the file's bytes: a moved or copied photo reuses its entry, an edited one does not. A
query then costs only the text side: the text encoder with cross-attention to the cached image
tokens, for each candidate.

Models: BLIP (`BlipForImageTextRetrieval`, e.g. Salesforce/blip-itm-base-coco,
Salesforce/blip-itm-large-coco) and BLIP-2 (`Blip2ForImageTextRetrieval`, e.g.
Salesforce/blip2-itm-vit-g), by hub name or by a local folder written by `save_pretrained`.

Optional: needs `transformers` (the `rerank-learned` extra); nothing else imports this module's
dependencies. `available()` says whether they are installed, `MissingExtra` names the extra.
The shared helpers here (content hashes, the array cache, timings) serve `vlm` too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from loupe.core.errors import ModelError
from loupe.core.files import evict_lru
from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

EXTRA = "rerank-learned"
DTYPES = ("float32", "float16", "bfloat16")
CACHE_DTYPES = ("float32", "float16")
DEFAULT_ITM_MODEL = "Salesforce/blip-itm-base-coco"


# --------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------


class MissingExtra(ImportError):
    """A learned reranker asked for without its optional dependencies; the message names the extra."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules of `modules` that cannot be imported (looked up without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(stage: str, modules: Sequence[str], extra: str = EXTRA) -> None:
    """Raise MissingExtra naming the extra to install when any of `modules` is missing."""
    gone = missing_modules(modules)
    if gone:
        raise MissingExtra(
            f"the {stage} reranker needs {', '.join(gone)}: pip install 'loupe-search[{extra}]' "
            f"(or pip install {' '.join(gone)})"
        )


def weights_unavailable(stage: str, source: str, exc: BaseException, local: str = "") -> ModelError:
    """The error for a model that cannot be loaded (a hub name not cached while the hub is out
    of reach, a folder without a checkpoint): names the stage and the model, gives the
    library's own reason, and says how to supply it."""
    detail = " ".join(str(exc).split())[:300]
    local = local or f"a local folder ({stage}:model=DIR) must hold a checkpoint written by save_pretrained"
    return ModelError(
        f"{stage}: cannot load the model {source!r} ({type(exc).__name__}: {detail}). A hub name "
        f"is downloaded once where the hub is reachable, then read from its cache; {local}."
    )


def available() -> bool:
    """Whether `itm` can run here (for `loupe rerankers`)."""
    return not missing_modules(ITM.requires)


# --------------------------------------------------------------------------
# Timings
# --------------------------------------------------------------------------


class Timings(dict):
    """Where one `rerank` call spent its time: wall seconds per phase plus counts, the cost per
    candidate (`ms_per_candidate`, wall clock) and the process's CPU time (`cpu_s`, all its
    threads: on a busy machine the wall clock says more about the neighbours). A plain dict, so
    callers can print or serialise it."""

    def __init__(self, candidates: int) -> None:
        super().__init__(candidates=candidates)
        self._start = time.perf_counter()
        self._cpu = time.process_time()

    def add(self, phase: str, seconds: float) -> None:
        self[f"{phase}_s"] = round(self.get(f"{phase}_s", 0.0) + seconds, 6)

    def count(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n

    def finish(self) -> Timings:
        total = time.perf_counter() - self._start
        self["total_s"] = round(total, 6)
        self["cpu_s"] = round(time.process_time() - self._cpu, 6)
        n = self["candidates"]
        self["ms_per_candidate"] = round(1000 * total / n, 3) if n else 0.0
        self["cpu_ms_per_candidate"] = round(1000 * self["cpu_s"] / n, 3) if n else 0.0
        return self


class _Phase:
    def __init__(self, timings: Timings, phase: str) -> None:
        self.timings, self.phase = timings, phase

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings.add(self.phase, time.perf_counter() - self.t0)


def phase(timings: Timings, name: str) -> _Phase:
    return _Phase(timings, name)


# --------------------------------------------------------------------------
# Content hashes and the on-disk array cache
# --------------------------------------------------------------------------


class ContentHashes:
    """sha256 of files, remembered by (path, size, mtime) in a small SQLite table, so a file
    is read once per change; thread-safe."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(folder / "sha256.sqlite", check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS files "
                "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
            )
            self._db.commit()

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (str(path),)
            ).fetchone()
        if row is not None and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return str(row[2])
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                (str(path), stat.st_size, stat.st_mtime_ns, sha),
            )
            self._db.commit()
        return sha

    def close(self) -> None:
        with self._lock:
            self._db.close()


def content_key(store: Store, id_: int, hashes: ContentHashes) -> str | None:
    """The sha256 of an image's file: the store's own when it keeps one for the file as it is
    now (a library catalog does), else hashed here; None when the file cannot be read."""
    try:
        path = Path(store.image_path(id_))
        stat = path.stat()
    except (OSError, KeyError, ValueError):
        return None
    record = getattr(store, "record", None)
    if callable(record):
        try:
            rec = record(id_)
        except Exception:  # noqa: BLE001 - a store without records for this id: hash the file
            rec = None
        sha = rec.get("sha256") if isinstance(rec, dict) else None
        if sha and rec.get("size") == stat.st_size and _same_mtime(rec.get("mtime"), stat):
            return str(sha)
    try:
        return hashes.sha256(path)
    except OSError:
        return None


def _same_mtime(recorded: Any, stat: os.stat_result) -> bool:
    try:
        return abs(float(recorded) - stat.st_mtime) < 1e-3
    except (TypeError, ValueError):
        return False


class ArrayCache:
    """One .npy file per key under `folder` (two-level fan-out), written atomically, the least
    recently used evicted when the folder outgrows `budget_bytes`."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = Path(folder)
        self.budget_bytes = budget_bytes
        self._wrote = False

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        try:
            array = np.load(path, allow_pickle=False)
            os.utime(path)  # recently used: evicted last
        except (OSError, ValueError, EOFError):
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
        self._wrote = True

    def evict(self, force: bool = False) -> int:
        if not (self._wrote or force):
            return 0
        self._wrote = False
        return evict_lru(self.folder, "*.npy", self.budget_bytes)


def fingerprint(module: torch.nn.Module, *configs: Any) -> str:
    """sha256 over a module's weights (names, shapes, dtypes, bytes) and JSON-able configs: the
    identity of what the module computes, wherever its files live."""
    import torch

    digest = hashlib.sha256()
    for cfg in configs:
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def load_images(store: Store, ids: Sequence[int], workers: int) -> list[Image.Image | None]:
    """Decoded candidate images (None for an unreadable one: it is logged and scored 0)."""

    def one(id_: int) -> Image.Image | None:
        try:
            return store.load_image(id_)
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the query
            log.warning("learned rerank: image %s left unscored: %s", id_, exc)
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, ids))


def rescored(candidates: Candidates, scores: np.ndarray) -> Candidates:
    """The candidates ordered by new scores, best first; ties keep their incoming order."""
    order = np.argsort(-scores, kind="stable")
    return Candidates(candidates.ids[order], scores[order].astype(np.float32),
                      [candidates.boxes[i] for i in order])


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# --------------------------------------------------------------------------
# Models with an image-text matching head
# --------------------------------------------------------------------------


class MatchModel:
    """An ITM model split into its two sides: `image_tokens` (cached per image) and `match`
    (text encoder with cross-attention to the image tokens, then the ITM head)."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor
        self.kind = model.config.model_type
        if self.kind not in ("blip", "blip-2"):
            raise ValueError(
                f"itm: a model of type {self.kind!r} has no supported image-text matching head; "
                "use a BLIP or BLIP-2 retrieval checkpoint (e.g. Salesforce/blip-itm-base-coco)"
            )
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._identity: str | None = None

    def identity(self, cache_dtype: str) -> str:
        """Hash of everything the cached image side depends on: the vision tower's weights and
        config, the image preprocessing, the stored precision."""
        if self._identity is None:
            image_processor = getattr(self.processor, "image_processor", self.processor)
            self._identity = fingerprint(
                self.model.vision_model,
                {"type": self.kind, "vision": self.model.config.vision_config.to_dict()},
                image_processor.to_dict(),
            )
        return hashlib.sha256(f"{self._identity}:{cache_dtype}".encode()).hexdigest()

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        image_processor = getattr(self.processor, "image_processor", self.processor)
        batch = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return batch["pixel_values"].to(self.device, self.dtype)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        cfg = self.model.config
        config = cfg.qformer_config if self.kind == "blip-2" else cfg.text_config
        limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                    int(getattr(config, "max_position_embeddings", 512)))
        enc = tokenizer([text], return_tensors="pt", padding=True, truncation=True, max_length=limit)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def match(self, image_tokens: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) for each row of image tokens against the one text, as the model's own
        forward computes it (softmax of the ITM head's two logits, class 1)."""
        import torch

        n = image_tokens.shape[0]
        ids = input_ids.expand(n, -1)
        mask = attention_mask.expand(n, -1)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device)
        m = self.model
        with torch.inference_mode():
            if self.kind == "blip":
                hidden = m.text_encoder(input_ids=ids, attention_mask=mask,
                                        encoder_hidden_states=image_tokens,
                                        encoder_attention_mask=image_mask).last_hidden_state
                logits = m.itm_head(hidden[:, 0, :])
            else:  # BLIP-2: learned queries and the text go through the Q-Former together
                queries = m.query_tokens.expand(n, -1, -1)
                query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=self.device)
                embeds = m.embeddings(input_ids=ids, query_embeds=queries)
                hidden = m.qformer(query_embeds=embeds, query_length=queries.shape[1],
                                   attention_mask=torch.cat([query_mask, mask], dim=1),
                                   encoder_hidden_states=image_tokens,
                                   encoder_attention_mask=image_mask).last_hidden_state
                hidden = hidden.to(m.itm_head.weight.dtype)
                logits = m.itm_head(hidden[:, : queries.shape[1], :]).mean(dim=1)
            return logits.float().softmax(dim=-1)[:, 1]


_LOADED: dict[tuple[str, str, str], MatchModel] = {}
_LOAD_LOCK = threading.Lock()


def load_match_model(source: str, device: str = "auto", dtype: str = "float32") -> MatchModel:
    """An ITM model and its processor by hub name or local folder (loaded once per process)."""
    require("itm", ITM.requires)
    from loupe.models.device import resolve_device

    dev = resolve_device(device)
    key = (source, str(dev), dtype)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        import transformers
        from transformers import AutoConfig, AutoProcessor

        try:
            kind = AutoConfig.from_pretrained(source).model_type
        except (OSError, ValueError) as exc:   # read first: nothing is fetched before it
            raise weights_unavailable("itm", source, exc) from exc
        classes = {"blip": "BlipForImageTextRetrieval", "blip-2": "Blip2ForImageTextRetrieval"}
        if kind not in classes:
            raise ValueError(
                f"itm: {source} is a {kind!r} model; use a BLIP or BLIP-2 image-text retrieval "
                f"checkpoint (e.g. {DEFAULT_ITM_MODEL})"
            )
        model = getattr(transformers, classes[kind]).from_pretrained(
            source, dtype=torch_dtype(dtype)).to(dev)
        loaded = MatchModel(model, AutoProcessor.from_pretrained(source))
        _LOADED[key] = loaded
        return loaded


# --------------------------------------------------------------------------
# The reranker
# --------------------------------------------------------------------------


@dataclass
class ITM(Reranker):
    """Cross-encoder: an image-text matching head (BLIP ITM) re-scores the head by P(match)."""

    name: ClassVar[str] = "itm"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    depth: int = 50
    model: str = DEFAULT_ITM_MODEL   # hub name or local folder
    device: str = "auto"
    dtype: str = "float32"           # the model's precision
    batch_size: int = 16             # candidates per text-side forward (and images per image-side)
    cache_dtype: str = "float16"     # precision of the cached image tokens
    cache_mb: int = 4096
    workers: int = 4                 # threads decoding candidate images

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, batch_size=self.batch_size,
                       cache_mb=self.cache_mb, workers=self.workers)
        if self.dtype not in DTYPES:
            raise ValueError(f"ITM: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"ITM: cache_dtype must be one of {CACHE_DTYPES}, got {self.cache_dtype!r}")
        self._matcher: MatchModel | None = None
        self.timings: Timings = Timings(0).finish()

    @classmethod
    def from_model(cls, model: Any, processor: Any, **params: Any) -> ITM:
        """An ITM reranker over an already loaded model and processor (tests, notebooks)."""
        itm = cls(**params)
        itm._matcher = MatchModel(model, processor)
        return itm

    @property
    def matcher(self) -> MatchModel:
        if self._matcher is None:
            self._matcher = load_match_model(self.model, self.device, self.dtype)
        return self._matcher

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Candidates by P(match | image, query text); a query without text is left alone."""
        if not query.text or not len(candidates):
            return candidates
        timings = Timings(len(candidates))
        with phase(timings, "load_model"):
            matcher = self.matcher
        ids = [int(i) for i in candidates.ids]
        tokens = self.image_side(store, ids, timings)
        scores = np.zeros(len(ids), np.float32)
        with phase(timings, "text"):
            input_ids, attention_mask = matcher.tokens(query.text)
            rows = [i for i, t in enumerate(tokens) if t is not None]
            for start in range(0, len(rows), self.batch_size):
                part = rows[start:start + self.batch_size]
                batch = self._stack([tokens[i] for i in part])
                scores[part] = matcher.match(batch, input_ids, attention_mask).cpu().numpy()
        self.timings = timings.finish()
        return rescored(candidates, scores)

    def image_side(self, store: Store, ids: Sequence[int],
                   timings: Timings | None = None) -> list[np.ndarray | None]:
        """The cached image tokens of each id, computing (and caching) the missing ones."""
        timings = timings if timings is not None else Timings(len(ids))
        matcher = self.matcher
        folder = store.cache_dir(f"itm-{matcher.identity(self.cache_dtype)[:16]}")
        cache = ArrayCache(folder, self.cache_mb * 1024**2)
        hashes = ContentHashes(store.cache_dir("content-sha256"))
        try:
            with phase(timings, "hash"):
                keys = [content_key(store, i, hashes) for i in ids]
        finally:
            hashes.close()
        out: list[np.ndarray | None] = [None] * len(ids)
        with phase(timings, "cache_read"):
            for j, key in enumerate(keys):
                if key is not None:
                    out[j] = cache.load(key)
        todo = [j for j, t in enumerate(out) if t is None]
        timings.count("images_cached", len(ids) - len(todo))
        np_dtype = np.float16 if self.cache_dtype == "float16" else np.float32
        for start in range(0, len(todo), self.batch_size):
            part = todo[start:start + self.batch_size]
            with phase(timings, "decode"):
                images = load_images(store, [ids[j] for j in part], self.workers)
            good = [(j, im) for j, im in zip(part, images, strict=True) if im is not None]
            if not good:
                continue
            with phase(timings, "image"):
                pixels = matcher.pixels([im for _, im in good])
                embeds = matcher.image_tokens(pixels).float().cpu().numpy().astype(np_dtype)
            timings.count("images_encoded", len(good))
            for (j, _), emb in zip(good, embeds, strict=True):
                out[j] = emb
                if keys[j] is not None:
                    cache.save(keys[j], emb)
        cache.evict()
        return out

    def _stack(self, arrays: list[np.ndarray]) -> torch.Tensor:
        import torch

        m = self.matcher
        return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(m.device, m.dtype)


def score_pairs(itm: ITM, images: Sequence[Image.Image], text: str) -> np.ndarray:
    """P(match) of each image with `text`, without a store or cache (for checks and notebooks)."""
    m = itm.matcher
    tokens = m.image_tokens(m.pixels(images))
    ids, mask = m.tokens(text)
    return m.match(tokens, ids, mask).cpu().numpy()


__all__ = [
    "ITM", "ArrayCache", "ContentHashes", "MatchModel", "MissingExtra", "Timings", "available",
    "content_key", "load_match_model", "missing_modules", "require", "score_pairs",
]
