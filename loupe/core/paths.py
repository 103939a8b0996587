"""Globs on library-relative POSIX paths, with .gitignore's rules (through `pathspec`).

A glob without a slash matches a file name in any folder (`*.png`); one with a slash
is anchored at the library root (`paris/*.jpg` takes `paris/a.jpg`, not
`paris/old/a.jpg`: `*` never crosses a `/`); `**` crosses folders (`2023/**`).
Matching ignores case, as photo file names come from cameras and phones in either.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=256)
def _spec(glob: str) -> Any:
    import pathspec  # only for --glob: a plain query does not pay its import

    return pathspec.PathSpec.from_lines("gitwildmatch", [glob.lower()])


def glob_match(rel: str, glob: str) -> bool:
    """True when the relative path `rel` matches `glob` (see the module docstring)."""
    return _spec(glob).match_file(rel.lower())
