"""Indexing: self-retrieval, incremental runs, crashes, awkward and hostile files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TEST_DATA, TINY, make_folder, make_image
from PIL import Image

from loupe import IndexOptions, Library


def open_lib(root: Path) -> Library:
    return Library.open(root / ".loupe", model=TINY, device="cpu")


def consistency(lib: Library) -> dict[str, int]:
    """What must hold after any run, finished or not."""
    db = lib.catalog.db
    paths = [r[0] for r in db.execute("SELECT path FROM images")]
    assert len(paths) == len(set(paths)), "duplicate paths in the catalog"
    ok = db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok'").fetchone()[0]
    unvectored = db.execute(
        "SELECT COUNT(*) FROM images i LEFT JOIN vectors v ON v.sha256 = i.sha256 AND v.space = ? "
        "WHERE i.status = 'ok' AND v.sha256 IS NULL", (lib.catalog.active_space(),)).fetchone()[0]
    assert unvectored == 0, "an indexed image has no vector"
    ids, matrix = lib.all_vectors()
    assert len(ids) == ok == len(matrix)
    return {"ok": ok, "rows": len(paths)}


def test_every_image_is_its_own_top1(tmp_path):
    files = make_folder(tmp_path / "photos", 24)
    lib = open_lib(tmp_path / "photos")
    report = lib.index(IndexOptions(batch_size=5))
    assert (report.added, report.errors, report.embedded) == (24, 0, 24)
    for f in files:
        hit = lib.search(image=f, k=1)[0]
        assert hit.path == f
        assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_real_photos_self_retrieval(tmp_path, shared_data):
    photos = tmp_path / "photos"
    src = sorted((shared_data / "strecha" / "scenes" / "fountain-P11").glob("*.jpg"))[:6]
    photos.mkdir()
    for p in src:
        shutil.copy(p, photos / p.name)
    lib = open_lib(photos)
    lib.index()
    for p in src:
        assert lib.search(image=photos / p.name, k=1)[0].path.name == p.name
    rec = lib.record(lib.search(image=photos / src[0].name, k=1)[0].id)
    assert rec["format"] == "JPEG" and rec["width"] > rec["height"] > 0


def test_incremental_add_change_rename_delete(tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 10)
    lib = open_lib(root)
    first = lib.index()
    assert (first.added, first.unchanged) == (10, 0)

    again = lib.index()
    assert (again.added, again.embedded, again.unchanged) == (0, 0, 10)

    make_folder(root, 3, start=100)                      # 3 new
    make_image(files[0], seed=999)                       # 1 changed content
    os.utime(files[0], (time.time() + 5, time.time() + 5))
    files[1].rename(root / "renamed.png")                # 1 moved
    (root / "sub").mkdir()
    files[2].rename(root / "sub" / "moved.png")          # 1 moved to another folder
    files[3].unlink()                                    # 1 deleted
    shutil.copy(files[4], root / "copy_of_4.png")        # 1 copy of indexed content
    report = lib.index()
    assert report.added == 3
    assert report.updated == 1
    assert report.moved == 2
    assert report.copies == 1
    assert report.removed == 1                           # the deleted file; moved ones are not removed
    assert report.embedded == 4                          # only new content is embedded
    assert report.unchanged == 6                         # files 4..9
    counts = consistency(lib)
    assert counts["ok"] == 10 + 3 + 1 - 1
    assert lib.search(image=root / "renamed.png", k=1)[0].path == root / "renamed.png"
    assert lib.search(image=files[0], k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    gone = str(files[3])
    assert all(str(h.path) != gone for h in lib.search(image=files[5], k=50))
    # The vector of the deleted file is gone too; the copy shares the original's.
    assert lib.catalog.counts()["vectors"] == 12


def test_awkward_files_are_indexed_or_recorded(tmp_path, awkward_dir):
    root = tmp_path / "awkward"
    shutil.copytree(awkward_dir, root)
    lib = open_lib(root)
    report = lib.index(IndexOptions(include=("*",)))     # every file, not only image endings
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and ".loupe" not in p.parts)
    rows = {r["path"]: r for r in map(dict, lib.catalog.db.execute("SELECT * FROM images"))}
    assert sorted(rows) == files, "every file is either indexed or recorded"
    errors = {p: r["error"] for p, r in rows.items() if r["status"] == "error"}
    assert all(errors.values())
    corrupt = [p for p in files if "corrupt" in p]
    assert corrupt and all(p in errors for p in corrupt)
    assert "LICENSE" in errors and "not an image" in errors["LICENSE"]
    # Content, not the name, decides: JPEG bytes named .png/.bmp/.svg are JPEGs.
    for lie in ("ukbench09380.png", "ukbench09380.bmp", "ukbench09380.svg"):
        match = [r for p, r in rows.items() if p.endswith(lie)]
        assert match and all(r["status"] == "ok" and r["format"] == "JPEG" for r in match)
    by_format = {r["format"] for r in rows.values() if r["status"] == "ok"}
    assert {"JPEG", "PNG", "GIF", "TIFF", "PPM", "WEBP"} <= by_format
    assert report.errors == len(errors)
    consistency(lib)


def test_hostile_files_are_recorded_with_reasons(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 2)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not a picture at all")
    good = make_image(root / "full.jpg", seed=7, size=(400, 300), fmt="JPEG").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    make_image(root / "huge.png", seed=8, size=(1200, 1000))
    (root / "big.bmp").write_bytes(b"BM" + b"\0" * 300_000)
    lib = open_lib(root)
    report = lib.index(IndexOptions(max_pixels=1_000_000, max_file_bytes=200_000))
    errors = dict(report.error_list)
    assert "empty" in errors["empty.jpg"]
    assert "not an image" in errors["text.jpg"]
    assert "truncated" in errors["truncated.jpg"] or "corrupt" in errors["truncated.jpg"]
    assert "too many pixels" in errors["huge.png"]
    assert "too large" in errors["big.bmp"]
    assert report.added == 3  # the two generated files and full.jpg
    # Recorded errors are not retried while the file is unchanged...
    assert lib.index(IndexOptions(max_pixels=1_000_000, max_file_bytes=200_000)).errors == 0
    # ...and a fixed file is picked up.
    make_image(root / "text.jpg", seed=9, fmt="JPEG")
    os.utime(root / "text.jpg", (time.time() + 5, time.time() + 5))
    assert lib.index().updated == 1
    assert lib.catalog.record(lib.catalog.id_of_path("text.jpg"))["status"] == "ok"


def test_exif_orientation_and_date(tmp_path):
    root = tmp_path / "photos"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    exif[0x010F], exif[0x0110] = "Acme", "Snapper 3000"
    exif.get_ifd(0x8769)[0x9003] = "2021:06:15 10:30:00"
    path = make_image(root / "rotated.jpg", seed=1, size=(120, 60), fmt="JPEG", exif=exif)
    lib = open_lib(root)
    lib.index()
    rec = lib.record(lib.catalog.id_of_path("rotated.jpg"))
    assert (rec["width"], rec["height"]) == (60, 120)
    assert rec["taken_at"] == "2021-06-15T10:30:00" == rec["date"]
    assert rec["camera"] == "Acme Snapper 3000"
    assert lib.load_image(rec["id"]).size == (60, 120)
    assert path.exists()


def test_hidden_folders_and_globs(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 2)
    make_folder(root, 2, start=10, sub=".hidden")
    make_folder(root, 2, start=20, sub="raw")
    (root / "notes.txt").write_text("hello")
    lib = open_lib(root)
    report = lib.index(IndexOptions(exclude=("raw/**",)))
    assert report.scanned == 2
    assert report.errors == 0  # notes.txt is not an image ending: not considered
    report = lib.index(IndexOptions(include=("raw/*",)))
    assert report.added == 2 and report.removed == 2  # a library mirrors what the last scan saw


# Runs `loupe ...` with the third batch commit followed by a long pause, announced by a
# marker file: the test kills the process at that moment, mid-run by construction.
_PAUSING_CLI = """
import pathlib, sys, time
import loupe.ingest.run as run
marker, args = sys.argv[1], sys.argv[2:]
commit, done = run.commit, []
def pausing_commit(*a, **k):
    commit(*a, **k)
    done.append(1)
    if len(done) == 3:
        pathlib.Path(marker).touch()
        time.sleep(600)
