"""Exact search in numpy: one matrix product over the (memory-mapped) full-precision rows."""

from __future__ import annotations

from loupe.index.base import IndexBase


class ExactIndex(IndexBase):
    """Spec "Exact". Scores every live row; filters score only the allowed rows.

    Nothing is held besides the rows themselves, which after `load(mmap=True)` stay memory-mapped:
    the cheapest kind in RAM, and the reference the other kinds are measured against.
    """

    kind = "exact"

    def __init__(self, dim: int, spec: str = "Exact"):
        if spec != "Exact":
            raise ValueError(f"ExactIndex takes the spec 'Exact', not {spec!r}")
        super().__init__(spec, dim)
