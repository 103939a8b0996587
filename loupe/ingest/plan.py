"""Plan an index run: scan the folder and diff it against the catalog. No pixels, no model.

A plan says which files are new or changed (to read), which are unchanged (size and
mtime as recorded) and which are gone. A run whose plan has nothing to read never
loads a model.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from loupe.core.config import IndexOptions
from loupe.core.errors import LibraryError
from loupe.media.scan import FileEntry, Scan, scan
from loupe.storage.catalog import Catalog

# A run that would forget more than this share of the library (and more than
# PRUNE_MIN files) stops and asks for --prune: an unmounted drive or a renamed root
# looks exactly like a folder whose photos were all deleted.
PRUNE_SHARE = 0.5
PRUNE_MIN = 10


@dataclass
class Plan:
    scanned: int
    todo: list[FileEntry]                   # new, or size/mtime changed: read and hash
    gone: list[str]                         # recorded paths no longer in the folder
    unchanged: int
    known: dict[str, sqlite3.Row] = field(repr=False, default_factory=dict)
    seen: Scan = field(default_factory=Scan)  # unreadable folders (kept), refused links

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo and not self.gone


def plan(catalog: Catalog, root: Path, options: IndexOptions) -> Plan:
    if not root.is_dir():
        raise LibraryError(f"the indexed folder {root} is missing (an unmounted drive?); "
                           "nothing was changed")
    seen = Scan()
    entries = list(scan(root, options.include, options.exclude, options.skip_hidden, seen))
    known = catalog.files()
    present = {e.rel for e in entries}
    todo, unchanged = [], 0
    for e in entries:
        row = known.get(e.rel)
        if row is not None and row["size"] == e.size and row["mtime"] == e.mtime:
            unchanged += 1
        else:
            todo.append(e)
    # Files under a folder the walk could not read are unknown, not deleted: they stay.
    gone = [rel for rel in known if rel not in present
            and not any(_under(rel, folder) for folder in seen.unreadable)]
    indexed = len(known)
    if gone and not options.prune and len(gone) > PRUNE_MIN and len(gone) > PRUNE_SHARE * indexed:
        raise LibraryError(
            f"{len(gone)} of the {indexed} files this library knows are no longer in {root} "
            f"(an unmounted drive, a moved folder?). Nothing was changed; run again with --prune "
            "to forget them."
        )
    return Plan(len(entries), todo, gone, unchanged, known, seen)


def _under(rel: str, folder: str) -> bool:
    return folder == "" or rel.startswith(folder.rstrip("/") + "/")
