"""The ANN layer: one protocol (`VectorIndex`), several kinds, chosen by measurement.

    from loupe.index import build, load, choose_spec, measure_recall
    index = build(choose_spec(n, dim), dim, ids, vectors)
    ids, scores = index.search(queries, 10, allowed=some_ids)

Depends on numpy and faiss only; a ``milvus:URI`` spec (`loupe.index.milvus`) also on pymilvus.
"""

from loupe.index.base import COMPACT_SHARE, FILTER_EXACT_MAX_ROWS, IndexBase, VectorIndex, topk
from loupe.index.exact import ExactIndex
from loupe.index.factory import (
    EXACT_MAX_SCAN,
    build,
    check_spec,
    choose_spec,
    ivf_nlist,
    load,
    measure_recall,
)
from loupe.index.faiss_index import FaissIndex, parse_spec

__all__ = [
    "COMPACT_SHARE", "EXACT_MAX_SCAN", "FILTER_EXACT_MAX_ROWS", "ExactIndex", "FaissIndex",
    "IndexBase", "VectorIndex", "build", "check_spec", "choose_spec", "ivf_nlist", "load", "measure_recall",
    "parse_spec", "topk",
]
