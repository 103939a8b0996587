"""`loupe serve` under load: text, image and more-like-this queries from concurrent clients
against a 100k-image library, once idle and once while a background re-index runs.

The library holds real photos (indexed the ordinary way; the image queries upload them)
plus N synthetic entries: random unit vectors added through `Library.add_embedded`, each with an
empty placeholder file so that a re-index scans them as unchanged, as it would a real
100k folder. During the second phase a driver keeps the indexer busy: it swaps a batch of
new photo crops into the folder and re-indexes, round after round, through the API.

The server runs as `loupe serve` in its own process; clients are asyncio + httpx here.

    python benchmarks/serve.py                                  # 8 clients, 10 s per phase
    python benchmarks/serve.py --clients 8 --duration 30
    python benchmarks/serve.py --arch loupe-tiny --vectors 20000 --duration 5   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from loupe.core.config import DEFAULT_MODEL
from loupe.library import Library

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
TEXTS = ["a church on a hill", "a fountain in a square", "a castle wall", "stone steps",
         "a red bicycle", "people on a staircase", "a blue sky over a city", "a door with arches",
         "trees in front of a building", "a statue at night"]
MIX = (("text", 0.5), ("image", 0.3), ("like", 0.2))


def photo_sources() -> list[Path]:
    photos = sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))
    photos += sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {DATA}: this benchmark needs ../shared/data")
    return photos


def build_library(root: Path, model: str, n_vectors: int, n_real: int) -> tuple[Library, list[Path]]:
    """Real photos indexed for real, then `n_vectors` synthetic rows in one transaction."""
    photos = photo_sources()[:n_real]
    real = _mkdir(root / "real")
    for p in photos:
        shutil.copy(p, real / p.name)
    lib = Library.open(root / ".loupe", model=model, device="cpu")
    lib.index()
    dim = lib.encoder.dim
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_vectors, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def rows():
        for i in range(n_vectors):
            rel = f"synthetic/{i // 1000:03d}/{i:06d}.jpg"
            path = root / rel
            if i % 1000 == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            st = path.stat()
            yield (rel, f"{i:064x}", vectors[i], {"width": 640, "height": 480, "format": "JPEG",
                                                  "size": st.st_size, "mtime": st.st_mtime})

    lib.add_embedded(rows())
    lib.save_vectors()  # as `loupe index` leaves a library: the server memory-maps them at start
    return lib, [root / "real" / p.name for p in photos]


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def make_crops(dest: Path, rounds: int, per_round: int, seed: int = 0) -> list[Path]:
    """`rounds` folders of new content (random crops of the photos) for the re-index phase."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in photo_sources()[:30]]
    folders = []
    for r in range(rounds):
        folder = _mkdir(dest / f"round{r:02d}")
        for j in range(per_round):
            im = rng.choice(sources)
            w, h = im.size
            cw, ch = rng.randint(w // 4, w // 2), rng.randint(h // 4, h // 2)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im.crop((x, y, x + cw, y + ch)).save(folder / f"crop{j:03d}.jpg", quality=90)
        folders.append(folder)
    return folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(library: Path, port: int, token: str, log: Path, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "loupe.cli", "serve", str(library), "--port", str(port),
           "--token", token, "--device", "cpu"] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); log:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 300 s")


# --- load ---------------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random,
                      images: list[bytes], like_ids: list[int]) -> httpx.Response:
    if kind == "text":
        return await client.get("/api/search", params={"q": rng.choice(TEXTS), "k": 30})
    if kind == "image":
        return await client.post("/api/search/image", params={"k": 30},
                                 files={"image": ("q.jpg", rng.choice(images), "image/jpeg")})
    return await client.get("/api/search", params={"like": rng.choice(like_ids), "k": 30})


async def load(base: str, clients: int, duration: float, images: list[bytes], like_ids: list[int],
               seed: int) -> dict[str, Any]:
    kinds, weights = zip(*MIX, strict=True)
    samples: list[tuple[str, float, bool]] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + duration

        async def worker(w: int) -> None:
            rng = random.Random(seed * 1000 + w)
            while time.perf_counter() < deadline:
                kind = rng.choices(kinds, weights)[0]
                t0 = time.perf_counter()
                try:
                    r = await one_request(client, kind, rng, images, like_ids)
                    ok = r.status_code == 200 and len(r.json()["results"]) == 30
                    if not ok:
                        errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    ok = False
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                samples.append((kind, time.perf_counter() - t0, ok))

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    return summarise(samples, errors, elapsed)


