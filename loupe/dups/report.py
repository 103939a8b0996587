"""Duplicate groups as JSON and as an HTML contact sheet."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loupe.core.files import atomic_write

if TYPE_CHECKING:
    from loupe.dups.find import Result

_THUMB = 160


def to_json(result: Result) -> dict[str, Any]:
    """Groups (representative first, with the evidence of every edge), options, counts."""
    from dataclasses import asdict

    from loupe.dups.find import as_dict

    edges: dict[int, list[dict[str, Any]]] = {}
    group_of = {i: g for g, members in enumerate(result.groups) for i in members}
    for p in result.pairs:
        g = group_of.get(p.a)
        if g is None:
            continue
        edge = {"a": str(result.items[p.a].path), "b": str(result.items[p.b].path),
                "methods": list(p.methods)}
        for key in ("phash", "dhash", "cosine", "inliers", "matches"):
            value = getattr(p, key)
            if value is not None:
                edge[key] = round(value, 6) if isinstance(value, float) else value
        edges.setdefault(g, []).append(edge)
    groups = []
    for g, members in enumerate(result.groups):
        listed = [as_dict(result.items[i]) for i in members]
        groups.append({
            "representative": listed[0],
            "duplicates": listed[1:],
            "reclaimable_bytes": sum(m["size"] for m in listed[1:]),
            "pairs": edges.get(g, []),
        })
    return {
        "options": asdict(result.options),
        "images": len(result.items),
        "unreadable": [{"path": str(it.path), "error": it.error}
                       for it in result.items if it.error],
        "candidate_pairs": result.candidates,
        "confirmed_pairs": len(result.pairs),
        "groups": groups,
        "duplicates": sum(len(g) - 1 for g in result.groups),
        "reclaimable_bytes": sum(g["reclaimable_bytes"] for g in groups),
        "timings": result.timings,
    }


def contact_sheet(result: Result, out: str | Path, embed: bool = True, thumb: int = _THUMB) -> Path:
    """Write an HTML page with one row of thumbnails per group, the representative first
    and marked. `embed`: thumbnails inside the page (self-contained); otherwise the page
    links the files by their path relative to it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for g, members in enumerate(result.groups, start=1):
        cells = []
        for rank, i in enumerate(members):
            item = result.items[i]
            src = _thumbnail_uri(item.path, thumb) if embed else _relative(item.path, out.parent)
            dims = f"{item.width}&times;{item.height}" if item.width else "not decodable"
            role = "keep" if rank == 0 else "duplicate"
            img = (f'<img src="{html.escape(src, quote=True)}" alt="" loading="lazy">'
                   if src else '<div class="missing">no preview</div>')
            cells.append(
                f'<figure class="{role}">{img}<figcaption><b>{role}</b><br>'
                f'{html.escape(item.path.name)}<br>{dims}, {_size(item.size)}<br>'
                f'<span class="path">{html.escape(str(item.path))}</span></figcaption></figure>')
        rows.append(f'<section><h2>Group {g} &middot; {len(members)} images</h2>'
                    f'<div class="row">{"".join(cells)}</div></section>')
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Loupe duplicates</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:1.5em}"
        ".row{display:flex;flex-wrap:wrap;gap:12px}"
        f"figure{{margin:0;width:{thumb}px}}img,.missing{{max-width:{thumb}px;"
        f"max-height:{thumb}px;display:block}}"
        ".missing{height:80px;background:#eee;color:#777;text-align:center;line-height:80px}"
        "figure.keep{outline:3px solid #2a2;outline-offset:2px}"
        "figcaption{font-size:12px;word-break:break-all}.path{color:#777}</style></head><body>"
        f"<h1>{len(result.groups)} duplicate groups, "
        f"{sum(len(g) - 1 for g in result.groups)} duplicates</h1>"
        + "".join(rows) + "</body></html>")
    atomic_write(out, lambda fh: fh.write(page.encode("utf-8")))
    return out


def _thumbnail_uri(path: Path, size: int) -> str | None:
    from loupe.core.errors import DecodeError
    from loupe.media.decode import decode, read_bytes

    try:
        image = decode(read_bytes(Path(path)), reduce_to=size).image
    except (OSError, DecodeError):
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _relative(path: Path, folder: Path) -> str:
    try:
        rel = os.path.relpath(Path(path).resolve(), folder.resolve())
    except ValueError:      # another drive (Windows)
        return Path(path).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
