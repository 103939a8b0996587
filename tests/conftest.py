"""Shared fixtures: a tiny random-weight model, generated images, and the real photos."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = "loupe-tiny:random"


def pytest_configure(config: pytest.Config) -> None:
    """Models exported during the run go to a fresh folder, never the user's cache; the suite
    runs models on torch (exporting each test's model would cost ~30 s a test) except where
    a test clears LOUPE_BACKEND to test the exported path; searches from the faces run
    without the answer stages unless a test turns them on. Subprocesses inherit all three."""
    import tempfile

    os.environ["LOUPE_MODEL_CACHE"] = tempfile.mkdtemp(prefix="loupe-test-models-")
    os.environ.setdefault("LOUPE_BACKEND", "torch")
    # The answer stages the CLI and the page add by default (cut-off, collapse) are calibrated
    # for real models: the random-weight tiny model puts every pair of images at cosine ~0.99,
    # so collapse would fold any library into one group. The suite searches without them;
    # the tests of the answers (tests/test_answers_faces.py) turn them on.
    os.environ.setdefault("LOUPE_ANSWERS", "none")


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    shutil.rmtree(os.environ.get("LOUPE_MODEL_CACHE", ""), ignore_errors=True)


def make_image(path: Path, seed: int, size: tuple[int, int] = (96, 80), fmt: str | None = None,
               exif: Image.Exif | None = None) -> Path:
    """A distinct picture per seed: a coarse grid of random colours, scaled up."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(cells).resize(size, Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"exif": exif} if exif is not None else {}
    im.save(path, format=fmt, **kwargs)
    return path


def make_folder(root: Path, n: int, start: int = 0, sub: str = "") -> list[Path]:
    return [make_image(root / sub / f"img{start + i:04d}.png", seed=start + i) for i in range(n)]


@pytest.fixture
def tiny() -> str:
    return TINY


@pytest.fixture(scope="session")
def awkward_dir() -> Path:
    """The awkward-files set: the full one from ../shared/data when present, else the copy."""
    full = SHARED_DATA / "imagededup_testdata"
    return full if full.is_dir() else TEST_DATA / "awkward"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: this test needs the project's shared photos")
    return SHARED_DATA


def cli(*args: str, cwd: Path | None = None):
    """Run `loupe ...` in this process (fast: torch is imported once). Returns the
    click Result: exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from loupe.cli import app

    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120):
    """Run `loupe ...` in a subprocess, as a user would (slow: a fresh torch import)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "loupe.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve an app on a free localhost port in a thread (for the browser tests); yields the
    base URL and stops the server on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def make_read_only(tmp_path: Path, library: Path) -> list[tuple[str, int]]:
    """Make a library readable by everyone and writable by no one (the folders above it
    searchable); returns its files' names and mtimes, to check later that nothing changed."""
    for p in [tmp_path, *tmp_path.parents]:
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o055)
    for p in library.rglob("*"):
        p.chmod(0o444 if p.is_file() else 0o555)
    library.chmod(0o555)
    return files_state(library)


def files_state(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python `code` as user nobody (needs root and setpriv), importing this checkout."""
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def kill_9_when_ready(code: str, *args: str) -> None:
    """Run Python `code` (importing this checkout) until it prints "ready", then SIGKILL it:
    a crash at the moment the code chose."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
