"""`loupe dups`: near-duplicate groups in the library, as a table, JSON or an HTML contact
sheet, and what to do with them (move, hard-link, delete): a dry run unless --execute,
journalled, and reversible with --undo where the action can be undone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from loupe.core.errors import QueryError

# The default threshold of each method (Hamming distance of 64-bit hashes; cosine).
METHOD_DEFAULTS: dict[str, float | None] = {"exact": None, "phash": 10, "dhash": 10,
                                            "embedding": 0.95}


def register(app: typer.Typer) -> None:
    app.command("dups")(dups)


def dups(
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="How pairs are found (repeatable): exact (same bytes; always on), "
        "phash or dhash (perceptual hash, NAME:MAX_HAMMING, default 10 of 64 bits), embedding "
        "(the library's vectors, embedding:MIN_COSINE, default 0.95). Default: phash.",
        show_default=False, metavar="NAME[:THRESHOLD]")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Confirm every pair that is not byte-identical by spatial verification "
        "(local features and a geometric fit): slower, and fewer false pairs.")] = False,
    output: Annotated[str, typer.Option("--format", "-f", help="table or json.",
                                        metavar="FORMAT")] = "table",
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write the groups as an HTML contact sheet (self-contained).",
        show_default=False, metavar="FILE")] = None,
    move_to: Annotated[Path | None, typer.Option(
        "--move-to", help="Move every duplicate (all but the best of each group) into this "
        "folder, keeping its path relative to the library.", show_default=False,
        metavar="DIR")] = None,
    hardlink: Annotated[bool, typer.Option(
        "--hardlink", help="Replace byte-identical duplicates by hard links to the kept file "
        "(the space is freed; every path still opens).")] = False,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Delete every duplicate. Not reversible: try --move-to first.")] = False,
    execute: Annotated[bool, typer.Option(
        "--execute", help="Do it. Without this flag an action is only a dry run that says "
        "what it would do.")] = False,
    journal: Annotated[Path | None, typer.Option(
        "--journal", help="Where --execute records each step (what --undo reads). Default: "
        "a new file in the library folder.", show_default=False, metavar="FILE")] = None,
    undo: Annotated[Path | None, typer.Option(
        "--undo", help="Put back what an executed run moved or hard-linked, from its journal.",
        show_default=False, metavar="JOURNAL")] = None,
    library: Annotated[Path | None, typer.Option(
        "--library", "-L", help="Library folder. Default: the nearest .loupe above here.",
        show_default=False, metavar="PATH")] = None,
) -> None:
    """Find near-duplicate images in the library, and tidy them up safely.

    Each group keeps its best file (the largest; then more pixels) and lists the
    others as duplicates. Actions (--move-to, --hardlink, --delete) are a dry run
    unless --execute; an executed run writes a journal, and --undo JOURNAL puts
    moved and hard-linked files back exactly. Only files inside the library's
    folder are ever touched.

    \b
    loupe dups                                        # exact copies and perceptual hashes
    loupe dups --method embedding:0.97 --verify       # also edited copies, confirmed
    loupe dups --format json > dups.json
    loupe dups --html dups.html                       # a contact sheet to look at
    loupe dups --move-to ~/dups-attic                 # dry run: says what would move
    loupe dups --move-to ~/dups-attic --execute       # moves them; prints the journal
    loupe dups --undo .loupe/dups/journal-....jsonl   # puts them back
    """
    from loupe import cli as main

    fmt = "json" if json_out else output.lower()
    if fmt not in ("table", "json"):
        raise QueryError(f"--format {output!r}: use table or json")
    actions = [name for name, on in (("move", move_to is not None), ("hardlink", hardlink),
                                     ("delete", delete)) if on]
    if len(actions) > 1:
        raise QueryError(f"choose one action, not {' and '.join('--' + a for a in actions)}")
    if undo is not None and (actions or method or verify or html):
        raise QueryError("--undo JOURNAL runs alone: it only reverses an executed run")
    if execute and not actions:
        raise QueryError("--execute does an action: add --move-to DIR, --hardlink or --delete")
    if journal is not None and not execute:
        raise QueryError("--journal is written by --execute")
    options = _options(method or ["phash"], verify)
    lib = main._open(library, None, None, "cpu")
    root = lib.root.resolve()
    if undo is not None:
        _undo(undo, root, fmt)
        return
    if move_to is not None:
        move_to = move_to.expanduser().absolute()
        if move_to.exists() and not move_to.is_dir():
            raise QueryError(f"--move-to {move_to}: exists and is not a folder")
    if html is not None and html.expanduser().is_dir():
        raise QueryError(f"--html {html}: is a folder; give a file name like dups.html")
    if not lib.searchable():
        raise QueryError(f"the library {lib.path} has no indexed images yet: run `loupe index {root}`")

    from loupe import dups as dupsmod

    reads = options.phash is not None or options.dhash is not None    # perceptual hashes read files
    with main._progress("reading", quiet=fmt != "table" or not reads) as bar:
        task = bar.add_task("read", total=lib.searchable())
        result = dupsmod.find_in_library(lib, options, progress=lambda n: bar.advance(task, n))
    report = dupsmod.to_json(result)
    if html is not None:
        dupsmod.contact_sheet(result, html.expanduser())
    ops: list[Any] = []
    if actions:
        ops = [_inside_root(op, root) for op in dupsmod.plan(result, actions[0], move_to=move_to,
                                                              root=root)]
        if execute:
            journal = (journal or lib.path / "dups" / f"journal-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
            ops = dupsmod.execute(ops, journal.expanduser().absolute(), dry_run=False)
        else:
            ops = dupsmod.execute(ops)
    if fmt == "json":
        out = {"library": str(lib.path), **report}
        if actions:
            out["action"] = {"name": actions[0], "executed": execute,
                             "journal": str(journal) if execute else None,
                             "steps": [vars(op) for op in ops]}
        print(json.dumps(out, indent=2, default=str))
    else:
        _print_groups(report, root)
        if actions:
            _print_steps(ops, execute, journal)
    if html is not None:
        main.err.print(f"contact sheet: {main.escape(main.printable(str(html)))}")


def _options(methods: list[str], verify: bool) -> Any:
    """dups.Options from --method NAME[:THRESHOLD] values, checked."""
    from loupe.dups import Options

    chosen: dict[str, float | None] = {}
    for text in methods:
        name, _, value = text.strip().lower().partition(":")
        if name not in METHOD_DEFAULTS:
            raise QueryError(f"--method {text!r}: unknown; use one of {', '.join(METHOD_DEFAULTS)}")
        if value and name == "exact":
            raise QueryError("--method exact takes no threshold: it compares the bytes")
        try:
            threshold = float(value) if value else METHOD_DEFAULTS[name]
        except ValueError:
            raise QueryError(f"--method {text!r}: the threshold must be a number") from None
        if name in ("phash", "dhash") and threshold is not None and threshold != int(threshold):
            raise QueryError(f"--method {text!r}: a Hamming distance is a whole number of bits")
        chosen[name] = threshold
    try:
        return Options(exact=True,
                       phash=int(chosen["phash"]) if "phash" in chosen else None,
                       dhash=int(chosen["dhash"]) if "dhash" in chosen else None,
                       embedding=chosen.get("embedding"), verify=verify)
    except ValueError as exc:
        raise QueryError(f"--method: {exc}") from None


def _inside(path: str | Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _inside_root(op: Any, root: Path) -> Any:
    """A step on a file outside the library's folder (reached through a link) is skipped."""
    if not op.skip and not (_inside(op.path, root) and _inside(op.keep, root)
                            and (op.action != "hardlink" or _inside(op.target, root))):
        op.skip = f"outside the library's folder {root}"
    return op


