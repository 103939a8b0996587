"""What to do with duplicates: move them away, hard-link them to their representative, or
delete them. Planned first (a dry run by default); executed only when asked; every
executed step is written to a journal before and after it happens, so that `undo`
puts moved and hard-linked files back exactly (bytes, mode, times) even after an
interruption. Deleting is not reversible and the journal says so.

    ops = plan(result, "move", move_to="dups-attic")
    print(describe(ops))                                  # the dry run
    done = execute(ops, journal="dups-journal.jsonl", dry_run=False)
    undo("dups-journal.jsonl")                            # everything back where it was

Representatives are never touched. A hard link replaces only a byte-identical copy: a
member is linked to the first file of its group (the representative, then the others in
their order) with the same SHA-256. A member with no byte-identical copy is skipped with
that reason: linking a merely similar file would destroy its own content.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loupe.core.files import file_sha256, fsync_dir

if TYPE_CHECKING:
    from loupe.dups.find import Result

ACTIONS = ("move", "hardlink", "delete")
REVERSIBLE = ("move", "hardlink")


@dataclass
class Operation:
    """One planned step on one duplicate file."""

    action: str                 # move | hardlink | delete
    path: str                   # the duplicate (absolute)
    target: str | None          # move: where it goes; hardlink: the identical copy it links to
    sha256: str | None          # its content when planned
    size: int
    keep: str                   # its group's representative
    skip: str | None = None     # why this step will not run
    outcome: str | None = None  # after execute: "done", "would do", or why it did not run


def plan(result: Result, action: str, move_to: str | Path | None = None,
         root: str | Path | None = None) -> list[Operation]:
    """The steps `action` takes on every duplicate (every group member but the first).
    `move` needs `move_to`; files keep their path relative to `root` there (default: the
    deepest folder holding all the files), so no two land on one name."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if action == "move" and move_to is None:
        raise ValueError("move needs a destination folder (move_to)")
    members = [(result.items[g[0]], result.items[i], _link_target(result, g, i))
               for g in result.groups for i in g[1:]]
    if not members:
        return []
    paths = [Path(m.path).absolute() for _, m, _ in members]
    base = Path(root).absolute() if root is not None else _common_folder(paths)
    dest_root = Path(move_to).absolute() if move_to is not None else None
    ops: list[Operation] = []
    taken: set[Path] = set()
    for (rep, item, same), path in zip(members, paths, strict=True):
        op = Operation(action, str(path), None, item.sha256, item.size, str(Path(rep.path).absolute()))
        if action == "move":
            assert dest_root is not None
            try:
                rel = path.relative_to(base)
            except ValueError:
                rel = Path(path.name)
            dest = _free_name(dest_root / rel, taken)
            taken.add(dest)
            op.target = str(dest)
            if _inside(dest_root, path):
                op.skip = "already in the destination folder"
        elif action == "hardlink":
            if same is None:
                op.skip = ("no byte-identical copy in its group: a hard link would lose "
                           "its content")
            elif same is item:
                op.skip = "the copy its byte-identical duplicates are linked to"
            else:
                op.target = str(Path(same.path).absolute())
        ops.append(op)
    return ops


def _link_target(result: Result, group: list[int], i: int) -> Any:
    """The item a hard link for group member i points to: the first of the group (the
    representative, then the others in order) with the same content; None when none."""
    sha = result.items[i].sha256
    if sha is None:
        return None
    same = [result.items[j] for j in group if result.items[j].sha256 == sha]
    return same[0] if len(same) > 1 else None


def describe(ops: Sequence[Operation]) -> str:
    """One line per step, for a dry run's output."""
    lines = []
    for op in ops:
        what = {"move": f"move {op.path} -> {op.target}",
                "hardlink": f"hard-link {op.path} -> {op.target}",
                "delete": f"delete {op.path}"}[op.action]
        note = op.outcome or (f"skip: {op.skip}" if op.skip else "planned")
        lines.append(f"{what}  [{note}]")
    return "\n".join(lines)


def execute(ops: Sequence[Operation], journal: str | Path | None = None,
            dry_run: bool = True) -> list[Operation]:
    """Run the planned steps. With `dry_run` (the default) nothing on disk changes: each
    step's outcome says what would happen. Otherwise a journal is required and each step
    is recorded in it before and after it runs; a step whose file changed since planning
    (gone, or other content) is not run."""
    ops = [Operation(**asdict(op)) for op in ops]
    if dry_run:
        for op in ops:
            problem = op.skip or _precondition(op, hash_it=False)
            op.outcome = f"skip: {problem}" if problem else "would do"
        return ops
    if journal is None:
        raise ValueError("executing needs a journal file (it is what undo reads)")
    run = time.time_ns()
    with _Journal(Path(journal)) as log:
        for n, op in enumerate(ops):
            step = f"{run}-{n}"
            if op.skip:
                op.outcome = f"skip: {op.skip}"
                continue
            problem = _precondition(op, hash_it=op.action != "move")
            if problem:
                op.outcome = f"skip: {problem}"
                continue
            stat = os.stat(op.path)
            meta = {"mode": stat.st_mode & 0o7777, "atime_ns": stat.st_atime_ns,
                    "mtime_ns": stat.st_mtime_ns, "uid": stat.st_uid, "gid": stat.st_gid}
            entry = {"step": step, **asdict(op), "meta": meta}
            if op.action == "move":
                entry["made_dirs"] = _missing_parents(Path(op.target))
            log.write({"state": "begin", **entry})
            try:
                _run(op)
            except OSError as exc:
                op.outcome = f"failed: {exc}"
                log.write({"state": "failed", "step": step, "error": str(exc)})
                continue
            op.outcome = "done"
            log.write({"state": "done", "step": step})
    return ops