run.commit = pausing_commit
sys.argv = ["loupe", *args]
from loupe.cli import main
main()
"""


def _count_ok(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM images WHERE status='ok'").fetchone()[0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes(tmp_path, sig):
    root = tmp_path / "photos"
    n = 60
    for i in range(n):
        make_image(root / f"d{i % 7}" / f"p{i:04d}.jpg", seed=i, size=(640, 480), fmt="JPEG")
    db_path = root / ".loupe" / "catalog.db"
    args = ["index", str(root), "--model", TINY, "--device", "cpu", "--batch-size", "4", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = tmp_path / "three-batches-committed"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_CLI, str(marker), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1].decode()
    proc.send_signal(sig)
    out, errtext = proc.communicate(timeout=60)
    done_at_kill = _count_ok(db_path)
    assert done_at_kill == 12, "three batches of four were committed before the signal"
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert b"run the same command again" in errtext

    resumed = subprocess.run([sys.executable, "-m", "loupe.cli", *args, "--json"], env=env,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    lib = Library.open(root / ".loupe", device="cpu")
    counts = consistency(lib)
    assert counts["ok"] == counts["rows"] == n
    # Nothing committed before the kill was embedded again.
    report = json.loads(resumed.stdout)
    assert report["embedded"] == n - report["unchanged"]
    assert report["unchanged"] == done_at_kill
    probe = root / "d3" / "p0003.jpg"
    assert lib.search(image=probe, k=1)[0].path == probe
    assert np.isfinite(lib.all_vectors()[1]).all()


def _recording(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)
    return wrapped


def _no_catalog_reads(lib: Library) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the search index was rebuilt from the catalog")
    lib.catalog.load_matrix = fail


def test_saved_index_is_used_only_when_it_belongs(tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 12)
    lib = open_lib(root)
    lib.index()
    gen = lib.catalog.generation()
    space = lib.catalog.active_space()
    record = json.loads((lib.path / "spaces" / str(space) / "snapshot.json").read_text())
    assert (record["generation"], record["count"], record["epoch"]) == (gen, 12, lib.catalog.epoch())
    fresh = Library.open(root / ".loupe", device="cpu")
    _no_catalog_reads(fresh)                               # the first query builds nothing
    ids, matrix = fresh.all_vectors()
    from_db = lib.catalog.load_matrix(space, lib.encoder.dim)
    assert np.array_equal(ids, from_db[0]) and np.array_equal(matrix, from_db[1])
    # A change moves the generation on; the saved index follows it.
    files[0].unlink()
    lib.index()
    assert lib.catalog.generation() > gen
    fresh = Library.open(root / ".loupe", device="cpu")
    _no_catalog_reads(fresh)
    assert len(fresh.all_vectors()[0]) == 11
    # A no-op run changes nothing searchable: same generation.
    gen = lib.catalog.generation()
    lib.index()
    assert lib.catalog.generation() == gen
    # A saved index from a generation the catalog has not reached (a restored backup), or
    # from another catalog's history, is ignored: rebuilt from the catalog, never trusted.
    saved = lib.path / "spaces" / str(space) / "snapshot.json"
    for change in ({"generation": gen + 5}, {"epoch": "another-history"}):
        saved.write_text(json.dumps({**record, **change}))
        fresh = Library.open(root / ".loupe", device="cpu")
        calls: list[tuple] = []
        fresh.catalog.load_matrix = _recording(fresh.catalog.load_matrix, calls)
        assert len(fresh.all_vectors()[0]) == 11 and calls, change


def test_heic_and_avif_with_the_plugin(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC needs the [heif] extra")
    pillow_heif.register_heif_opener()
    root = tmp_path / "photos"
    make_image(root / "phone.heic", seed=11, fmt="HEIF")
    make_image(root / "web.avif", seed=12, fmt="AVIF")
    lib = open_lib(root)
    report = lib.index()
    assert (report.added, report.errors) == (2, 0), report.error_list
    formats = {r["path"]: r["format"] for r in map(dict, lib.catalog.db.execute("SELECT * FROM images"))}
    assert formats == {"phone.heic": "HEIF", "web.avif": "AVIF"}
    assert lib.search(image=root / "phone.heic", k=1)[0].path == root / "phone.heic"


def test_refresh_reads_only_what_changed(tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 10)
    writer = open_lib(root)
    writer.index()
    reader = Library.open(root / ".loupe", device="cpu")
    reader.all_vectors()                                   # the reader's snapshot, before changes
    make_folder(root, 3, start=50)                         # added
    make_image(files[0], seed=777)                         # changed
    os.utime(files[0], (time.time() + 5, time.time() + 5))
    files[1].unlink()                                      # deleted
    (root / "img0002.png").write_text("now broken")        # ok -> error
    os.utime(root / "img0002.png", (time.time() + 5, time.time() + 5))
    writer.index()
    shutil.rmtree(writer.path / "spaces")                  # force the catalog path, not the saved copy
    calls = []
    load = reader.catalog.load_matrix
    reader.catalog.load_matrix = lambda space, dim, since=None: calls.append(since) or load(space, dim, since)
    ids, matrix = reader.all_vectors()
    assert calls and all(c is not None for c in calls), "the refresh re-read every vector"
    want_ids, want = load(writer.catalog.active_space(), writer.encoder.dim)
    assert ids.tolist() == want_ids.tolist() and np.array_equal(matrix, want)
    assert len(ids) == 10 + 3 - 2


def test_catalog_from_before_a_new_column_is_migrated(tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(TEST_DATA / "library-0.1.0", root)
    # Rebuild the images table as releases before 0.1.0's incremental refresh made it: no `gen`.
    with sqlite3.connect(root / ".loupe" / "catalog.db") as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(images)") if r[1] != "gen"]
        db.executescript("DROP INDEX images_gen; ALTER TABLE images RENAME TO newer;")
        db.execute("""CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE,
            sha256 TEXT, size INTEGER NOT NULL, mtime REAL NOT NULL, width INTEGER, height INTEGER,
            format TEXT, taken_at TEXT, date TEXT, camera TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error')), error TEXT,
            indexed_at REAL NOT NULL)""")
        db.execute(f"INSERT INTO images SELECT {', '.join(columns)} FROM newer")
        db.execute("DROP TABLE newer")
    shutil.rmtree(root / ".loupe" / "vectors")
    reopened = Library.open(root / ".loupe", device="cpu")
    assert "gen" in {r[1] for r in reopened.catalog.db.execute("PRAGMA table_info(images)")}
    assert len(reopened.search(image=root / "a" / "img01.png", k=3)) == 3
    make_folder(root, 1, start=9)
    assert reopened.index().added == 1


def test_turning_dba_off_restores_the_stored_vectors(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 12)
    lib = open_lib(root)
    lib.index()
    space = lib.catalog.active_space()
    raw_ids, raw = lib.catalog.load_matrix(space, lib.encoder.dim)
    lib.set_dba(3)
    ids, augmented = lib.all_vectors()
    assert ids.tolist() == raw_ids.tolist() and not np.allclose(augmented, raw)
    make_folder(root, 1, start=40)
    lib.index()                                            # DBA kept current as images come
    assert len(lib.all_vectors()[0]) == 13
    lib.set_dba(None)
    make_folder(root, 1, start=41)
    lib.index()
    ids, matrix = lib.all_vectors()
    raw_ids, raw = lib.catalog.load_matrix(space, lib.encoder.dim)
    assert ids.tolist() == raw_ids.tolist() and np.array_equal(matrix, raw)


def test_load_matrix_grows_past_a_stale_count(tmp_path):
    """The matrix is sized by a count taken before the read; rows committed in between (a
    writer between the two statements) still all come back."""
    root = tmp_path / "photos"
    make_folder(root, 12)
    lib = open_lib(root)
    lib.index()
    catalog, space, dim = lib.catalog, lib.catalog.active_space(), lib.encoder.dim
    ref_ids, ref = catalog.load_matrix(space, dim)
    real = catalog.db

    class StaleCount:
        def execute(self, sql, args=()):
            if sql.startswith("SELECT COUNT(*)"):
                return real.execute("SELECT 3")
            return real.execute(sql, args)

    catalog._local.conn = StaleCount()
    try:
        ids, matrix = catalog.load_matrix(space, dim)
    finally:
        catalog._local.conn = real
    assert len(ref_ids) == 12
    assert ids.tolist() == ref_ids.tolist() and np.array_equal(matrix, ref)
