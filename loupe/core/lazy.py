"""`lazy_import`: a module that loads on its first attribute access (importlib's LazyLoader).

Modules that a cold `loupe search` imports but seldom uses (faiss for a small library's exact
index) are named with it, so that the command pays for them only when they run.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """`name`, imported now if it already is, else on first use. A missing module raises
    ImportError here, at once, as a plain import would."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
