"""The second stage: rerankers over the head of a first-stage ranking.

    stages = loupe.search.stages.get("superglobal,spatial")      # or a list of names / instances
    ranked = loupe.search.pipeline.apply(stages, query, first_stage, store)

A spec is a comma-separated chain of `name[:key=value[:key=value...]]`, e.g.
`superglobal:k=5,spatial:detector=orb:max_keypoints=4000`. Each method is one
module; `describe()` lists them with their parameters (`loupe rerankers`).
DBA is not a reranker but an index option: see `loupe.index.dba.augment`.
The merge rule that puts a re-scored head back in front of the tail is
`loupe.search.pipeline.apply`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from loupe.core.types import Store
from loupe.search.stages.base import Reranker
from loupe.search.stages.collapse import Collapse
from loupe.search.stages.cutoff import Cutoff
from loupe.search.stages.hubness import Hubness
from loupe.search.stages.itm import ITM, missing_modules
from loupe.search.stages.mmr import MMR
from loupe.search.stages.qe import AlphaQE
from loupe.search.stages.spatial import Spatial, SpatialLearned, SpatialORB
from loupe.search.stages.superglobal import SuperGlobal
from loupe.search.stages.vlm import VLM

__all__ = [
    "ITM", "MMR", "REGISTRY", "Collapse", "VLM", "AlphaQE", "Cutoff", "Hubness", "Reranker", "Spatial", "SpatialLearned", "SpatialORB",
    "Store", "SuperGlobal", "describe", "get",
]

REGISTRY: Mapping[str, type[Reranker]] = MappingProxyType(
    {cls.name: cls for cls in (SuperGlobal, AlphaQE, Spatial, SpatialORB, SpatialLearned, ITM, VLM,
                               Cutoff, MMR, Hubness, Collapse)}
)

_NONE = ("", "none")


def get(spec: str | Reranker | Iterable[str | Reranker] | None) -> list[Reranker]:
    """Rerankers from a spec: "superglobal,spatial", ["qe", Spatial(max_keypoints=2000)], ..."""
    if spec is None:
        return []
    items: Iterable[Any] = [spec] if isinstance(spec, str | Reranker) else spec
    chain: list[Reranker] = []
    for item in items:
        if isinstance(item, Reranker):
            chain.append(item)
        elif isinstance(item, str):
            chain.extend(_parse(part) for part in item.split(",") if part.strip().lower() not in _NONE)
        else:
            raise TypeError(f"a reranker is a name or a Reranker, got {type(item).__name__}")
    return chain


def describe() -> list[dict[str, Any]]:
    """One entry per registered reranker: name, class, parameters with defaults, one-line doc."""
    return [
        {
            "name": name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "parameters": {f.name: f.default for f in dataclasses.fields(cls)},  # type: ignore[arg-type]
            "doc": (cls.__doc__ or "").strip().splitlines()[0],
            "missing": missing_modules(getattr(cls, "requires", ())),   # empty: installed
        }
        for name, cls in REGISTRY.items()
    ]




def _parse(text: str) -> Reranker:
    name, *pairs = (part.strip() for part in text.strip().split(":"))
    cls = REGISTRY.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown reranker {name!r}; known: {', '.join(REGISTRY)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(
                f"bad parameter {pair!r} for reranker {name!r}: write key=value with key one of "
                f"{', '.join(fields)}"
            )
        kwargs[key] = _convert(value.strip(), fields[key].default, f"{name}:{key}")
    return cls(**kwargs)


def _convert(value: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return type(default)(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a valid {type(default).__name__}") from None
