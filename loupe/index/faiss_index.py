"""FAISS kinds: Flat (exact), HNSW (flat or SQ8 storage) and IVF-PQ, behind the same protocol.

Spec strings are FAISS factory strings over inner product, optionally followed by ",Refine":
"Flat", "HNSW32", "HNSW32,SQ8,Refine", "IVF1024,PQ16x4fs,Refine". ",Refine" asks the FAISS
index for k * k_factor candidates and re-scores them with the full-precision rows (memory-mapped
after `load`), so the FAISS structure itself can stay small. FAISS labels are our positions;
tombstones, `allowed` and `exclude` reach FAISS as one IDSelectorBitmap over positions.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from loupe.index.base import IndexBase, topk

# Search-time defaults, chosen with benchmarks/ann.py, which sweeps them and keeps the fastest
# setting with recall@10 >= 0.95 on 1M x 512 clustered vectors (results/ann.json, "sweep"):
# HNSW32,SQ8,Refine needed efSearch 192 (recall@10 0.961 with k_factor 1, 0.973 with the default
# k_factor 2); IVF2048,PQ128x4fs,Refine needed nprobe 32 with k_factor 20 (0.970; nprobe 8:
# 0.949, nprobe 16: 0.962). Overridable per index: build(..., ef_search=, nprobe=, k_factor=).
EF_SEARCH = 192
NPROBE = 32
K_FACTOR = {"hnsw": 2, "ivf": 20, "faiss": 4}
# A selector that passes a share s of positions makes HNSW visit ~1/s times more nodes for the
# same number of hits, so efSearch is divided by s (capped); IVF probes nprobe / sqrt(s) lists.
EF_SEARCH_MAX = 4096


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """(kind, faiss factory string, refine?) for a spec string."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    refine = bool(parts) and parts[-1] == "Refine"
    if refine:
        parts = parts[:-1]
    if not parts:
        raise ValueError(f"empty index spec {spec!r}")
    if any(p.startswith(("IDMap", "Refine", "RFlat")) for p in parts):
        raise ValueError(f"spec {spec!r}: ids and refinement are handled by loupe; "
                         "write e.g. 'IVF1024,PQ16x4fs,Refine'")
    head = parts[0]
    kind = ("flat" if parts == ["Flat"] else "hnsw" if head.startswith("HNSW")
            else "ivf" if head.startswith("IVF") else "faiss")
    return kind, ",".join(parts), refine


