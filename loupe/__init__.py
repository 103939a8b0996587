"""Loupe: a multimodal image retrieval engine.

    lib = loupe.Library.open("photos/.loupe")
    lib.index()
    hits = lib.search("a red bicycle at night", k=20)
"""

from loupe.config import Filters, IndexOptions
from loupe.library import Library, LibraryError, ModelMismatch, UnknownImage
from loupe.query import QueryError
from loupe.types import Candidates, Hit, Query

__version__ = "0.1.0"
__all__ = [
    "Candidates", "Filters", "Hit", "IndexOptions", "Library", "LibraryError", "ModelMismatch",
    "Query", "QueryError", "UnknownImage", "__version__",
]
