"""The server's side of the answer stages: group members with their thumbnails, and the
read-only duplicate listing of `/api/dups`."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from loupe.core.errors import QueryError
from loupe.library import Library

MAX_GROUPS = 1000


def with_member_urls(result: dict[str, Any]) -> dict[str, Any]:
    """A search result whose collapsed group members carry the URLs the page shows them by."""
    group = result.get("group")
    if group:
        for m in group["members"]:
            m["url"] = f"/api/images/{m['id']}"
            m["thumb"] = f"/api/images/{m['id']}/thumb"
    return result


def dups_listing(lib: Library, methods: list[str]) -> dict[str, Any]:
    """Duplicate groups by the given methods (`loupe dups --method` syntax), without the
    server's paths: ids, paths relative to the library, sizes and thumbnails. Perceptual
    hashes read every file; spatial verification is not offered here (minutes per request
    on a large library): `loupe dups --verify` does it."""
    from loupe import dups
    from loupe.dups.cli import _options

    try:
        options = _options(methods, verify=False)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    result = dups.find_in_library(lib, options)
    groups = []
    for members in result.groups[:MAX_GROUPS]:
        listed = []
        for i in members:
            item = result.items[i]
            rec = lib.find_record(int(item.id)) if item.id is not None else None
            if rec is None:
                continue
            listed.append({"id": rec["id"], "rel_path": rec["path"], "size": item.size,
                           "width": item.width, "height": item.height,
                           "url": f"/api/images/{rec['id']}",
                           "thumb": f"/api/images/{rec['id']}/thumb"})
        if len(listed) > 1:
            groups.append({"keep": listed[0], "duplicates": listed[1:],
                           "reclaimable_bytes": sum(m["size"] for m in listed[1:])})
    return {"methods": methods, "images": len(result.items), "groups": groups,
            "duplicates": sum(len(g["duplicates"]) for g in groups),
            "reclaimable_bytes": sum(g["reclaimable_bytes"] for g in groups),
            "truncated": len(result.groups) > MAX_GROUPS}