class FaissIndex(IndexBase):
    """A FAISS index keyed by position, with our ids, tombstones and full-precision rows."""

    def __init__(self, spec: str, dim: int, ef_search: int | None = None,
                 nprobe: int | None = None, k_factor: int | None = None,
                 build_threads: int | None = None):
        super().__init__(spec, dim)
        self.kind, self._factory, self.refine = parse_spec(spec)
        self.ef_search = int(ef_search or EF_SEARCH)
        self.nprobe = int(nprobe or NPROBE)
        self.k_factor = int(k_factor or K_FACTOR.get(self.kind, 4)) if self.refine else 1
        self.build_threads = build_threads
        self._index = self._new()
        self._mapped_from: Path | None = None   # set while the FAISS index is memory-mapped

    def params(self) -> dict:
        out: dict = {}
        if self.kind == "hnsw":
            out["efSearch"] = self.ef_search
        if self.kind == "ivf":
            out["nprobe"] = self.nprobe
            out["nlist"] = int(faiss.extract_index_ivf(self._index).nlist)
        if self.refine:
            out["k_factor"] = self.k_factor
        return out

    # -- structure ---------------------------------------------------------------------------

    def _new(self):
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        return faiss.index_factory(self.dim, self._factory, faiss.METRIC_INNER_PRODUCT)

    @property
    def faiss_index(self):
        return self._index

    def train_min(self) -> int:
        """Rows needed before the structure can be trained (IVF: 39 per list)."""
        if self._index.is_trained:
            return 0
        if self.kind == "ivf":
            return 39 * int(faiss.extract_index_ivf(self._index).nlist)
        return 1000

    def _writable(self) -> None:
        if self._mapped_from is not None:
            self._index = faiss.read_index(str(self._mapped_from))
            self._mapped_from = None

    def _ann_add(self, rows: np.ndarray, start: int) -> None:
        self._sync()

    def _sync(self) -> None:
        """Bring the FAISS index up to every position (training first when it can)."""
        total = len(self._rows)
        if self._index.ntotal >= total:
            return
        self._writable()
        if not self._index.is_trained:
            if total < self.train_min():
                return          # searched exactly until there are enough rows to train on
            rng = np.random.default_rng(0)
            n_train = min(total, max(self.train_min(), 50_000))
            pick = np.sort(rng.choice(total, n_train, replace=False))
            self._threads(lambda: self._index.train(self._rows.take(pick)))
        start = self._index.ntotal
        for s in range(start, total, 65536):
            pos = np.arange(s, min(s + 65536, total))
            block = np.ascontiguousarray(self._rows.take(pos))
            self._threads(lambda b=block: self._index.add(b))

    def _threads(self, fn):
        if self.build_threads is None:
            return fn()
        old = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.build_threads)
        try:
            return fn()
        finally:
            faiss.omp_set_num_threads(old)

    def _ann_rebuild(self) -> None:
        if self.kind == "ivf" and self._index.is_trained:
            self._writable()
            self._index.reset()       # keeps the trained coarse quantizer and PQ
        else:
            self._index = self._new()
            self._mapped_from = None
        self._sync()

    # -- search ------------------------------------------------------------------------------

    def _ann_search(self, q: np.ndarray, k: int, bits, frac: float):
        if self._index.ntotal < len(self._alive):   # not trained yet: exact
            return super()._ann_search(q, k, bits, frac)
        kk = k * self.k_factor
        sel = None
        if bits is not None:
            sel = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(bits))
        params = self._search_params(kk, frac)
        if sel is not None:
            params.sel = sel
        dist, pos = self._index.search(q, kk, params=params)
        del sel, bits
        if self.refine:
            return self._rescore(q, pos, k)
        ids = np.where(pos >= 0, self._pos_ids[np.maximum(pos, 0)], -1)
        dist = np.where(pos >= 0, dist, -np.inf).astype(np.float32)
        return topk(dist, ids, k)

    def _search_params(self, kk: int, frac: float):
        frac = min(max(frac, 1e-6), 1.0)
        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(min(max(self.ef_search / frac, kk), max(EF_SEARCH_MAX, kk)))
            return p
        if self.kind == "ivf":
            p = faiss.SearchParametersIVF()
            nlist = int(faiss.extract_index_ivf(self._index).nlist)
            p.nprobe = int(min(nlist, math.ceil(self.nprobe / math.sqrt(frac))))
            return p
        return faiss.SearchParameters()

    def _rescore(self, q: np.ndarray, pos: np.ndarray, k: int):
        n, kk = pos.shape
        out_ids = np.empty((n, k), np.int64)
        out_sc = np.empty((n, k), np.float32)
        step = max(1, 16384 // max(kk, 1))
        for s in range(0, n, step):
            p = pos[s: s + step]
            valid = p >= 0
            flat = np.where(valid, p, 0).ravel()
            rows = self._rows.take(flat).reshape(len(p), kk, self.dim)
            sc = np.einsum("nkd,nd->nk", rows, q[s: s + step]).astype(np.float32)
            sc[~valid] = -np.inf
            ids = np.where(valid, self._pos_ids[np.where(valid, p, 0)], -1)
            out_ids[s: s + step], out_sc[s: s + step] = topk(sc, ids, k)
        return out_ids, out_sc

    # -- size and persistence ------------------------------------------------------------------

    def _ann_ram_bytes(self) -> int:
        if self._mapped_from is not None:
            return 0      # the FAISS structure is memory-mapped from the saved file
        return faiss_bytes(self._index)

    def _write_ann(self, folder: Path) -> None:
        self._sync()
        faiss.write_index(self._index, str(folder / "index.faiss"))

    def _restore_ann(self, gen: Path, mmap: bool) -> None:
        path = gen / "index.faiss"
        if mmap and self.kind in ("flat", "hnsw"):
            self._index = faiss.read_index(
                str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            self._mapped_from = path
        else:
            self._index = faiss.read_index(str(path))
            self._mapped_from = None


def faiss_bytes(index) -> int:
    """Bytes a FAISS index holds in RAM (codes, graph, lists, quantizer), estimated by type."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        graph = h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
        return int(graph + faiss_bytes(index.storage))
    if isinstance(index, faiss.IndexIVF):
        lists = 0
        inv = faiss.downcast_InvertedLists(index.invlists)
        sizes = [inv.list_size(i) for i in range(index.nlist)]
        if isinstance(inv, faiss.BlockInvertedLists):   # fast-scan codes, packed in blocks
            lists = sum(-(-s // inv.n_per_block) * inv.block_size + 8 * s for s in sizes)
        else:
            lists = sum(s * (inv.code_size + 8) for s in sizes)
        return int(lists + faiss_bytes(index.quantizer))
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal * index.code_size)
    return int(index.ntotal * index.d * 4)
