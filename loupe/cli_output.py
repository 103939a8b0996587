"""How the CLI prints results: a table for people, and formats that pipe.

A table is for a terminal: it fits the window. When stdout is not a terminal nothing
is ever cut, and `--format json|jsonl|csv|tsv|paths` gives what scripts parse (the
conventions of sqlite-utils and rclip). Paths are shown relative to where the user
stands, with control characters escaped so a file name cannot drive the terminal.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "jsonl", "csv", "tsv", "paths")
COLUMNS = ("rank", "id", "score", "path", "size", "date")


def printable(text: str) -> str:
    """`text` with control characters (and lone surrogates from undecodable file names)
    shown escaped: safe to print on a terminal."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:       # os.fsdecode's surrogateescape for a non-UTF-8 byte
            out.append(f"\\x{code - 0xDC00:02x}" if code >= 0xDC80 else "\\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """A path relative to the current folder (absolute when that would only climb)."""
    cwd = cwd or Path.cwd()
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:                       # another drive (Windows)
        return printable(str(path))
    return printable(str(path) if rel.startswith(".." + os.sep + "..") else rel)


def hit_rows(hits: Sequence[Any], cwd: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    for rank, h in enumerate(hits, 1):
        size = f"{h.meta['width']}x{h.meta['height']}" if h.meta.get("width") else ""
        rows.append({"rank": rank, "id": h.id, "score": round(float(h.score), 4),
                     "path": shown_path(h.path, cwd), "size": size,
                     "date": (h.meta.get("date") or "")[:10], "box": bool(h.box),
                     "confidence": h.meta.get("confidence"),
                     "similar": (h.meta.get("group") or {}).get("size", 1) - 1,
                     "matched": why_text(h.meta.get("why"))})
    return rows


_FIELD_NAMES = {"ocr": "in the image", "name": "file name", "folders": "folder", "camera": "camera",
                "date": "date"}


def why_text(why: dict[str, Any] | None) -> str:
    """A text match in a few words: 'invoice, 2023 (in the image); scans (folder)'."""
    if not why:
        return ""
    return "; ".join(f"{', '.join(printable(t) for t in terms)} ({_FIELD_NAMES.get(f, f)})"
                     for f, terms in why.get("fields", {}).items())


def write_hits(hits: Sequence[Any], fmt: str, library: Path, stream: Any = None,
               extra: dict[str, Any] | None = None) -> None:
    """Print `hits` in `fmt` (see FORMATS) on stdout; `extra` (what the answer stages say:
    confident, message) goes into the JSON object."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(json.dumps({"library": str(library), **(extra or {}),
                                 "results": [h.to_dict() for h in hits]}, indent=2) + "\n")
    elif fmt == "jsonl":
        for h in hits:
            stream.write(json.dumps(h.to_dict()) + "\n")
    elif fmt in ("csv", "tsv"):
        writer = csv.writer(stream, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in hit_rows(hits):
            writer.writerow([row[c] for c in COLUMNS])
    elif fmt == "paths":
        for h in hits:
            stream.write(shown_path(h.path) + "\n")
    else:
        write_table(hit_rows(hits), stream)


def write_table(rows: list[dict[str, Any]], stream: Any) -> None:
    """A Rich table on a terminal; plain aligned columns, never cut, anywhere else."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not rows:
        return
    if stream.isatty():
        table = Table(show_edge=False, pad_edge=False)
        for col in COLUMNS:
            table.add_column("#" if col == "rank" else col,
                             justify="right" if col in ("rank", "id", "score", "size") else "left")
        for r in rows:
            path = Text(r["path"]) + (Text(" ▣ box", style="green") if r["box"] else Text(""))
            if r.get("similar"):
                path += Text(f" +{r['similar']} similar", style="cyan")
            if r.get("matched"):
                path += Text(f"  text: {r['matched']}", style="cyan")
            table.add_row(str(r["rank"]), str(r["id"]), _score(r), path, r["size"], r["date"])
        Console(file=stream).print(table)
        return
    cells = [["#", "id", "score", "path", "size", "date"]] + [
        [str(r["rank"]), str(r["id"]), _score(r), r["path"] + (" [box]" if r["box"] else "")
         + (f" [+{r['similar']} similar]" if r.get("similar") else "")
         + (f"  [text: {r['matched']}]" if r.get("matched") else ""),
         r["size"], r["date"]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        parts = [c.rjust(w) if i in (0, 1, 2) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        stream.write("  ".join(parts).rstrip() + "\n")


def _score(row: dict[str, Any]) -> str:
    """The score, and the calibrated confidence when the cut-off gave one (z, in sigmas)."""
    conf = row.get("confidence")
    return f"{row['score']:.4f}" + (f" z{conf:.1f}" if conf is not None else "")
