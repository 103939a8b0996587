"""Near-duplicate finding over files or a library (`loupe dups`): find, report, act.

    from loupe import dups
    items = dups.scan_files(paths)
    result = dups.find(items, vectors, dups.Options(embedding=0.95))
    dups.contact_sheet(result, "dups.html")
    ops = dups.plan(result, "move", move_to="attic")       # then dups.execute(ops, journal, dry_run=False)
"""

from loupe.dups.actions import ACTIONS, Operation, describe, execute, plan, undo
from loupe.dups.find import (
    Item,
    Options,
    Pair,
    Result,
    embedding_pairs,
    exact_pairs,
    find,
    find_in_library,
    hamming_pairs,
    scan_files,
    verify_pairs,
)
from loupe.dups.report import contact_sheet, to_json

__all__ = [
    "ACTIONS", "Item", "Operation", "Options", "Pair", "Result", "contact_sheet", "describe",
    "embedding_pairs", "exact_pairs", "execute", "find", "find_in_library", "hamming_pairs",
    "plan", "scan_files", "to_json", "undo", "verify_pairs",
]
