"""Switching a library's model: `loupe models`, the target's fill (resumable after kill -9),
the bridge against its definition, searches mid-switch, the atomic swap, drop."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, cli, make_folder, make_image

from loupe import Filters, IndexOptions, Library, LibraryError
from loupe.models import load_encoder
from loupe.switch import bridge as br
from loupe.switch.perturb import perturbed_copy

N = 40
SAMPLE = 12


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory) -> Path:
    """loupe-tiny with 30% relative noise on every weight: a related model, another space."""
    return perturbed_copy(TINY, tmp_path_factory.mktemp("weights") / "tiny-perturbed.pt", 0.3)


@pytest.fixture
def library(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LOUPE_BRIDGE_SAMPLE", str(SAMPLE))
    root = tmp_path / "photos"
    make_folder(root, N - 10, sub="a")
    make_folder(root, 10, start=N - 10, sub="b")
    make_image(root / "b" / "copy.png", seed=3)          # a second file with img0003's content
    Library.open(root / ".loupe", model=TINY, device="cpu").index(IndexOptions(batch_size=8))
    return root


class Stop(Exception):
    pass


def stop_after(n: int):
    def progress(done: int, total: int) -> None:
        if done >= n:
            raise Stop
    return progress


_ENCODERS: dict = {}


def encode_files(name: str, weights: Path | None, paths: list[Path]) -> np.ndarray:
    from loupe.media.decode import load_image

    key = (name, weights)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(name, weights, "cpu", backend="torch", towers=("image",))
    enc = _ENCODERS[key]
    return enc.encode_pixels(np.stack([enc.prepare(load_image(p, reduce_to=enc.image_size))
                                       for p in paths]))


# --- the bridge against its definition ---------------------------------------------------------

def test_procrustes_is_the_svd_solution_and_recovers_a_rotation():
    rng = np.random.default_rng(0)
    x_new = br._unit(rng.normal(size=(200, 16)))
    rot, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    x_old = x_new @ rot
    w = br.procrustes(x_new, x_old)
    u, _, vt = np.linalg.svd(x_new.T.astype(np.float64) @ x_old, full_matrices=False)
    np.testing.assert_allclose(w, u @ vt, atol=1e-5)                    # W = U V^T of X_new^T X_old
    np.testing.assert_allclose(w, rot, atol=1e-4)                        # exact data: the rotation
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)           # orthogonal
    # another dimension: semi-orthogonal, still the minimiser among such maps
    x_old2 = br._unit(x_new @ rng.normal(size=(16, 24)))
    w2 = br.procrustes(x_new, x_old2)
    np.testing.assert_allclose(w2 @ w2.T, np.eye(16), atol=1e-5)
    for _ in range(20):                                                  # no random rotation does better
        q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
        other = q[:16]
        assert np.linalg.norm(x_new @ w2 - x_old2) <= np.linalg.norm(x_new @ other - x_old2) + 1e-6


def test_least_squares_solves_the_normal_equations_and_fit_keeps_the_best():
    rng = np.random.default_rng(1)
    x_new = rng.normal(size=(300, 8))
    a = rng.normal(size=(8, 8))                  # a non-rigid map: least squares can fit it,
    x_old = br._unit(x_new @ a)                  # a rotation cannot
    w = br.least_squares(x_new, x_old, ridge=0.0)
    expected, *_ = np.linalg.lstsq(x_new, x_old, rcond=None)
    np.testing.assert_allclose(w, expected, atol=1e-4)
    bridge = br.fit(x_new, x_old)
    assert set(bridge.holdout) == {"procrustes", "lstsq"}               # no text pairs given
    best = max(bridge.holdout, key=lambda m: (bridge.holdout[m]["mrr"], bridge.holdout[m]["cosine"]))
    assert bridge.method == best
    assert bridge.holdout["lstsq"]["cosine"] > bridge.holdout["procrustes"]["cosine"]
    # rotated data: both fit it; the text-only candidate given wrong pairs measures worse
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    x_rot = br._unit(x_new) @ rot
    junk = (rng.normal(size=(50, 8)), rng.normal(size=(50, 8)))
    bridge = br.fit(x_new, x_rot, text_pairs=junk)
    assert bridge.method in ("procrustes", "lstsq") and bridge.holdout["procrustes"]["mrr"] == 1.0
    assert bridge.holdout["text-procrustes"]["cosine"] < bridge.holdout["procrustes"]["cosine"]


def test_calibration_puts_bridged_scores_on_the_new_scale():
    rng = np.random.default_rng(2)
    x_new = br._unit(rng.normal(size=(100, 8)))
    x_old = br._unit(x_new @ rng.normal(size=(8, 8)) + 0.3 * rng.normal(size=(100, 8)))
    bridge = br.fit(x_new, x_old, methods=("procrustes",))
    q = x_new[5]
    raw = bridge.cal_old @ bridge.to_old(q)               # the sample scored through the bridge
    cal = bridge.calibrate(q, raw)
    s_new = bridge.cal_new @ q
    slope, intercept = np.polyfit(raw, s_new, 1)                          # the least-squares line
    np.testing.assert_allclose(cal, slope * raw + intercept, atol=1e-5)
    assert cal.mean() == pytest.approx(s_new.mean(), abs=1e-5)
    assert np.all(np.diff(cal[np.argsort(raw)]) >= -1e-7)                 # order kept
    flipped = br.Bridge("procrustes", bridge.w, bridge.cal_new, -bridge.cal_old, n=bridge.n)
    kept = flipped.calibrate(q, np.sort(raw))                              # never a negative slope
    assert np.all(np.diff(kept) >= 0) and kept[-1] > kept[0]


# --- the commands --------------------------------------------------------------------------

def test_models_list_add_switch_drop_from_the_command_line(library, perturbed):
    r = cli("models", "--format", "json", cwd=library)
    (space,) = json.loads(r.stdout)
    assert (space["model"], space["active"], space["embedded"], space["total"]) == (TINY, True, N + 1, N + 1)
    r = cli("models", "add", "loupe-tiny", "--weights", str(perturbed), cwd=library)
    assert r.exit_code == 0 and "added space 2" in r.stdout
    r = cli("models", "add", "loupe-tiny", "--weights", str(perturbed), cwd=library)
    assert "already there: space 2" in r.stdout
    rows = json.loads(cli("models", "--format", "json", cwd=library).stdout)
    assert [(m["id"], m["embedded"], m["active"], m["target"]) for m in rows] == \
        [(1, N + 1, True, False), (2, 0, False, False)]
    assert rows[1]["weights"] == str(perturbed.resolve()) and rows[1]["pipeline"] == rows[0]["pipeline"]
    csv_out = cli("models", "--format", "csv", cwd=library).stdout.splitlines()
    assert csv_out[0].startswith("id,name,model,weights") and len(csv_out) == 3

    r = cli("models", "switch", "2", "--json", "--batch-size", "8", cwd=library)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["switched"] and report["embedded"] == N       # N distinct contents, one copy
    assert report["bridge"]["n"] == SAMPLE
    rows = json.loads(cli("models", "--format", "jsonl", cwd=library).stdout.splitlines()[1])
    assert rows["active"] and rows["embedded"] == N + 1
    r = cli("models", "drop", "2", cwd=library)
    assert r.exit_code == 2 and "active model" in r.stderr
    r = cli("models", "drop", TINY, cwd=library)
    assert r.exit_code == 0 and f"{N} vectors deleted" in r.stdout
    assert not (library / ".loupe" / "spaces" / "1").exists()
    (left,) = json.loads(cli("models", "--format", "json", cwd=library).stdout)
    assert left["id"] == 2 and left["active"]
    lib = Library.open(library / ".loupe", device="cpu")
    assert lib.catalog.db.execute("SELECT COUNT(*) FROM vectors WHERE space = 1").fetchone()[0] == 0
    hit = lib.search(image=library / "a" / "img0005.png", k=1)[0]
    assert hit.path == library / "a" / "img0005.png"


def test_bad_input_changes_nothing_and_loads_no_model(library, tmp_path):
    for args, words in [
        (("models", "switch", "loupe-tiny", "--weights", str(tmp_path / "nope.pt")), "no such file"),
        (("models", "drop", "ViT-B-32:openai"), "no model 'ViT-B-32:openai'"),
        (("models", "drop", "1"), "active model"),
        (("models", "switch", TINY), "already this library's active model"),
        (("models", "fill"), "no model switch is under way"),
        (("models", "--format", "xml"), "--format 'xml'"),
    ]:
        r = cli(*args, cwd=library)
        assert r.exit_code == 2 and words in r.stderr, (args, r.stderr)
    lib = Library.open(library / ".loupe", device="cpu")
    assert len(lib.models()) == 1 and lib.stats()["switch"] is None


# --- searching mid-switch ----------------------------------------------------------------------

def test_search_mid_switch_merges_both_spaces_by_the_rule(library, perturbed):
    lib = Library.open(library / ".loupe", device="cpu")
    lib.switch_model("loupe-tiny", perturbed)
    with pytest.raises(Stop):
        lib.fill_switch(stop_after(16), IndexOptions(batch_size=8))
    status = lib.stats()["switch"]
    assert 16 <= status["embedded"] < status["total"] == N + 1
    assert status["bridge"]["n"] == SAMPLE and status["bridge"]["from"] == 1
    target = status["target"]
    bridge = __import__("loupe.switch", fromlist=["load_bridge"]).load_bridge(lib, target)

    query = library / "b" / "img0035.png"
    hits = lib.search(image=query, k=N + 1)
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) == N + 1                            # every image once
    q_new = encode_files("loupe-tiny", perturbed, [query])[0]
    in_new = set(lib.catalog.searchable_ids(target).tolist())
    assert 0 < len(in_new) < N + 1
    old_ids = np.array([i for i in ids if i not in in_new])
    raw_old = lib.vectors(old_ids) @ bridge.to_old(q_new)
    expected = {**dict(zip(old_ids.tolist(), bridge.calibrate(q_new, raw_old), strict=True))}
    new_ids = np.array(sorted(in_new))
    from loupe.switch import target_vectors

    expected.update(zip(new_ids.tolist(), target_vectors(lib, target).vectors(new_ids) @ q_new, strict=True))
    for h in hits:                       # each score is its space's rule, on the new scale
        assert h.score == pytest.approx(float(expected[h.id]), abs=1e-4), h.id
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the new model's query and a new-space image: scored in the new space, exactly
    filled = next(h for h in hits if h.id in in_new)
    assert filled.score == pytest.approx(float(encode_files("loupe-tiny", perturbed, [filled.path])[0] @ q_new),
                                         abs=1e-4)
    # filters, excluded ids and like= hold across both spaces
    only_b = lib.search(image=query, k=50, filters=Filters(folder="b"))
    assert only_b and all(h.meta["rel_path"].startswith("b/") for h in only_b)
    like = lib.search(like="b/img0035.png", k=5)
    assert like and all(h.meta["rel_path"] != "b/img0035.png" for h in like)
    assert lib.search("a photo", k=5)                                    # text through the new tower


def test_searches_during_a_switch_never_fail_and_the_swap_is_picked_up(library, perturbed):
    server = Library.open(library / ".loupe", device="cpu")               # a long-lived reader
    server.auto_refresh = False
    server.refresh()
    old = server.search(image=library / "a" / "img0002.png", k=3)
    assert old[0].path.name == "img0002.png"
    writer = Library.open(library / ".loupe", device="cpu")
    writer.switch_model("loupe-tiny", perturbed)
    failures, answers, done = [], [], threading.Event()

    def search_loop() -> None:
        while not done.is_set():
            try:
                server.refresh()
                hits = server.search(image=library / "a" / "img0002.png", k=5)
                answers.append((len(hits), hits[0].path.name, server.catalog.active_space()))
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(repr(exc))

    thread = threading.Thread(target=search_loop)
    thread.start()
    try:
        report = writer.fill_switch(None, IndexOptions(batch_size=4))
        time.sleep(0.5)
    finally:
        done.set()
        thread.join()
    assert report.switched and not failures, failures[:3]
    assert answers and all(n == 5 and name == "img0002.png" for n, name, _ in answers)
    assert {a for _, _, a in answers} <= {1, 2} and answers[-1][2] == 2
    assert server.catalog.active_space() == 2
    assert server.tower("image").identity["source"].startswith("sha256:")  # the new model serves
    assert server.searchable() == N + 1 and not server.auto_refresh      # the server keeps its policy
    saved = json.loads((library / ".loupe" / "spaces" / "2" / "snapshot.json").read_text())
    assert saved["count"] == N + 1                                       # saved before the swap


def test_the_swap_waits_for_every_image_and_index_finishes_it(library, perturbed):
    lib = Library.open(library / ".loupe", device="cpu")
    lib.switch_model("loupe-tiny", perturbed)                          # --later: nothing embedded
    from loupe.storage import spaces as sp

    assert sp.swap(lib.catalog, 2) is False and lib.catalog.active_space() == 1
    make_image(library / "a" / "new.png", seed=999)                     # arrives mid-switch
    with pytest.raises(Stop):
        lib.fill_switch(stop_after(8), IndexOptions(batch_size=8))
    assert lib.catalog.active_space() == 1
    r = cli("index", str(library), "--batch-size", "8", "--json")        # indexes, then carries on
    report = json.loads(r.stdout)
    assert report["added"] == 1 and report["switch"]["switched"]
    assert report["switch"]["embedded"] == N + 1 - 8                     # N + new.png, minus one batch
    assert lib.catalog.active_space() == 2 and lib.stats()["switch"] is None
    vec = lib.vectors([lib.resolve("a/new.png")])[0]
    np.testing.assert_allclose(vec, encode_files("loupe-tiny", perturbed, [library / "a" / "new.png"])[0],
                               atol=1e-5)
    # and back: the first model's space only lacks what arrived since; that is all it embeds
    make_image(library / "a" / "newer.png", seed=1000)
    lib.switch_model(TINY)
    r = cli("index", str(library), "--batch-size", "8", cwd=library)
    assert "model switch: 1 images embedded with the new model; it is now the active model" in r.stderr
    assert lib.catalog.active_space() == 1 and lib.stats()["switch"] is None
    models = lib.models()
    assert models[0]["active"] and models[0]["embedded"] == models[0]["total"] == N + 3
    assert models[1]["embedded"] == N + 3
    vec = lib.vectors([lib.resolve("a/newer.png")])[0]
    np.testing.assert_allclose(vec, encode_files(TINY, None, [library / "a" / "newer.png"])[0], atol=1e-5)


def test_drop_a_target_ends_the_switch(library, perturbed):
    lib = Library.open(library / ".loupe", device="cpu")
    lib.switch_model("loupe-tiny", perturbed)
    with pytest.raises(Stop):
        lib.fill_switch(stop_after(16), IndexOptions(batch_size=8))
    assert (library / ".loupe" / "spaces" / "2" / "bridge.npz").is_file()
    assert lib.drop_model("loupe-tiny", perturbed) == {"space": 2, "vectors": 16}
    assert lib.stats()["switch"] is None and len(lib.models()) == 1
    assert not (library / ".loupe" / "spaces" / "2").exists()
    hits = lib.search(image=library / "a" / "img0004.png", k=1)          # back to the old space alone
    assert hits[0].path.name == "img0004.png" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(LibraryError, match="active model"):
        lib.drop_model(TINY)


# --- kill -9 at random points ------------------------------------------------------------------

# Runs `loupe models ...` with a long pause announced by a marker file, where the test kills the
# process: after commit number K of the fill ("commit"), or inside the model call of batch K,
# its vectors computed and not committed ("embed").
_PAUSING = """
import pathlib, sys, time
import loupe.switch as switch
import loupe.ingest.embed as emb
marker, where, k, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
calls = []
def pausing(fn):
    def wrapped(*a, **kw):
        out = fn(*a, **kw)
        calls.append(1)
        if len(calls) == k:
            pathlib.Path(marker).touch()
            time.sleep(600)
        return out
    return wrapped
