"""The weights checksum cache: hashed once per (path, size, mtime_ns), again when they change."""

from __future__ import annotations

import hashlib
import json
import os

from loupe.models import cache


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checksum_is_remembered_and_recomputed_when_the_file_changes(tmp_path, monkeypatch):
    calls = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: (calls.append(p), real(p))[1])
    store = tmp_path / "cache"
    f = tmp_path / "w.pt"
    f.write_bytes(b"a" * 1000)
    assert cache.weights_sha256(f, store) == sha(b"a" * 1000)
    assert cache.weights_sha256(f, store) == sha(b"a" * 1000)
    assert len(calls) == 1  # the second answer came from sha256.json
    table = json.loads((store / "sha256.json").read_text())
    assert table[str(f.resolve())]["size"] == 1000

    # same size, new content and mtime: hashed again
    f.write_bytes(b"b" * 1000)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.weights_sha256(f, store) == sha(b"b" * 1000)
    assert len(calls) == 2
    # new size, same mtime: hashed again
    mtime = f.stat().st_mtime_ns
    f.write_bytes(b"b" * 1001)
    os.utime(f, ns=(mtime, mtime))
    assert cache.weights_sha256(f, store) == sha(b"b" * 1001)
    assert len(calls) == 3


def test_the_remembered_checksum_is_what_is_returned(tmp_path):
    """Proof the table is read: a forged entry with the file's stamp is believed."""
    store = tmp_path / "cache"
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    cache.weights_sha256(f, store)
    table = json.loads((store / "sha256.json").read_text())
    table[str(f.resolve())]["sha256"] = "f" * 64
    (store / "sha256.json").write_text(json.dumps(table))
    assert cache.weights_sha256(f, store) == "f" * 64
    (store / "sha256.json").write_text("not json")  # a damaged table costs a re-hash
    assert cache.weights_sha256(f, store) == sha(b"weights")


def test_cache_dir_from_argument_env_or_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_MODEL_CACHE", str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("LOUPE_MODEL_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "loupe" / "models"


def test_export_key_names_the_weights():
    a = cache.export_key("ViT-B-32", "sha256:" + "0" * 64)
    assert a.startswith("ViT-B-32-")
    assert a == cache.export_key("ViT-B-32", "sha256:" + "0" * 64)
    assert a != cache.export_key("ViT-B-32", "sha256:" + "1" * 64)
    assert a != cache.export_key("ViT-B-16", "sha256:" + "0" * 64)


def test_local_checkpoint_identity_uses_the_cache(tmp_path, monkeypatch):
    from loupe.models.openclip import ModelSpec, resolve_source

    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"not really weights")
    monkeypatch.setenv("LOUPE_MODEL_CACHE", str(tmp_path / "c"))
    src = resolve_source(ModelSpec.parse("loupe-tiny", f))
    assert src == f"sha256:{sha(b'not really weights')}"
    assert str(f.resolve()) in json.loads((tmp_path / "c" / "sha256.json").read_text())
