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
from loupe.media.scan import FileEntry, scan
from loupe.storage.catalog import Catalog


@dataclass
class Plan:
    scanned: int
    todo: list[FileEntry]                   # new, or size/mtime changed: read and hash
    gone: list[str]                         # recorded paths no longer in the folder
    unchanged: int
    known: dict[str, sqlite3.Row] = field(repr=False, default_factory=dict)

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo and not self.gone


def plan(catalog: Catalog, root: Path, options: IndexOptions) -> Plan:
    entries = list(scan(root, options.include, options.exclude, options.skip_hidden))
    known = catalog.files()
    present = {e.rel for e in entries}
    todo, unchanged = [], 0
    for e in entries:
        row = known.get(e.rel)
        if row is not None and row["size"] == e.size and row["mtime"] == e.mtime:
            unchanged += 1
        else:
            todo.append(e)
    gone = [rel for rel in known if rel not in present]
    return Plan(len(entries), todo, gone, unchanged, known)
