"""Walk a folder and list the image files to consider, with their size and mtime.

Nothing is lost silently: a folder the walk cannot read is recorded in the scan's
`unreadable` list (so the run does not take its images for deleted), and a symlink
whose target lies outside the root is skipped and counted, never followed (the server
refuses such files too). File names that are not valid UTF-8 keep their bytes
(os.fsdecode's surrogate escapes); the catalog stores them losslessly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loupe.core.config import IMAGE_SUFFIXES, LIBRARY_DIRNAME
from loupe.core.paths import glob_match


@dataclass(frozen=True)
class FileEntry:
    rel: str        # POSIX path relative to the root: the catalog's key
    size: int
    mtime: float


@dataclass
class Scan:
    """What a walk saw besides the files: folders it could not read, links it refused."""

    unreadable: list[str] = field(default_factory=list)   # relative folders ("" = the root)
    outside_links: list[str] = field(default_factory=list)


def scan(root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
         skip_hidden: bool = True, seen: Scan | None = None) -> Iterator[FileEntry]:
    """Yield every file under `root` that matches. Globs apply to the relative path
    (`*.png`, `2023/**`); without `include`, the known image endings are taken.
    `seen`, when given, collects unreadable folders and refused links."""
    root = Path(root)
    real_root = root.resolve()
    seen = seen if seen is not None else Scan()

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        try:
            rel = where.relative_to(root).as_posix()
        except ValueError:
            rel = str(where)
        seen.unreadable.append("" if rel == "." else rel)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=onerror):
        # Sorted for a stable order: progress and batches repeat run to run.
        dirnames[:] = sorted(
            d for d in dirnames
            if d != LIBRARY_DIRNAME and not (skip_hidden and d.startswith("."))
        )
        base = Path(dirpath)
        for name in sorted(filenames):
            if skip_hidden and name.startswith("."):
                continue
            path = base / name
            rel = path.relative_to(root).as_posix()
            if not _wanted(rel, include, exclude):
                continue
            try:
                st = path.stat()
                if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                    seen.outside_links.append(rel)
                    continue
            except OSError:
                continue  # vanished between listing and stat, or a dangling link
            if not stat.S_ISREG(st.st_mode):
                continue
            yield FileEntry(rel, st.st_size, st.st_mtime)


def _wanted(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include:
        if not any(glob_match(rel, g) for g in include):
            return False
    elif not rel.lower().endswith(IMAGE_SUFFIXES):
        return False
    return not any(glob_match(rel, g) for g in exclude)
