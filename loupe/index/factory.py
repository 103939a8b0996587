"""build / load / choose_spec / measure_recall."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from loupe.index.base import (
    FORMAT,
    IndexBase,
    VectorIndex,
    current_generation,
    merge_topk,
    topk,
)
from loupe.index.exact import ExactIndex
from loupe.index.faiss_index import FaissIndex
from loupe.index.milvus import is_milvus  # the module needs pymilvus only once it connects

# choose_spec: exact search while n * dim <= EXACT_MAX_SCAN. Measured by benchmarks/ann.py
# (results/ann.json, "exact_scan"): single-threaded exact search of one query over n stored
# 512-d rows costs 0.27-0.33 ns per stored float once the rows leave the CPU cache (16k rows:
# 2.29 ms, 64k: 10.0 ms, 256k: 43.7 ms on the benchmark machine; it is memory-bandwidth bound).
# With the 2 ms p50 target that is ~6.7M floats: ~13k vectors at 512-d, ~104k at 64-d.
EXACT_NS_PER_ELEMENT = 0.30
EXACT_TARGET_MS = 2.0
EXACT_MAX_SCAN = int(EXACT_TARGET_MS * 1e6 / EXACT_NS_PER_ELEMENT)

HNSW_M = 32
# Per vector, whatever the kind: ids by position and sorted (8 + 8 + 8), the live mask (1), the
# dense id -> position table (4) and, on SQ8 kinds, the code error bound (4).
BOOKKEEPING_BYTES_PER_VECTOR = 33


def build(spec: str, dim: int, ids=None, vectors=None, **options) -> VectorIndex:
    """An index of the given spec; filled with (ids, vectors) when given.

    options: ef_search, nprobe, k_factor (search-time knobs of the FAISS kinds), build_threads.
    A ``milvus:URI[?key=value]`` spec makes a collection in Milvus (`loupe.index.milvus`; its
    knobs go in the spec; imported only then, so this package needs no pymilvus otherwise).
    """
    if is_milvus(spec):
        from loupe.index import milvus

        return milvus.build(spec, dim, ids, vectors, **options)
    if spec == "Exact":
        if options:
            raise TypeError(f"Exact takes no options, got {sorted(options)}")
        index: IndexBase = ExactIndex(dim)
    else:
        index = FaissIndex(spec, dim, **options)
    if ids is not None or vectors is not None:
        if ids is None or vectors is None:
            raise ValueError("give both ids and vectors, or neither")
        index.add(ids, vectors)
    return index


def check_spec(spec: str) -> str:
    """The spec as a library should record it, or ValueError naming what is wrong with it
    (ImportError naming the extra to install for a Milvus spec without pymilvus). Nothing is
    built or connected to. A Milvus Lite path is made absolute: every process then opens the
    same database, whatever its working folder."""
    if is_milvus(spec):
        from loupe.index import milvus

        milvus.require(spec)
        return milvus.absolute_spec(spec)
    build(spec, 4)
    return spec


def load(folder: Path, mmap: bool = True) -> VectorIndex:
    """Open a saved index. Nothing is rebuilt; with mmap the full-precision rows (and the FAISS
    structure of Flat/HNSW kinds) are memory-mapped, so pages load as queries touch them.
    A saved Milvus index reconnects to its collection (the save holds the connection)."""
    gen = current_generation(Path(folder))
    meta = json.loads((gen / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{gen}: unknown index format {meta.get('format')!r}")
    if meta.get("kind") == "milvus":
        from loupe.index.milvus import MilvusIndex

        return MilvusIndex.load(folder)
    p = meta.get("params", {})
    if meta["spec"] == "Exact":
        index: IndexBase = ExactIndex(meta["dim"])
    else:
        index = FaissIndex(meta["spec"], meta["dim"], ef_search=p.get("efSearch"),
                           nprobe=p.get("nprobe"), k_factor=p.get("k_factor"))
    index._restore(gen, meta, mmap)
    if isinstance(index, FaissIndex):
        index._restore_ann(gen, mmap)
    return index


def hnsw_bytes_per_vector(dim: int, sq8: bool, m: int = HNSW_M) -> float:
    """RAM per vector of HNSW: storage + level-0 links (2M) + upper levels (~1/M of nodes)."""
    storage = dim if sq8 else 4 * dim
    return storage + 4 * 2 * m * (1 + 1 / m) + 12 + BOOKKEEPING_BYTES_PER_VECTOR


def ivfpq_bytes_per_vector(dim: int) -> float:
    """RAM per vector of IVF-PQ (dim/4 sub-quantizers x 4 bits) + its id in the lists."""
    return dim / 8 + 8 + BOOKKEEPING_BYTES_PER_VECTOR


def ivf_nlist(n: int) -> int:
    """A power of two near 4 sqrt(n), with at least 39 training rows per list."""
    want = max(1, min(4 * math.sqrt(max(n, 1)), n / 39))
    return int(2 ** max(0, math.floor(math.log2(want))))


def choose_spec(n: int, dim: int, memory_budget_bytes: int | None = None) -> str:
    """The spec for n vectors of dimension dim.

    - Exact while n * dim <= EXACT_MAX_SCAN (exact single-query search meets the 2 ms target,
      see EXACT_NS_PER_ELEMENT); it holds nothing besides the memory-mapped rows.
    - Above: HNSW32 over SQ8 codes with full-precision re-scoring when its graph + codes fit the
      budget (no budget: always), else IVF-PQ (dim/4 x 4-bit fast-scan codes) with
      re-scoring, whose RAM is ~dim/8 + 8 bytes per vector.
    The full-precision rows stay on disk and are not counted in the budget: a serving process
    reads the few it re-scores with pread, and filtered searches score the SQ8 codes that HNSW
    holds anyway (see FaissIndex._exact_pos), so they are never mapped into it. At 1M x 512 the
    chosen HNSW32,SQ8 holds ~0.8 GB: it fits the default 1 GiB budget (README "Memory").
    Raises ValueError when even IVF-PQ does not fit.
    """
    if n * dim <= EXACT_MAX_SCAN:
        return "Exact"
    if memory_budget_bytes is None or n * hnsw_bytes_per_vector(dim, True) <= memory_budget_bytes:
        return f"HNSW{HNSW_M},SQ8,Refine"
    nlist = ivf_nlist(n)
    if n * ivfpq_bytes_per_vector(dim) + nlist * dim * 4 <= memory_budget_bytes:
        m = dim // 4 if dim % 4 == 0 else dim // 2 if dim % 2 == 0 else dim
        return f"IVF{nlist},PQ{m}x4fs,Refine"
    raise ValueError(f"no index kind fits {n} x {dim} vectors in {memory_budget_bytes} bytes")


def measure_recall(index: VectorIndex, sample: int = 1000, k: int = 10, seed: int = 0,
                   reference: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Recall@k of `index.search` against exact search, with `sample` of the index's own stored
    vectors as queries (the query itself counts as a hit in both lists). Stored on the index
    (stats()['recall_at_10'] when k == 10, and saved with it).

    `reference`: (sorted ids, rows) the index was built from, the catalog's copy; the queries
    and the exact side then come from it instead of from the index (for an index whose
    vectors live elsewhere, as Milvus's do: nothing is pulled back out of it)."""
    ids = index.ids if reference is None else np.asarray(reference[0], np.int64)
    if len(ids) == 0:
        raise ValueError("cannot measure recall on an empty index")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False))
    if reference is not None:
        matrix = reference[1]
        q = np.asarray(matrix[np.searchsorted(ids, pick)], np.float32)
    else:
        q = index.vectors(pick)
    got, _ = index.search(q, k)
    if reference is not None:
        want, _ = _exact_reference(index, q, k, ids, matrix)
    elif isinstance(index, IndexBase):
        want, _ = index._exact_masked(q, k, index._alive)
    else:
        want, _ = _exact_reference(index, q, k)
    kk = min(k, len(ids))
    hits = [len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(got, want, strict=True)]
    recall = float(np.mean(hits) / kk)
    if k == 10 and hasattr(index, "recall_at_10"):
        index.recall_at_10 = recall
    return recall


def _exact_reference(index: VectorIndex, q: np.ndarray, k: int, ids: np.ndarray | None = None,
                     matrix: np.ndarray | None = None):
    """Exact top-k over (ids, matrix), or over the index's own vectors read back in blocks."""
    ids = index.ids if ids is None else ids
    best = topk(np.zeros((len(q), 0), np.float32), np.zeros(0, np.int64), k)
    for s in range(0, len(ids), 65536):
        part = ids[s: s + 65536]
        rows = index.vectors(part) if matrix is None else np.asarray(matrix[s: s + 65536], np.float32)
        best = merge_topk(best, topk(q @ rows.T, part, k), k)
    return best
