"""Indexing on Ray (`loupe.ingest.ray_runner`) against the local executor, on real photos:
the same catalog and the same vectors; a worker killed mid-run; an interrupted run resumed.

One local Ray instance (2 CPUs) serves the whole module. On the 2-core test machine most of the
time is Ray's own: starting the instance, then the first Ray Data run starts its helper actors and
worker processes (tens of seconds under load). The default run keeps one Ray run; the worker
kill (an actor restart: one more process start), the interrupted run and the moves are
`-m slow`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli

pytest.importorskip("ray")
import ray  # noqa: E402

from loupe import IndexOptions, Library  # noqa: E402
from loupe.core.errors import LibraryError  # noqa: E402
from loupe.ingest.ray_runner import connect  # noqa: E402

COLUMNS = "path, sha256, size, mtime, width, height, format, taken_at, camera, status, error"


def kill_on_second_batch(order: Path):
    """A Ray worker setup hook (it runs in every worker process of the test's Ray instance;
    defined in a function so that Ray ships it by value): the embedding actor that finds the
    `order` file takes it and SIGKILLs its own process while its second batch is in flight,
    after the first came back. The restarted actor finds no order and carries on."""

    def hook() -> None:
        import signal

        from loupe.ingest import ray_runner

        real = ray_runner._Embedder.__call__
        calls = []

        def call(self, batch):
            calls.append(1)
            if len(calls) == 2:
                try:
                    os.rename(order, f"{order}.taken")      # one process wins the order
                except OSError:
                    return real(self, batch)
                with open(f"{order}.taken", "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, batch)

        ray_runner._Embedder.__call__ = call

    return hook


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    order = tmp_path_factory.mktemp("faults") / "kill"
    connect(None, num_cpus=2, object_store_memory=256 * 1024**2,
            runtime_env={"worker_process_setup_hook": kill_on_second_batch(order)})
    yield order
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data) -> Path:
    """A dozen real photos: 8 Strecha scenes (3072x2048 JPEG) and 4 Sacre Coeur."""
    src = sorted((shared_data / "strecha" / "scenes").glob("*/*.jpg"))[::11][:8]
    src += sorted((shared_data / "sacre_coeur").rglob("*.jpg"))[:4]
    assert len(src) == 12
    folder = tmp_path_factory.mktemp("photos")
    for p in src:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder


@pytest.fixture(scope="module")
def local(photos, tmp_path_factory):
    """The reference: the same photos indexed by the local executor."""
    lib = Library.open(tmp_path_factory.mktemp("ref") / "lib", root=photos, model=TINY,
                       device="cpu")
    report = lib.index(IndexOptions(batch_size=4))
    assert report.added == 12
    return lib


def copy_of(photos: Path, dest: Path) -> Path:
    shutil.copytree(photos, dest)
    return dest


def ray_index(lib: Library, options: IndexOptions, progress=None, **ray_options):
    """`Library.index` on Ray: the module's instance is the process's, so it is the one used."""
    return lib.index(options, progress=progress, runner="ray", ray_options=ray_options)


def rows(lib: Library) -> dict[str, tuple]:
    return {r[0]: tuple(r) for r in lib.catalog.db.execute(f"SELECT {COLUMNS} FROM images")}


def assert_same_as_local(lib: Library, local: Library) -> None:
    assert rows(lib) == rows(local)
    ids, vectors = lib.all_vectors()
    assert len(ids) == 12
    for path in rows(local):
        mine = lib.vectors([lib.id_of_path(path)])[0]
        theirs = local.vectors([local.id_of_path(path)])[0]
        np.testing.assert_allclose(mine, theirs, atol=1e-6, rtol=0)


def test_ray_gives_the_local_catalog_and_vectors(ray_instance, photos, local, tmp_path):
    """`loupe index --ray --json`, then `Library.index(runner="ray")`: the catalog and the
    vectors are the local executor's, the report says what ran where."""
    root = copy_of(photos, tmp_path / "photos")
    res = cli("index", str(root), "--model", TINY, "--device", "cpu", "--batch-size", "4",
              "--ray", "--ray-actors", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["added"], out["embedded"], out["errors"], out["model_loaded"]) == (12, 12, 0, True)
    assert sum(out["ray"]["embedded_by"].values()) == 12
    assert out["ray"]["resources"]["CPU"] == 2          # the module's local instance
    lib = Library.open(root / ".loupe", device="cpu")
    assert lib.catalog.get_meta("last_index")["executor"] == "ray"
    assert_same_as_local(lib, local)
    hit = lib.search(image=root / sorted(rows(local))[3], k=1)[0]
    assert hit.path.name == sorted(rows(local))[3]

    # Nothing changed: nothing is read, no model is loaded, Ray is not asked.
    seen = []
    again = ray_index(lib, IndexOptions(batch_size=4), progress=lambda d, t: seen.append((d, t)))
    assert (again.embedded, again.unchanged, again.model_loaded) == (0, 12, False)
    assert seen == [(0, 0)]