def summarise(samples: list[tuple[str, float, bool]], errors: list[str], elapsed: float) -> dict[str, Any]:
    def stats(lat: list[float]) -> dict[str, Any]:
        if not lat:
            return {"requests": 0}
        ms = np.asarray(lat) * 1000
        return {"requests": len(lat), "rps": round(len(lat) / elapsed, 2),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p90_ms": round(float(np.percentile(ms, 90)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "max_ms": round(float(ms.max()), 1)}

    out = stats([s[1] for s in samples])
    out["errors"] = len(errors)
    out["error_examples"] = errors[:5]
    out["seconds"] = round(elapsed, 2)
    out["by_kind"] = {k: stats([s[1] for s in samples if s[0] == k]) for k, _ in MIX}
    return out


class Reindexer(threading.Thread):
    """Keeps the server's indexer busy: each round swaps in a folder of new crops (and
    takes out the previous one), starts a re-index through the API and waits for it."""

    def __init__(self, base: str, token: str, root: Path, folders: list[Path]):
        super().__init__(daemon=True)
        self.base, self.token, self.root, self.folders = base, token, root, folders
        self.stop = threading.Event()
        self.rounds: list[dict[str, Any]] = []
        self.busy_seconds = 0.0

    def run(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        current: Path | None = None
        with httpx.Client(base_url=self.base, timeout=60) as client:
            r = 0
            while not self.stop.is_set():
                folder = self.folders[r % len(self.folders)]
                target = self.root / "incoming" / folder.name
                if current is not None:
                    shutil.move(current, self.folders[(r - 1) % len(self.folders)])
                shutil.move(folder, target)
                current = target
                t0 = time.perf_counter()
                resp = client.post("/api/index", headers=auth)
                if resp.status_code != 202:
                    raise RuntimeError(f"could not start a re-index: {resp.status_code} {resp.text}")
                while True:
                    s = client.get("/api/index").json()
                    if not s["running"]:
                        break
                    time.sleep(0.1)
                took = time.perf_counter() - t0
                self.busy_seconds += took
                report = s.get("report") or {}
                self.rounds.append({"state": s["state"], "seconds": round(took, 2),
                                    "added": report.get("added"), "removed": report.get("removed"),
                                    "embedded": report.get("embedded")})
                r += 1


def table(results: dict[str, Any]) -> str:
    head = f"{'phase':<10}{'kind':<7}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    lines = [head, "-" * len(head)]
    for phase in ("idle", "reindex"):
        res = results["phases"][phase]
        rows = [("all", res)] + list(res["by_kind"].items())
        for kind, s in rows:
            if not s.get("requests"):
                continue
            err = str(res["errors"]) if kind == "all" else ""
            lines.append(f"{phase:<10}{kind:<7}{s['requests']:>9}{s['rps']:>8.1f}{s['p50_ms']:>9.1f}"
                         f"{s['p90_ms']:>9.1f}{s['p99_ms']:>9.1f}{s['max_ms']:>9.1f}{err:>8}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=DEFAULT_MODEL.split(":")[0],
                    help="open_clip architecture, random weights (default: the default model's)")
    ap.add_argument("--vectors", type=int, default=100_000, help="synthetic stored vectors")
    ap.add_argument("--real", type=int, default=20, help="real photos indexed (image queries use them)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--round-images", type=int, default=64, help="new images per re-index round")
    ap.add_argument("--threads", type=int, default=None,
                    help="server's torch threads (`loupe serve --threads`); default: serve's default")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    args = ap.parse_args()

    model = f"{args.arch}:random"
    token = secrets.token_urlsafe(16)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="loupe-serve-bench-") as tmp:
        root = Path(tmp) / "photos"
        t0 = time.perf_counter()
        lib, photos = build_library(root, model, args.vectors, args.real)
        searchable = len(lib.refresh())
        like_ids = [int(i) for i in np.random.default_rng(1).choice(lib.all_vectors()[0], 500)]
        lib.close()
        folders = make_crops(Path(tmp) / "crops", rounds=6, per_round=args.round_images)
        _mkdir(root / "incoming")
        build_s = time.perf_counter() - t0
        print(f"library: {searchable} searchable vectors ({model}), built in {build_s:.1f}s", flush=True)
        # Image queries upload the photos as a phone would send them: re-encoded at 1024 px.
        images = []
        for p in photos:
            im = Image.open(p).convert("RGB")
            im.thumbnail((1024, 1024))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
            images.append(buf.getvalue())

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(root / ".loupe", port, token, Path(tmp) / "server.log", args.threads)
        try:
            asyncio.run(load(base, 2, 2.0, images, like_ids, seed=0))  # warm-up
            print(f"idle phase: {args.clients} clients, {args.duration:.0f}s", flush=True)
            idle = asyncio.run(load(base, args.clients, args.duration, images, like_ids, seed=1))
            driver = Reindexer(base, token, root, folders)
            driver.start()
            time.sleep(0.5)  # let the first round get past its scan
            print(f"re-index phase: {args.clients} clients, {args.duration:.0f}s", flush=True)
            busy = asyncio.run(load(base, args.clients, args.duration, images, like_ids, seed=2))
            driver.stop.set()
            driver.join(timeout=600)
            busy["reindex_rounds"] = driver.rounds
            busy["reindex_images_embedded"] = sum(r["embedded"] or 0 for r in driver.rounds)
            busy["reindex_busy_seconds"] = round(driver.busy_seconds, 1)
            final = httpx.get(f"{base}/api/health").json()
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    results = {
        "model": model, "searchable_vectors": searchable, "clients": args.clients,
        "duration_s": args.duration, "mix": dict(MIX), "k": 30, "real_photos": len(photos),
        "round_images": args.round_images, "build_seconds": round(build_s, 1),
        "server_threads": args.threads,
        "searchable_at_end": final["searchable"],
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                    # other work on the machine shares its cores: read the numbers with this
                    "load_average_1min_start": load_start, "load_average_1min_end": os.getloadavg()[0]},
        "phases": {"idle": idle, "reindex": busy},
    }
    print(table(results))
    print(f"machine: {os.cpu_count()} cpus, 1-min load average {load_start:.1f} at start, "
          f"{results['machine']['load_average_1min_end']:.1f} at end")
    rounds = busy["reindex_rounds"]
    print(f"re-index rounds during the load: {len(rounds)} "
          f"({busy['reindex_images_embedded']} images embedded; states: "
          f"{', '.join(r['state'] for r in rounds)})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = previous.get("runs", {}) if isinstance(previous, dict) else {}
    runs[model] = results
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"written to {args.out}")
    errors = idle["errors"] + busy["errors"]
    if errors:
        raise SystemExit(f"{errors} failed requests (see error_examples in {args.out})")


if __name__ == "__main__":
    main()
