"""Nothing lost, nothing stuck: poison files, names that are not UTF-8, thin images, empty
mounts, unreadable folders, links out of the root, read-only libraries, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY,
    cli,
    files_state,
    make_folder,
    make_image,
    make_read_only,
    run_as_nobody,
)
from PIL import Image

from loupe import IndexOptions, Library, LibraryError

LATIN1 = b"caf\xe9-ol\xe9.png"          # a Latin-1 name: not valid UTF-8


def open_lib(root: Path) -> Library:
    return Library.open(root / ".loupe", model=TINY, device="cpu")


def test_poison_files_are_recorded_and_never_stop_the_run(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 4)
    raw = os.fsencode(root) + b"/" + LATIN1
    Image.new("RGB", (40, 30), "red").save(os.fsdecode(raw), format="PNG")
    Image.new("RGB", (1, 200_000), "blue").save(root / "thin.png")           # 1 x 200000
    Image.new("RGB", (200_000, 1), "green").save(root / "wide.png")
    (root / "corrupt.avif").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1" + os.urandom(400))
    (root / "truncated.png").write_bytes((root / "img0000.png").read_bytes()[:60])
    lib = open_lib(root)
    lib.tower("image")   # the model loads first: the bound is on what the images cost
    tracemalloc.start()
    report = lib.index(IndexOptions(batch_size=2))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200 * 2**20, f"indexing a 1x200000 image peaked at {peak / 2**20:.0f} MiB"
    errors = dict(report.error_list)
    assert set(errors) == {"corrupt.avif", "truncated.png"}, errors
    assert report.added == 4 + 3                           # the Latin-1 name and both thin images
    # the odd name is stored losslessly: found, opened, printed escaped, serialised
    latin = os.fsdecode(LATIN1)
    hit = lib.search(image=root / latin, k=1)[0]
    assert hit.path == root / latin and hit.path.is_file()
    assert "caf\\xe9-ol\\xe9.png" in hit.to_dict()["path"]     # JSON shows the odd bytes escaped
    json.dumps(hit.to_dict(), ensure_ascii=False).encode("utf-8")   # and encodes (no surrogates)
    assert lib.index().unchanged == 9                      # a second run finds every file again
    r = cli("search", "--like", latin, "-k", "9", "--format", "paths", cwd=root)
    assert r.exit_code == 0 and "caf\\xe9-ol\\xe9.png" not in r.stdout      # itself excluded
    r = cli("search", "--image", latin, "-k", "1", "--format", "paths", cwd=root)
    assert r.stdout.splitlines() == ["caf\\xe9-ol\\xe9.png"]
    r = cli("stats", "--json", cwd=root)
    assert r.exit_code == 0 and json.loads(r.stdout)["errors"] == 2


def test_markup_and_escapes_in_names_are_printed_safely(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "a[" / "b]c.jpg", seed=1, fmt="JPEG")
    make_image(root / "bell\x07[red]x\x1b[31m.png", seed=2)
    (root / "[bold]broken.jpg").write_text("nope")
    r = cli("index", str(root), "--model", TINY, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "[bold]broken.jpg" in r.stderr and "\x1b" not in r.stderr and "\x07" not in r.stderr
    r = cli("stats", cwd=root)
    assert r.exit_code == 0 and "[bold]broken.jpg" in r.stdout
    r = cli("search", "x", cwd=root)
    assert r.exit_code == 0 and "\\x1b[31m" in r.stdout and "\x1b" not in r.stdout


def test_an_empty_mount_point_asks_for_prune_and_changes_nothing(tmp_path):
    root = tmp_path / "drive"
    make_folder(root, 15)
    lib = Library.open(tmp_path / "lib", model=TINY, device="cpu", root=root)
    lib.index()
    gen = lib.catalog.generation()
    aside = tmp_path / "aside"
    aside.mkdir()
    for f in root.glob("*.png"):
        f.rename(aside / f.name)                           # the drive is not mounted
    with pytest.raises(LibraryError, match="--prune"):
        lib.index()
    assert lib.counts()["indexed"] == 15 and lib.catalog.generation() == gen
    r = cli("index", str(root), "--library", str(tmp_path / "lib"))
    assert r.exit_code == 2 and "--prune" in r.stderr
    assert lib.index(IndexOptions(prune=True)).removed == 15
    shutil.rmtree(root)
    with pytest.raises(LibraryError, match="is missing"):
        lib.index()


def test_an_unreadable_folder_is_recorded_and_its_images_kept(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_folder(root, 3)
    make_folder(root, 4, start=10, sub="locked")
    lib = open_lib(root)
    lib.index()
    import loupe.media.scan as scan_module

    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):          # as if `locked` could not be listed
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, **kwargs):
            if "locked" in dirnames:
                dirnames.remove("locked")
                onerror(PermissionError(13, "Permission denied", os.path.join(dirpath, "locked")))
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(scan_module.os, "walk", walk)
    report = lib.index()
    assert report.unreadable == ["locked"] and report.removed == 0
    assert lib.counts()["indexed"] == 7


def test_links_out_of_the_root_are_not_followed(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 2)
    secret = make_image(tmp_path / "outside" / "secret.png", seed=99)
    (root / "link.png").symlink_to(secret)
    make_image(root / "sub" / "inner.png", seed=98)
    (root / "inner-link.png").symlink_to(root / "sub" / "inner.png")
    lib = open_lib(root)
    report = lib.index()
    assert report.outside_links == 1
    paths = {lib.record(i)["path"] for i in lib.all_vectors()[0]}
    assert "link.png" not in paths and "inner-link.png" in paths


def test_a_reused_vector_that_vanished_is_healed_next_run(tmp_path, monkeypatch):
    """The move race made deterministic: a file moves while another writer drops the vector
    this run relies on. The row is not left 'ok' without a vector; the next run embeds it."""
    root = tmp_path / "photos"
    files = make_folder(root, 3)
    lib = open_lib(root)
    lib.index()
    files[0].rename(root / "moved.png")
    import loupe.ingest.apply as apply_module

    commit = apply_module.commit

    def racing_commit(catalog, batch, state, report):
        with catalog.transaction() as db:              # the other writer's orphan sweep
            db.execute("DELETE FROM vectors WHERE sha256 = ?", (batch[0].sha,))
        commit(catalog, batch, state, report)

    monkeypatch.setattr("loupe.ingest.run.commit", racing_commit)
    report = lib.index()
    assert "moved.png" in dict(report.error_list)
    monkeypatch.setattr("loupe.ingest.run.commit", commit)
    healed = lib.index()
    assert healed.embedded == 1 and lib.counts()["indexed"] == 3
    assert lib.search(image=root / "moved.png", k=1)[0].path == root / "moved.png"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_read_only_library_searches_without_writing(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 5)
    open_lib(root).index()
    before = make_read_only(tmp_path, root / ".loupe")
    code = ("import json, sys; from loupe import Library\n"
            "lib = Library.open(sys.argv[1], device='cpu')\n"
            "hits = lib.search(like='img0001.png', k=3)\n"
            "try:\n    lib.index(); wrote = 'indexed'\nexcept Exception as e:\n    wrote = str(e)\n"
            "print(json.dumps([len(hits), wrote]))")
    r = run_as_nobody(code, str(root / ".loupe"))
    assert r.returncode == 0, r.stderr
    found, wrote = json.loads(r.stdout)
    assert found == 3 and "read-only" in wrote
    assert files_state(root / ".loupe") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_full_disk_ends_in_one_line_and_keeps_what_was_committed(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        root = tmp_path / "photos"
        make_folder(root, 4)
        lib_path = disk / "lib"
        assert cli("index", str(root), "--library", str(lib_path), "--model", TINY,
                   "--device", "cpu").exit_code == 0
        filler = disk / "filler"                        # leave a few KiB free
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 24 * 1024))
        make_folder(root, 300, start=100, sub="more")
        r = cli("index", str(root), "--library", str(lib_path), "--batch-size", "8")
        assert r.exit_code == 2, r.stderr
        assert "full" in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not [p for p in lib_path.rglob("*") if ".tmp" in p.name]
        kept = Library.open(lib_path, device="cpu").counts()["indexed"]
        assert kept >= 4
        filler.unlink()
        r = cli("index", str(root), "--library", str(lib_path), "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["unchanged"] >= kept
        assert Library.open(lib_path, device="cpu").counts()["indexed"] == 304
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_vector_matrix_is_finite_after_all_this(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)
    lib = open_lib(root)
    lib.index()
    assert np.isfinite(lib.all_vectors()[1]).all()