def test_bad_ray_options_are_refused_before_anything_changes(photos, tmp_path, monkeypatch):
    """No Ray needed: every check runs before the plan, the model or Ray."""
    root = copy_of(photos, tmp_path / "photos")
    for args, says in ((["--ray-actors", "0"], "--ray-actors"),
                       (["--ray-actors", "3-1"], "MIN <= MAX"),
                       (["--ray-actors", "many"], "give N or MIN-MAX"),
                       (["--ray-gpus", "-1"], "--ray-gpus")):
        res = cli("index", str(root), "--model", TINY, "--ray", *args)
        assert res.exit_code == 2 and says in res.output, res.output
    assert not (root / ".loupe").exists()

    lib = Library.open(tmp_path / "lib", root=root, model=TINY, device="cpu")
    for kwargs, says in (({"runner": "spark"}, "unknown runner 'spark'"),
                         ({"ray_address": "auto"}, "need runner='ray'"),
                         ({"runner": "ray", "ray_options": {"gpus": 1}}, "unknown Ray option(s) gpus"),
                         ({"runner": "ray", "ray_options": {"actors": (2, 1)}}, "(min, max)"),
                         ({"runner": "ray", "ray_address": " "}, "address is empty")):
        with pytest.raises(LibraryError, match=re.escape(says)):
            lib.index(IndexOptions(), **kwargs)
    assert lib.counts()["files"] == 0 and lib.catalog.active_space() is None   # no model either

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ray") else real(name, *a))
    res = cli("index", str(root), "--model", TINY, "--ray")
    assert res.exit_code == 2 and "loupe-search[scale]" in res.stderr, res.output
    assert not (root / ".loupe").exists()


@pytest.mark.slow
def test_moves_and_copies_are_matched_by_content_on_ray(ray_instance, photos, local, tmp_path):
    """Read and hashed on Ray, never embedded: the report and the catalog say what the local
    executor says."""
    root = copy_of(photos, tmp_path / "photos")
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    seen = []
    first = ray_index(lib, IndexOptions(batch_size=4), progress=lambda d, t: seen.append((d, t)))
    assert first.added == 12 and seen[0] == (0, 12) and seen[-1] == (12, 12)
    names = sorted(rows(local))
    (root / names[0]).rename(root / "moved.jpg")
    shutil.copy(root / names[1], root / "copy.jpg")
    moved = ray_index(lib, IndexOptions(batch_size=4))
    assert (moved.moved, moved.copies, moved.removed, moved.embedded) == (1, 1, 0, 0)   # as locally
    assert lib.searchable() == 13
    assert rows(lib)["moved.jpg"][1:] == rows(local)[names[0]][1:]


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(ray_instance, photos, local, tmp_path):
    order = ray_instance
    order.write_text("kill\n")
    root = copy_of(photos, tmp_path / "photos")
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    report = ray_index(lib, IndexOptions(batch_size=2))
    taken = Path(f"{order}.taken")
    assert not order.exists() and taken.exists(), "no embedding worker was killed"
    killed = int(taken.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)                     # the worker process is gone
    workers = report.ray["embedded_by"]
    pids = {int(w.rsplit(":", 1)[1]) for w in workers}
    assert killed in pids and len(pids) >= 2   # its first batch came back; a new one did the rest
    assert report.embedded == sum(workers.values()) == 12    # every photo embedded once
    assert (report.added, report.errors) == (12, 0)
    assert_same_as_local(lib, local)


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(ray_instance, photos, local, tmp_path):
    root = copy_of(photos, tmp_path / "photos")
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")

    def stop(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ray_index(lib, IndexOptions(batch_size=3), progress=stop)
    committed = lib.counts()["indexed"]
    assert 3 <= committed < 12
    rest = ray_index(lib, IndexOptions(batch_size=3))
    assert rest.embedded == rest.added == 12 - committed
    assert rest.unchanged == committed
    assert_same_as_local(lib, local)
