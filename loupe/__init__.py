"""Loupe: a multimodal image retrieval engine.

    lib = loupe.Library.open("photos/.loupe")
    lib.index()
    hits = lib.search("a red bicycle at night", k=20)
"""

from loupe.core.config import IndexOptions
from loupe.core.errors import LibraryError, ModelMismatch, QueryError, UnknownImage
from loupe.core.types import Candidates, Filters, Hit, Query, SearchRequest
from loupe.library import Library

__version__ = "0.2.0"
__all__ = [
    "Candidates", "Filters", "Hit", "IndexOptions", "Library", "LibraryError", "ModelMismatch",
    "Query", "QueryError", "SearchRequest", "UnknownImage", "__version__",
]
