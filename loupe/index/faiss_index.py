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

import numpy as np

from loupe.core.lazy import lazy_import
from loupe.index.base import IndexBase, merge_topk, topk

# Loaded on first use: a query on an exact index (a small library) never needs it, and
# importing it costs a cold `loupe search` about 0.05 s, plus 0.1 s at exit.
faiss = lazy_import("faiss")

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

# A memory-mapped FAISS structure (a saved index opened by a serving process) is read-only:
# adding to it means reading all of it into RAM first (at 1M x 512, HNSW32,SQ8: 3.3 s and
# 768 MiB of anonymous memory, load ~4). Up to DELTA_MAX_ROWS rows added to a
# mapped index stay outside it instead, in the in-RAM tail, and are scored exactly next to the
# ANN's answer (20k rows x 512-d: ~5 ms); the next save or compaction takes them in.
DELTA_MAX_ROWS = 20_000

# Filtered exact search on SQ8 kinds (see FaissIndex._exact_pos): allowed rows are scored on their
# 8-bit codes (a quarter of the bytes of the full-precision rows, and already in RAM as the HNSW
# storage), the best SQ_SHORTLIST (or 4k) are re-scored exactly, and the short list grows until
# no row left out can reach the k-th exact score. Below SQ_MIN_ROWS allowed rows the rows are
# scored directly. SQ_CHUNK codes are decoded at a time (2 MiB of float32 at 512-d).
SQ_SHORTLIST = 64
# The planner's threshold on SQ8 kinds (FILTER_EXACT_MAX_ROWS in base.py is for kinds that score
# full-precision rows). benchmarks/filtered.py on the HNSW32,SQ8,Refine index of 1M x 512 that
# benchmarks/search.py builds, single-threaded, both paths in one run, p50 ms (load ~1; the
# ANN's beam widened by 1/sqrt(share), see _search_params):
#   allowed    1k: exact 1.2 / ANN+selector 26.9 (recall@10 0.665)
#             10k: exact 6.3 / 12.4 (0.810)      30k: exact 11.1 / 6.7 (0.863)
#             50k: exact 18.2 / 6.3 (0.960)      60k: exact 26.8 / 5.1 (0.953)
#            100k: exact 29.4 / 3.9 (0.980)     300k: exact 83.0 / 3.9 (0.977)
# Exact grows with the allowed count (~0.4 ms per 1k rows); the ANN is faster from a few
# thousand rows on, but its recall falls below 0.95 under a 5% share: the threshold is where
# the ANN is both faster and as good as unfiltered searches. Below it the answer is exact.
FILTER_EXACT_MAX_ROWS_SQ8 = 50_000
# A filtered HNSW search under this share of the rows is scored exactly whatever its row count
# (at 10M rows, a 1% filter is 100k rows, where the graph's recall with a selector is ~0.82).
HNSW_FILTER_MIN_SHARE = 0.05
SQ_MIN_ROWS = 512
SQ_CHUNK = 1024
# Slack added to the error bound for float32 rounding in both scores (|score| <= |q|).
SQ_ROUNDING = 1e-4


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
        # SQ8 kinds: |row - decoded code| per position, the error bound of scoring a row on its
        # code (None: not an SQ8 kind, or not measured yet, e.g. an older save).
        self._resid: np.ndarray | None = None

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
        if self._mapped_from is not None and self._index.ntotal \
                and len(self._rows) - self._index.ntotal <= DELTA_MAX_ROWS:
            return      # kept outside the mapped structure: see DELTA_MAX_ROWS
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
        sq = _sq_storage(self._index)
        if sq is not None and start == 0:
            self._resid = np.zeros(0, np.float32)
        for s in range(start, total, 65536):
            pos = np.arange(s, min(s + 65536, total))
            block = np.ascontiguousarray(self._rows.take(pos))
            self._threads(lambda b=block: self._index.add(b))
            if sq is not None and self._resid is not None:
                self._resid = np.concatenate([self._resid, _residuals(self._index, block, s)])

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
        self._resid = None
        if self.kind == "ivf" and self._index.is_trained:
            self._writable()
            self._index.reset()       # keeps the trained coarse quantizer and PQ
        else:
            self._index = self._new()
            self._mapped_from = None
        self._sync()

    # -- search ------------------------------------------------------------------------------

    def _ann_search(self, q: np.ndarray, k: int, bits, frac: float):
        n_ann, total = self._index.ntotal, len(self._alive)
        if n_ann == 0 or (n_ann < total and self._mapped_from is None):   # not trained yet
            return super()._ann_search(q, k, bits, frac)
        best = self._faiss_search(q, k, bits, frac)
        if n_ann < total:       # rows added since the mapped structure was saved: exactly
            keep = (self._alive if bits is None else np.unpackbits(
                bits, bitorder="little", count=total).astype(bool))[n_ann:]
            delta = n_ann + np.flatnonzero(keep)
            if len(delta):
                best = merge_topk(best, IndexBase._exact_pos(self, q, k, delta), k)
        return best

    def _faiss_search(self, q: np.ndarray, k: int, bits, frac: float):
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
            # A filter keeping a share f of the rows widens the beam by 1/sqrt(f), not 1/f: at
            # 1M x 512 (benchmarks/filtered.py) recall@10 stays 0.95-0.98 down to the planner's
            # exact threshold (5%), at a third of the time 1/f took at 10%.
            p.efSearch = int(min(max(self.ef_search / math.sqrt(frac), kk),
                                 max(EF_SEARCH_MAX, kk)))
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

    # -- filtered exact search on SQ8 codes -------------------------------------------------------

    def _exact_pos(self, q: np.ndarray, k: int, pos: np.ndarray):
        """Exact top-k over the given positions; equal to scoring every row at full precision.

        On SQ8 kinds the rows are first scored on their codes: a row's true score is at most
        its code score + |q| * |row - decoded code| (Cauchy-Schwarz), its upper bound. The rows
        with the highest upper bounds are re-scored exactly, and that short list grows until
        every upper bound left out is below the k-th exact score: no row left out can then
        enter the top-k (ties included). Full-precision rows are read for the short list only.
        At 1M x 512, 10k allowed rows: see FILTER_EXACT_MAX_ROWS.
        """
        sq = _sq8(self._index) if len(pos) >= SQ_MIN_ROWS else None
        n_ann = self._index.ntotal
        if sq is None or self._residuals() is None:
            return super()._exact_pos(q, k, pos)
        codes, vmin, vdiff = sq
        head, delta = pos[pos < n_ann], pos[pos >= n_ann]     # delta: see DELTA_MAX_ROWS
        out = [self._exact_pos_sq(q[i], k, head, codes, vmin, vdiff) for i in range(len(q))]
        best = np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        if len(delta):
            best = merge_topk(best, super()._exact_pos(q, k, delta), k)
        return best

    def _exact_pos_sq(self, q: np.ndarray, k: int, pos: np.ndarray, codes: np.ndarray,
                      vmin: np.ndarray, vdiff: np.ndarray):
        # code score = q . (vmin + (c + 0.5) * vdiff / 255) = c . w + const
        w = (q * vdiff / 255.0).astype(np.float32)
        const = np.float32(q @ vmin + 0.5 * w.sum())
        approx = np.empty(len(pos), np.float32)
        for s in range(0, len(pos), SQ_CHUNK):
            block = codes[pos[s: s + SQ_CHUNK]]
            approx[s: s + len(block)] = block.astype(np.float32) @ w
        norm = float(np.linalg.norm(q))
        upper = approx + (norm * self._resid[pos] + (const + SQ_ROUNDING * max(1.0, norm)))
        m = len(pos)
        if m == 0:
            return np.full(k, -1, np.int64), np.full(k, -np.inf, np.float32)
        kk = min(m, max(SQ_SHORTLIST, 4 * k))
        while True:
            short = np.argpartition(-upper, kk - 1)[:kk] if kk < m else np.arange(m)
            cand = pos[short]
            exact = (self._rows.take(cand) @ q).astype(np.float32)
            if kk == m:
                break
            kth = np.partition(exact, len(exact) - k)[len(exact) - k]
            if upper[short].min() < kth:
                break
            kk = min(m, kk * 4)
        ids, scores = topk(exact[None, :], self._pos_ids[cand], k)
        return ids[0], scores[0]

    def filter_exact_max(self) -> int:
        rows = (int(FILTER_EXACT_MAX_ROWS_SQ8 * 512 / self.dim) if _sq_storage(self._index) is not None
                else super().filter_exact_max())
        if self.kind == "hnsw":
            rows = max(rows, int(HNSW_FILTER_MIN_SHARE * len(self._alive)))
        return rows

    def _residuals(self) -> np.ndarray | None:
        """The per-position quantisation errors; measured now when a save did not hold them."""
        if self._resid is None and _sq8(self._index) is not None \
                and self._index.ntotal == len(self._rows):
            self._resid = np.concatenate(
                [_residuals(self._index, np.ascontiguousarray(rows), start)
                 for start, rows in self._rows.blocks()])
        return self._resid

    # -- size and persistence ------------------------------------------------------------------

    def _ann_ram_bytes(self) -> int:
        if self._mapped_from is not None:
            return 0      # the FAISS structure is memory-mapped from the saved file
        return faiss_bytes(self._index)

    def _write_ann(self, folder: Path) -> None:
        self._sync()
        faiss.write_index(self._index, str(folder / "index.faiss"))
        if self._resid is not None:
            np.save(folder / "sq_residuals.npy", self._resid)

    def _restore_ann(self, gen: Path, mmap: bool) -> None:
        path = gen / "index.faiss"
        if mmap and self.kind in ("flat", "hnsw"):
            self._index = faiss.read_index(
                str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            self._mapped_from = path
        else:
            self._index = faiss.read_index(str(path))
            self._mapped_from = None
        resid = gen / "sq_residuals.npy"
        self._resid = np.load(resid) if resid.exists() else None


def _sq_storage(index):
    """The IndexScalarQuantizer holding an index's codes when they are 8-bit with per-dimension
    ranges (SQ8, HNSW..,SQ8), else None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexScalarQuantizer) \
            and index.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        return index
    return None


def _sq8(index) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(codes [ntotal, d] uint8 view, vmin, vdiff) of an SQ8 kind with codes, else None. The
    view is only valid until the index changes: take it anew for each search."""
    index = _sq_storage(index)
    if index is None or not index.is_trained or index.ntotal == 0:
        return None
    d = index.d
    trained = faiss.vector_to_array(index.sq.trained)
    if len(trained) != 2 * d:
        return None
    codes = faiss.rev_swig_ptr(index.codes.data(), index.ntotal * d).reshape(index.ntotal, d)
    return codes, trained[:d].astype(np.float32), trained[d:].astype(np.float32)


def _residuals(index, rows: np.ndarray, start: int) -> np.ndarray:
    """|row - decoded code| of rows stored at positions start.. (decoded as _exact_pos_sq scores
    them), rounded up so that float32 storage never makes the bound smaller."""
    codes, vmin, vdiff = _sq8(index)
    out = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), 8192):
        c = codes[start + s: start + s + 8192]
        decoded = vmin + (c.astype(np.float32) + 0.5) * (vdiff / 255.0)
        r = np.linalg.norm((rows[s: s + len(c)] - decoded).astype(np.float64), axis=1)
        out[s: s + len(c)] = np.nextafter(r.astype(np.float32), np.float32(np.inf))
    return out


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
