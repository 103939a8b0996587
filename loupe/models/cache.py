"""Where exported models and weights checksums live: `~/.cache/loupe/models` by default,
`$LOUPE_MODEL_CACHE` or a `cache_dir` argument otherwise.

    <cache>/sha256.json             weights checksums by (path, size, mtime_ns)
    <cache>/<arch>-<key>/           one exported model (see `export_dir`)
        manifest.json               identity, towers, tokenizer, verification results
        visual.onnx textual.onnx    one file per tower (+ .int8.onnx, .data when large)
        bpe_simple_vocab_16e6.txt.gz

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from loupe.core.files import atomic_write, file_sha256

ENV_VAR = "LOUPE_MODEL_CACHE"
# Bump when the exported graphs or the manifest change meaning: old exports are then ignored.
EXPORT_FORMAT = 1
_SHA_FILE = "sha256.json"
_sha_lock = threading.Lock()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The model cache folder: the argument, else $LOUPE_MODEL_CACHE, else ~/.cache/loupe/models."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loupe" / "models"


def weights_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a (large) file, remembered by (resolved path, size, mtime_ns).

    Hashing 600 MB of weights takes about a second; every command that opens a library
    checks its model's weights, so the digest is kept in `<cache>/sha256.json` and computed
    again only when the file's size or modification time changes (or it moves)."""
    path = Path(path).expanduser().resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    table_path = cache_root(cache_dir) / _SHA_FILE
    table = _read_json(table_path)
    entry = table.get(str(path))
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) \
            and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    with _sha_lock:
        table = _read_json(table_path)  # another process may have added entries meanwhile
        table[str(path)] = {**stamp, "sha256": digest}
        try:
            write_json(table_path, table)
        except OSError:
            pass  # a read-only cache costs a re-hash next time, nothing else
    return digest


def export_key(arch: str, source: str, extra: str = "") -> str:
    """The folder name of an export: readable architecture + a digest of everything that
    names the weights (architecture, source with its checksum) and the export format."""
    blob = json.dumps({"arch": arch, "source": source, "extra": extra, "format": EXPORT_FORMAT},
                      sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", arch)[:48].strip("_") or "model"
    return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def export_dir(arch: str, source: str, cache_dir: str | Path | None = None, extra: str = "") -> Path:
    return cache_root(cache_dir) / export_key(arch, source, extra)


def dir_fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a weights folder's files: a cheap stand-in for its content."""
    parts = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            parts.append(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    data = _read_json(folder / "manifest.json")
    if data.get("format") != EXPORT_FORMAT:
        return None
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(blob))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