def _undo(journal: Path, root: Path, fmt: str) -> None:
    from loupe import cli as main
    from loupe import dups as dupsmod

    journal = journal.expanduser()
    if not journal.is_file():
        raise QueryError(f"--undo {journal}: no such journal")
    # A journal names the paths it puts back: one naming a file outside this library's folder
    # is refused before anything moves.
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("state") == "begin" and not _inside(entry.get("path", "/"), root):
            raise QueryError(f"--undo {journal}: it names {entry.get('path')}, outside this "
                             f"library's folder {root}; nothing was changed")
    report = dupsmod.undo(journal)
    if fmt == "json":
        print(json.dumps({"journal": str(journal), "steps": report}, indent=2))
        return
    for r in report:
        main.err.print(f"{r['action']} {main.escape(main.printable(r['path']))}: {r['outcome']}",
                       highlight=False)
    restored = sum(r["outcome"] == "restored" for r in report)
    main.err.print(f"[green]{restored}[/] of {len(report)} steps put back; run `loupe index` to "
                   "bring the library up to date")


def _print_groups(report: dict[str, Any], root: Path) -> None:
    from loupe.dups.report import _size

    for n, g in enumerate(report["groups"], 1):
        keep = g["representative"]
        print(f"group {n}: keep {_rel(keep['path'], root)} ({_size(keep['size'])})")
        for d in g["duplicates"]:
            print(f"  duplicate {_rel(d['path'], root)} ({_size(d['size'])})")
    print(f"{len(report['groups'])} groups, {report['duplicates']} duplicates, "
          f"{_size(report['reclaimable_bytes'])} reclaimable, among {report['images']} images")


def _print_steps(ops: list[Any], executed: bool, journal: Path | None) -> None:
    from loupe import cli as main
    from loupe import dups as dupsmod

    if ops:
        print(dupsmod.describe(ops))
    if not executed:
        main.err.print("[yellow]dry run[/]: nothing changed; add --execute to do it")
        return
    done = sum(op.outcome == "done" for op in ops)
    main.err.print(f"[green]{done}[/] of {len(ops)} steps done; journal: "
                   f"{main.escape(main.printable(str(journal)))} (`loupe dups --undo` it to put "
                   "moved or linked files back); run `loupe index` to bring the library up to date")


def _rel(path: str, root: Path) -> str:
    from loupe.cli_output import printable

    try:
        return printable(Path(path).resolve().relative_to(root).as_posix())
    except ValueError:
        return printable(path)
