"""Globs on library-relative POSIX paths."""

from __future__ import annotations

import fnmatch


def glob_match(rel: str, glob: str) -> bool:
    """Case-insensitive glob on a relative path; a glob without a slash matches the
    file name in any folder, as .gitignore does."""
    target = rel if "/" in glob else rel.rsplit("/", 1)[-1]
    return fnmatch.fnmatch(target.lower(), glob.lower())