def undo(journal: str | Path) -> list[dict[str, Any]]:
    """Reverse every move and hard link a journal records (latest first), restoring
    bytes, mode and times; deletions are reported as not restorable. Safe to run again:
    a step already reversed (or never completed) is left alone. Returns one entry per
    step: path, action, outcome."""
    entries = list(_read(Path(journal)))
    begun = [e for e in entries if e.get("state") == "begin"]
    done = {e["step"] for e in entries if e.get("state") == "done"}
    report = []
    for e in reversed(begun):
        op = Operation(**{k: e[k] for k in Operation.__dataclass_fields__})
        try:
            outcome = _reverse(op, e["meta"], e.get("made_dirs", []), e["step"] in done)
        except OSError as exc:
            outcome = f"failed: {exc}"
        report.append({"path": op.path, "action": op.action, "outcome": outcome})
    return report


# --- steps ----------------------------------------------------------------------------------

def _precondition(op: Operation, hash_it: bool) -> str | None:
    path = Path(op.path)
    if not path.is_file() or path.is_symlink():
        return "no longer a regular file"
    if path.stat().st_size != op.size or (hash_it and file_sha256(path) != op.sha256):
        return "changed since it was planned"
    if op.action == "move" and Path(op.target).exists():
        return "the destination exists"
    if op.action == "hardlink":
        keep = Path(op.target)
        if not keep.is_file() or file_sha256(keep) != op.sha256:
            return "the identical copy it links to changed"
        if os.path.samefile(keep, path):
            return "already linked"
    if op.action == "delete" and not Path(op.keep).is_file():
        return "its representative is gone"
    return None


def _run(op: Operation) -> None:
    path = Path(op.path)
    if op.action == "move":
        target = Path(op.target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _move(path, target)
    elif op.action == "hardlink":
        tmp = _temp_name(path)
        os.link(op.target, tmp)
        try:
            os.replace(tmp, path)           # atomic: the path is the old file or the link
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    else:
        path.unlink()
        fsync_dir(path.parent)


def _reverse(op: Operation, meta: dict[str, int], made_dirs: list[str], completed: bool) -> str:
    path, target = Path(op.path), Path(op.target) if op.target else None
    if op.action == "delete":
        return "not restorable: deleted" if completed or not path.exists() else "nothing to undo"
    if op.action == "move":
        assert target is not None
        if path.exists():
            if target.exists():
                return "conflict: both the original place and the destination hold a file"
            return "nothing to undo"
        if not target.is_file():
            return "missing: the moved file is not at its destination"
        if target.stat().st_size != op.size:
            return "conflict: the moved file changed"
        path.parent.mkdir(parents=True, exist_ok=True)
        _move(target, path)
        _restore_meta(path, meta)
        for folder in sorted(made_dirs, key=len, reverse=True):
            try:
                os.rmdir(folder)            # only the folders the move made, only when empty
            except OSError:
                pass
        return "restored"
    # hardlink
    assert target is not None
    for leftover in path.parent.glob(f".{path.name}.loupe-*"):
        leftover.unlink(missing_ok=True)   # an interrupted link never replaced the file
    if not path.exists():
        return "missing: the file is gone"
    if not target.exists() or not os.path.samefile(path, target):
        return "nothing to undo" if not completed else "conflict: the file was replaced since"
    if file_sha256(path) != op.sha256:
        return "conflict: the linked content changed"
    tmp = _temp_name(path)
    shutil.copyfile(target, tmp)            # an independent copy of the same bytes
    _restore_meta(tmp, meta)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return "restored"


def _move(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:        # another file system: copy, then delete
            raise
        shutil.copy2(src, dst)
        src.unlink()
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def _restore_meta(path: Path, meta: dict[str, int]) -> None:
    os.chmod(path, meta["mode"])
    st = path.stat()
    if (st.st_uid, st.st_gid) != (meta["uid"], meta["gid"]) and hasattr(os, "chown"):
        try:
            os.chown(path, meta["uid"], meta["gid"])
        except PermissionError:
            pass
    os.utime(path, ns=(meta["atime_ns"], meta["mtime_ns"]))


def _temp_name(path: Path) -> Path:
    tag = hashlib.sha1(f"{os.getpid()}-{time.time_ns()}".encode()).hexdigest()[:8]
    return path.with_name(f".{path.name}.loupe-{tag}")


def _missing_parents(path: Path) -> list[str]:
    made = []
    folder = path.parent
    while not folder.exists():
        made.append(str(folder))
        folder = folder.parent
    return made


def _common_folder(paths: Sequence[Path]) -> Path:
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return common


def _inside(folder: Path, path: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _free_name(dest: Path, taken: set[Path]) -> Path:
    candidate, n = dest, 1
    while candidate in taken or candidate.exists():
        candidate = dest.with_name(f"{dest.stem} ({n}){dest.suffix}")
        n += 1
    return candidate


class _Journal:
    """Append-only JSON lines, each flushed and fsynced before the step it announces runs."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a", encoding="utf-8")
        self.write({"state": "start", "time": time.time(), "format": 1})
        return self

    def write(self, entry: dict[str, Any]) -> None:
        self.fh.write(json.dumps(entry) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _read(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:    # a line cut by a crash: the step never began
                continue