if where == "commit":
    switch.commit_vectors = pausing(switch.commit_vectors)
else:
    emb.embed = pausing(emb.embed)
sys.argv = ["loupe", *args]
from loupe.cli import main
main()
"""


def _vector_count(db: Path, space: int) -> int:
    import sqlite3

    with sqlite3.connect(db, timeout=10) as con:
        return con.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space,)).fetchone()[0]


def test_a_switch_killed_at_random_points_resumes_complete(library, perturbed, tmp_path):
    rng = random.Random(int(os.environ.get("LOUPE_TEST_SEED", "13")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOUPE_BRIDGE_SAMPLE": str(SAMPLE)}
    db = library / ".loupe" / "catalog.db"
    base = ["--batch-size", "4", "--workers", "1"]
    first = ["models", "switch", "loupe-tiny", "--weights", str(perturbed), *base]
    committed = 0
    for attempt, (where, args) in enumerate([("commit", first), ("embed", ["models", "fill", *base])]):
        k = rng.randint(1, 4)                 # batches of 4 committed before the kill (+1 in flight)
        marker = tmp_path / f"paused-{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _PAUSING, str(marker), where, str(k), *args],
                                cwd=library, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        batches = k if where == "commit" else k - 1     # the batch in the model call is lost
        assert _vector_count(db, 2) == committed + 4 * batches, (where, k)   # every commit kept
        committed += 4 * batches
    resumed = subprocess.run([sys.executable, "-m", "loupe.cli", "models", "fill", "--json", *base],
                             cwd=library, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["switched"] and report["todo"] == N - committed          # nothing embedded twice
    assert report["embedded"] == N - committed
    lib = Library.open(library / ".loupe", device="cpu")
    assert lib.catalog.active_space() == 2 and _vector_count(db, 2) == N     # nothing lost
    rows = lib.catalog.db.execute("SELECT path FROM images WHERE status = 'ok' ORDER BY path").fetchall()
    paths = [library / r[0] for r in rows]
    ids = [lib.resolve(r[0]) for r in rows]
    np.testing.assert_allclose(lib.vectors(ids), encode_files("loupe-tiny", perturbed, paths), atol=1e-5)
