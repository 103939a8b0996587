"""Walk a folder and list the image files to consider, with their size and mtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loupe.core.config import IMAGE_SUFFIXES, LIBRARY_DIRNAME
from loupe.core.paths import glob_match


@dataclass(frozen=True)
class FileEntry:
    rel: str        # POSIX path relative to the root: the catalog's key
    size: int
    mtime: float


def scan(root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
         skip_hidden: bool = True) -> Iterator[FileEntry]:
    """Yield every file under `root` that matches. Globs apply to the relative path
    (`*.png`, `2023/**`); without `include`, the known image endings are taken."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        # Sorted for a stable order: progress and batches repeat run to run.
        dirnames[:] = sorted(
            d for d in dirnames
            if d != LIBRARY_DIRNAME and not (skip_hidden and d.startswith("."))
        )
        base = Path(dirpath)
        for name in sorted(filenames):
            if skip_hidden and name.startswith("."):
                continue
            rel = (base / name).relative_to(root).as_posix()
            if not _wanted(rel, include, exclude):
                continue
            try:
                st = (base / name).stat()
            except OSError:
                continue  # vanished between listing and stat
            if not _is_regular(st.st_mode):
                continue
            yield FileEntry(rel, st.st_size, st.st_mtime)


def _wanted(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include:
        if not any(glob_match(rel, g) for g in include):
            return False
    elif not rel.lower().endswith(IMAGE_SUFFIXES):
        return False
    return not any(glob_match(rel, g) for g in exclude)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
