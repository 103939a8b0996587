"""Faults, measured: kill -9 and Ctrl-C at random moments of a real `loupe index`, a hostile
corpus, and the server answering searches while another process re-indexes its folder.

1. Signals. A real `python -m loupe.cli index FOLDER --model loupe-tiny:random --device cpu
   --batch-size 8` over downscaled copies of the shared photos is sent SIGKILL (or SIGINT)
   at a random, seeded moment (a delay after start, or a delay after a random commit: the
   catalog's generation is polled, so that the load of the machine does not decide where
   the signals land); the same command is then run again (the resume). Checked
   each time: PRAGMA integrity_check (on a copy of the catalog as the kill left it, and after
   the resume), rows with status ok == distinct rows with a vector in the active space, every
   file exactly once, the resume's embedded + unchanged == every file, unchanged >= rows
   committed at the kill, embedded == exactly the contents that had no vector at the kill,
   vectors byte-identical to an uninterrupted run, and the saved search index holding every
   row. SIGINT also: exit code 130, the "interrupted" line, no traceback (when it came while
   the command ran; Ctrl-C during the interpreter's start-up or exit is reported apart).
   Trials go on until the wanted number of signals landed in a running process. Incremental
   trials kill a run that moves, deletes, adds and rewrites files in an indexed folder.
2. Hostile corpus: truncated and bit-flipped files of every format, decompression bombs, thin
   images, odd names, empty files, links, a FIFO, a directory named like an image. Indexed
   with the CLI (--json): exit code 0, every file indexed or recorded with a reason, peak RSS.
3. `loupe serve` on 127.0.0.1 under a bounded client load (threads x seconds) of text and
   more-like-this searches while a separate `loupe index` process adds, moves and deletes
   files in the same folder: responses counted by status; the target is no 5xx and no
   connection error.

    python benchmarks/faults.py                    # 50 kill -9 trials, 20 SIGINT, ...
    python benchmarks/faults.py --trials 100
    python benchmarks/faults.py --quick            # a smoke run of every part (a few minutes)

Writes benchmarks/results/faults.json (with --quick: a file in the temp folder, unless --out).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.models.device import cpu_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
MODEL = "loupe-tiny:random"
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # raw control characters (not \t, \n)


# --- helpers -------------------------------------------------------------------------------------
def cli(*args: str) -> list[str]:
    return [PY, "-m", "loupe.cli", *args]


def index_cmd(folder: Path, *extra: str) -> list[str]:
    return cli("index", str(folder), "--model", MODEL, "--device", "cpu", "--batch-size", "8",
               *extra)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def source_photos() -> list[Path]:
    photos = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))
    photos += sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))
    photos += sorted((DATA / "sacre_coeur" / "mapping_rot").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {DATA}: this benchmark needs ../shared/data")
    return photos


def load_small(p: Path, side: int) -> Image.Image:
    im = Image.open(p)
    im.draft("RGB", (side, side))
    im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def write_photos(dest: Path, images: list[tuple[str, Image.Image]]) -> dict[str, str]:
    """Save (relative path, image) as JPEG; returns {relative path: sha256}, distinct contents."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for rel, im in images:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            continue
        seen.add(sha)
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = sha
    return out


def photo_set(n: int, side: int = 384) -> list[tuple[str, Image.Image]]:
    """`n` real photos, downscaled; beyond the sources, seeded crops and mirrors of them."""
    src = source_photos()
    base = [(p, load_small(p, side)) for p in src]
    out = [(f"{p.parent.name}/{p.stem}.jpg", im) for p, im in base]
    rng = random.Random(7)
    k = 0
    while len(out) < n:
        p, im = base[k % len(base)]
        w, h = im.size
        cw, ch = rng.randint(w // 2, w - 8), rng.randint(h // 2, h - 8)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        v = im.crop((x, y, x + cw, y + ch))
        if k % 2:
            v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append((f"variants/{p.parent.name}-{p.stem}-v{k:04d}.jpg", v))
        k += 1
    return out[:n]


def copy_photos(src: Path, rels: list[str], dest: Path) -> dict[str, str]:
    """Copy files byte for byte (the reference run knows their contents)."""
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    return folder_files(dest)


def folder_files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of the .jpg files under root (outside .loupe)."""
    out = {}
    for p in root.rglob("*.jpg"):
        rel = p.relative_to(root).as_posix()
        if not rel.startswith(".loupe/"):
            out[rel] = sha256_file(p)
    return out


def inspect_catalog(db_path: Path, as_left: bool = False) -> dict[str, Any]:
    """What a catalog holds. `as_left`: inspect a copy of the database and its WAL (the
    state a kill left, before any process opens it)."""
    info: dict[str, Any] = {"exists": db_path.exists(), "integrity": "ok", "ok": 0,
                            "ok_with_vector": 0, "rows": [], "vectors": {}, "space": None,
                            "generation": None}
    if not info["exists"]:
        return info
    tmp = None
    path = db_path
    if as_left:
        tmp = Path(tempfile.mkdtemp(prefix="faults-copy-"))
        for suffix in ("", "-wal"):
            src = Path(str(db_path) + suffix)
            if src.exists():
                shutil.copyfile(src, tmp / ("catalog.db" + suffix))
        path = tmp / "catalog.db"
    try:
        con = sqlite3.connect(path, timeout=30)
        try:
            info["integrity"] = "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"images", "vectors", "meta"} <= tables:
                info["schema"] = "incomplete"
                return info
            row = con.execute("SELECT value FROM meta WHERE key = 'active_space'").fetchone()
            space = int(json.loads(row[0])) if row else -1
            info["space"] = space
            row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            info["generation"] = int(json.loads(row[0])) if row else 0
            cols = {r[1] for r in con.execute("PRAGMA table_info(images)")}
            raw = "path_bytes" if "path_bytes" in cols else "NULL"
            info["rows"] = [
                (os.fsdecode(r[1]) if r[1] is not None else r[0], r[2], r[3], r[4])
                for r in con.execute(f"SELECT path, {raw}, status, error, sha256 FROM images")
            ]
            info["ok"] = sum(r[1] == "ok" for r in info["rows"])
            info["ok_with_vector"] = con.execute(
                "SELECT COUNT(DISTINCT i.id) FROM images i JOIN vectors v "
                "ON v.sha256 = i.sha256 AND v.space = ? WHERE i.status = 'ok'", (space,)
            ).fetchone()[0]
            info["vectors"] = dict(con.execute(
                "SELECT sha256, vector FROM vectors WHERE space = ?", (space,)))
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        info["integrity"] = f"cannot open: {exc}"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def saved_index_count(lib_path: Path) -> int:
    """How many rows the library's saved search index holds (opened as a searcher would)."""
    from loupe.library import Library

    lib = Library.open(lib_path, device="cpu", create=False)
    try:
        return len(lib.all_vectors()[0])
    finally:
        lib.close()


def tally(trials: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in trials:
        for name, ok in t["checks"].items():
            if ok is None:
                continue
            row = out.setdefault(name, {"pass": 0, "fail": 0})
            row["pass" if ok else "fail"] += 1
    return out


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    print("  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)))


# --- 1. signals ----------------------------------------------------------------------------------
def generation(db: Path) -> int:
    """The catalog's generation (bumped by every commit that changes what is searchable)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=0.2)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            return int(json.loads(row[0])) if row else 0
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def timed_full_run(folder: Path, watch: bool = False) -> dict[str, Any]:
    """An uninterrupted run: its wall time, when its catalog file appeared, how many commits
    it made (generations), and (`watch`) when the first one came."""
    db = folder / ".loupe" / "catalog.db"
    base_gen = generation(db)
    t0 = time.monotonic()
    proc = subprocess.Popen(index_cmd(folder, "--json"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = first = last = None
    gen = base_gen
    while proc.poll() is None:
        if seen is None and db.exists():
            seen = time.monotonic() - t0
        if watch and seen is not None:
            g = generation(db)
            if g > gen:
                last = time.monotonic() - t0
                first = last if first is None else first
                gen = g
        time.sleep(0.01 if watch else 0.005)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"calibration run failed: {err.decode()[-2000:]}")
    wall = time.monotonic() - t0
    return {"wall_s": round(wall, 3), "catalog_at_s": round(seen if seen is not None else 0.0, 3),
            "first_commit_at_s": round(first if first is not None else wall, 3),
            "last_commit_at_s": round(last if last is not None else wall, 3),
            "commits": generation(db) - base_gen, "report": json.loads(out)}


def signal_trial(folder: Path, sig: int, moment: tuple[int, float], files: dict[str, str],
                 ref: dict[str, bytes], logs: Path, base_generation: int | None = None
                 ) -> dict[str, Any]:
    """Start `loupe index`, send `sig` at `moment`, resume, check. `moment` = (c, s): `s`
    seconds after start when c == 0, else `s` seconds after the run's c-th commit (the
    catalog is polled between, and left alone once the signal is due). `base_generation`:
    the generation of the library the run starts from (None: no library yet)."""
    lib_path = folder / ".loupe"
    db = lib_path / "catalog.db"
    existed = db.exists()
    err_path = logs / "stderr.txt"
    after_commits, delay = moment
    with err_path.open("wb") as err_file:
        t0 = time.monotonic()
        proc = subprocess.Popen(index_cmd(folder), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=err_file)
        if after_commits:
            target = (base_generation or 0) + after_commits
            while proc.poll() is None and generation(db) < target:
                time.sleep(0.01)
        t1 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t1 < delay:
            time.sleep(0.002)
        at_s = time.monotonic() - t0
        catalog_at_signal = db.exists()
        # The summary already printed (stderr is unbuffered): the command had returned.
        summary_printed = "library: " in err_path.read_text(errors="replace")
        landed = proc.poll() is None
        if landed:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    stderr = err_path.read_text(errors="replace")
    at = inspect_catalog(db, as_left=True)
    resume = subprocess.run(index_cmd(folder, "--json"), env=ENV, capture_output=True,
                            timeout=1800)
    after = inspect_catalog(db)
    try:
        report = json.loads(resume.stdout) if resume.returncode == 0 else {}
    except ValueError:
        report = {}
    n = len(files)
    contents = set(files.values())
    committed = at["ok"]
    if not landed:
        phase = "finished before the signal"
    elif summary_printed:
        phase = "after the command finished (exit)"
    elif not catalog_at_signal and not existed:
        phase = "start-up (no catalog yet)"
    elif existed:
        phase = ("before the first commit" if at["generation"] == base_generation
                 else "after one commit or more")
    elif committed == 0:
        phase = "before the first commit"
    elif committed < n:
        phase = "mid-run"
    else:
        phase = "after the last commit"
    paths = collections.Counter(r[0] for r in after["rows"])
    checks: dict[str, bool | None] = {
        "integrity_check ok (as the signal left it)": at["integrity"] == "ok",
        "ok rows == rows with a vector (as left)": at["ok"] == at["ok_with_vector"],
        "resume exit code 0": resume.returncode == 0,
        "integrity_check ok (after resume)": after["integrity"] == "ok",
        "ok rows == rows with a vector (after resume)": after["ok"] == after["ok_with_vector"],
        "every file exactly once, status ok": (
            set(paths) == set(files) and all(c == 1 for c in paths.values())
            and all(r[1] == "ok" for r in after["rows"])),
        "resume embedded == contents without a vector at the signal": (
            report.get("embedded") == len(contents - set(at["vectors"]))),
        "vectors identical to an uninterrupted run": (
            set(after["vectors"]) == contents
            and all(after["vectors"][s] == ref.get(s) for s in contents)),
    }
    if not existed:   # from an empty library: the brief's accounting
        checks["resume embedded + unchanged == files"] = (
            report.get("embedded", -1) + report.get("unchanged", -1) == n)
        checks["resume unchanged >= ok rows committed at the signal"] = (
            report.get("unchanged", -1) >= committed)
    try:
        checks["saved search index holds every ok row"] = saved_index_count(lib_path) == after["ok"]
    except Exception as exc:  # noqa: BLE001 - a failure to open is this check's failure
        checks["saved search index holds every ok row"] = False
        stderr += f"\n[bench] opening the library failed: {exc!r}"
    if sig == signal.SIGINT and landed:
        # The command was running: not the interpreter's start-up (imports) or its exit.
        handled = (catalog_at_signal or existed) and not summary_printed
        checks["SIGINT: exit code 130"] = rc == 130 if handled else None
        checks["SIGINT: 'interrupted' message"] = "interrupted" in stderr if handled else None
        checks["SIGINT: no traceback"] = "Traceback" not in stderr if handled else None
    elif sig == signal.SIGKILL and landed:
        checks["SIGKILL: exit code -9"] = rc == -signal.SIGKILL
    return {"signal": signal.Signals(sig).name, "after_commits": after_commits,
            "delay_s": round(delay, 3), "at_s": round(at_s, 3), "phase": phase,
            "rc": rc, "committed_at_signal": committed, "files": n,
            "resume": {k: report.get(k) for k in ("embedded", "unchanged", "added", "moved",
                                                  "updated", "removed", "copies", "errors")},
            "resume_rc": resume.returncode, "traceback": "Traceback" in stderr,
            "checks": checks,
            "stderr_tail": stderr[-600:] if not all(v in (None, True) for v in checks.values())
            or (sig == signal.SIGINT and rc != 130) else ""}


def run_signals(args: argparse.Namespace, work: Path, rng: random.Random) -> dict[str, Any]:
    photos = photo_set(args.photos_all)
    ref_dir = work / "reference"
    all_files = write_photos(ref_dir, photos)
    print(f"[signals] {len(all_files)} distinct photos prepared (max side 384 px)", flush=True)
    timed_full_run(ref_dir)  # the reference: every content's vector, from one uninterrupted run
    ref = inspect_catalog(ref_dir / ".loupe" / "catalog.db")["vectors"]
    rels = list(all_files)

    # a) from an empty library
    folder = work / "kill"
    files = copy_photos(ref_dir, rels[:args.photos], folder)
    calib = []
    for _ in range(3):
        calib.append(timed_full_run(folder, watch=True))
        shutil.rmtree(folder / ".loupe")
    wall = float(np.median([c["wall_s"] for c in calib]))
    cat_at = float(np.median([c["catalog_at_s"] for c in calib]))
    first = float(np.median([c["first_commit_at_s"] for c in calib]))
    commits = int(min(c["commits"] for c in calib))
    last = float(np.median([c["last_commit_at_s"] for c in calib]))
    batch_s = max(0.02, (last - first) / max(commits - 1, 1))
    print(f"[signals] uninterrupted run of {len(files)} photos: {wall:.1f} s (catalog appears at "
          f"{cat_at:.1f} s, {commits} commits from {first:.1f} to {last:.1f} s)", flush=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    def moment(lo: float, n_commits: int, per_batch: float, end: float) -> tuple[int, float]:
        """40%: a delay after start, uniform over the command; 60%: a random time (up to
        1.5 batches) after a random commit, wherever the machine's load puts it."""
        if rng.random() < 0.4:
            return 0, rng.uniform(lo, max(end, lo + 0.1))
        return rng.randint(1, n_commits), rng.uniform(0, 1.5 * per_batch)

    def show(label: str, t: dict[str, Any]) -> None:
        bad = [k for k, v in t["checks"].items() if v is False]
        when = (f"{t['delay_s']:4.2f} s after commit {t['after_commits']:2d}"
                if t["after_commits"] else f"{t['delay_s']:4.2f} s after start")
        print(f"[signals] {label} {t['signal']:7s} {when} (at {t['at_s']:5.2f} s; {t['phase']}, "
              f"{t['committed_at_signal']:3d} rows committed, rc {t['rc']}; resume embedded "
              f"{t['resume']['embedded']}): {'ok' if not bad else 'FAIL ' + ', '.join(bad)}",
              flush=True)

    def run_group(label: str, sig: int, want: int, draw: Any, prepare: Any,
                  base_gen: int | None = None) -> list[dict[str, Any]]:
        """Trials until `want` signals landed in a running process (at most 2 x want + 10
        tries). A run that ended before its moment is kept as a miss, and the end of the
        time window moves to where that run ended (the machine's load changes)."""
        out: list[dict[str, Any]] = []
        est = {"end": None}
        tries = 0
        while sum(t["phase"] != "finished before the signal" for t in out) < want \
                and tries < 2 * want + 10:
            tries += 1
            trial_files = prepare()
            t = signal_trial(trial_files[0], sig, draw(est["end"]), trial_files[1], ref, logs,
                             base_gen)
            t["trial"] = tries
            if t["phase"] == "finished before the signal":
                est["end"] = t["at_s"]
            out.append(t)
            show(f"{label} {tries:3d}", t)
        return out

    def fresh() -> tuple[Path, dict[str, str]]:
        shutil.rmtree(folder / ".loupe", ignore_errors=True)
        return folder, files

    trials = run_group("kill", signal.SIGKILL, args.trials,
                       lambda end: moment(0.8 * cat_at, commits, batch_s, end or wall), fresh)
    trials += run_group("int", signal.SIGINT, args.sigint_trials,
                        lambda end: moment(cat_at, commits, batch_s, end or wall), fresh)
    trials += run_group("int start-up", signal.SIGINT, args.startup_trials,
                        lambda end: (0, rng.uniform(0.1 * cat_at, 0.8 * cat_at)), fresh)

    # b) incremental: an indexed folder where files moved, left, arrived and changed
    inc_trials: list[dict[str, Any]] = []
    inc_timing: dict[str, Any] = {}
    if args.incremental_trials:
        base_n = int(len(rels) * 0.7)
        template = work / "inc-template"
        copy_photos(ref_dir, rels[:base_n], template)
        timed_full_run(template)
        base_gen = inspect_catalog(template / ".loupe" / "catalog.db")["generation"]
        reserve = rels[base_n:]
        inc = work / "inc"

        def prepare(seed: int) -> dict[str, str]:
            shutil.rmtree(inc, ignore_errors=True)
            shutil.copytree(template, inc, symlinks=True)   # copy2: mtimes kept
            r = random.Random(seed)
            present = sorted(folder_files(inc))
            r.shuffle(present)
            n_add = max(2, len(reserve) // 2)
            adds, rewrites = reserve[:n_add], reserve[n_add:n_add + 5]
            for rel in present[:15]:                                       # moved
                dst = inc / "moved" / rel.replace("/", "-")
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.rename(inc / rel, dst)
            for rel in present[15:25]:                                     # deleted
                (inc / rel).unlink()
            for rel in adds:                                               # new
                dst = inc / "new" / rel.replace("/", "-")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ref_dir / rel, dst)
            for old, new in zip(present[25:30], rewrites, strict=False):   # rewritten
                (inc / old).write_bytes((ref_dir / new).read_bytes())
            return folder_files(inc)

        prepare(0)
        t_inc = timed_full_run(inc, watch=True)
        inc_timing = {"wall_s": t_inc["wall_s"], "first_change_at_s": t_inc["first_commit_at_s"],
                      "commits": t_inc["commits"],
                      "report": {k: t_inc["report"][k] for k in
                                 ("added", "updated", "moved", "removed", "unchanged",
                                  "embedded")}}
        print(f"[signals] uninterrupted incremental run: {t_inc['wall_s']:.1f} s, "
              f"{inc_timing['report']}", flush=True)
        inc_commits = max(1, t_inc["commits"])
        inc_batch = max(0.02, (t_inc["last_commit_at_s"] - t_inc["first_commit_at_s"])
                        / max(inc_commits - 1, 1))
        seeds = iter(range(1000, 100_000))
        inc_trials = run_group(
            "incremental kill", signal.SIGKILL, args.incremental_trials,
            lambda end: moment(0.8 * cat_at, inc_commits, inc_batch, end or t_inc["wall_s"]),
            lambda: (inc, prepare(next(seeds))), base_gen)

    def group(ts: list[dict[str, Any]]) -> dict[str, Any]:
        landed = [t for t in ts if t["phase"] != "finished before the signal"]
        return {"trials": len(landed), "runs_that_ended_before_their_moment": len(ts) - len(landed),
                "phases": dict(collections.Counter(t["phase"] for t in landed)),
                "exit_codes": dict(collections.Counter(str(t["rc"]) for t in landed)),
                "checks": tally(landed),
                "checks_of_runs_that_ended_first": tally([t for t in ts if t not in landed])}

    kills = [t for t in trials if t["signal"] == "SIGKILL"]
    ints = [t for t in trials if t["signal"] == "SIGINT"]
    return {
        "photos": len(files), "max_side_px": 384,
        "uninterrupted_run": {"wall_s": wall, "catalog_appears_s": cat_at,
                              "first_commit_s": first, "last_commit_s": last,
                              "commits": commits, "runs": [
                                  {k: c[k] for k in ("wall_s", "catalog_at_s",
                                                     "first_commit_at_s", "last_commit_at_s",
                                                     "commits")}
                                  for c in calib]},
        "moments": (f"seeded ({args.seed}); 40%: uniform in [0.8 x {cat_at:.2f} (SIGINT: 1 x), "
                    f"{wall:.2f}] s after start; 60%: uniform in [0, {1.5 * batch_s:.2f}] s after "
                    f"commit c, c uniform in 1..{commits} (generation polled); "
                    f"{args.startup_trials} more SIGINT in [0.1, 0.8] x {cat_at:.2f} s "
                    "(interpreter start-up)"),
        "sigkill": group(kills),
        "sigint": group(ints),
        "sigint_outside_the_command": {
            ph: dict(collections.Counter(
                f"rc {t['rc']}" + (", traceback" if t["traceback"] else "")
                for t in ints if t["phase"] == ph))
            for ph in ("start-up (no catalog yet)", "after the command finished (exit)")},
        "incremental_sigkill": {**group(inc_trials), "uninterrupted": inc_timing},
        "trials": trials + [{**t, "incremental": True} for t in inc_trials],
    }


# --- 2. hostile corpus ---------------------------------------------------------------------------
def png_bytes(width: int, height: int, bit_depth: int = 1, color_type: int = 0,
              rows: bool = True, mark: int = 0) -> bytes:
    """A PNG declaring width x height, its IDAT streamed (all-zero rows but the first byte
    of the first row, `mark`): tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b""
    if rows:
        comp = zlib.compressobj(9)
        row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
        parts = [comp.compress(b"\x00" + bytes([mark]) + row[2:])]
        parts += [comp.compress(row) for _ in range(height - 1)]
        body = b"".join(parts) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) of a JPEG to declare another size."""
    buf = bytearray(data)
    i = 2
    while i < len(buf) - 9:
        if buf[i] == 0xFF and buf[i + 1] in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", buf, i + 5, height, width)
            return bytes(buf)
        if buf[i] == 0xFF and buf[i + 1] not in (0x00, 0xFF, 0xD8):
            i += 2 + struct.unpack(">H", buf[i + 2:i + 4])[0]
        else:
            i += 1
    raise ValueError("no SOF marker")


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def build_hostile(root: Path, outside: Path, photo: Path, rng: random.Random
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """The corpus: a manifest of entries {name (fs str), category, expect}; expect is 'file'
    (indexed or recorded), 'outside-link' (counted, not followed) or 'skipped' (not a regular
    image file: skipped by design). Also returns the formats that could not be written."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    manifest: list[dict[str, Any]] = []
    missing: list[str] = []

    def put(name: str, data: bytes, category: str, expect: str = "file") -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        manifest.append({"name": name, "category": category, "expect": expect})

    base = load_small(photo, 256)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    formats: dict[str, tuple[str, bytes]] = {
        "jpeg": ("jpg", encode(base, "JPEG", quality=90)),
        "jpeg-progressive": ("jpg", encode(base, "JPEG", quality=85, progressive=True)),
        "jpeg-cmyk": ("jpg", encode(base.convert("CMYK"), "JPEG")),
        "png": ("png", encode(base, "PNG")),
        "png-16bit": ("png", encode(base.convert("L").convert("I;16"), "PNG")),
        "png-palette-transparent": ("png", encode(base.convert("P"), "PNG", transparency=0)),
        "gif-animated": ("gif", encode(base.convert("P"), "GIF", save_all=True, append_images=[
            base.rotate(90).convert("P"), base.rotate(180).convert("P")], duration=100, loop=0)),
        "webp": ("webp", encode(base, "WEBP", quality=80)),
        "webp-lossless-alpha": ("webp", encode(rgba, "WEBP", lossless=True)),
        "tiff-lzw": ("tif", encode(base, "TIFF", compression="tiff_lzw")),
        "tiff-multipage": ("tiff", encode(base, "TIFF", save_all=True,
                                          append_images=[base.rotate(90)])),
        "bmp": ("bmp", encode(base, "BMP")),
        "ppm": ("ppm", encode(base, "PPM")),
        "pgm": ("pgm", encode(base.convert("L"), "PPM")),
    }
    for fmt, ext in (("HEIF", "heic"), ("AVIF", "avif")):
        try:
            formats[fmt.lower()] = (ext, encode(base, fmt, quality=70))
        except (KeyError, OSError, ValueError) as exc:
            missing.append(f"{fmt}: {exc}")
    for name, (ext, data) in formats.items():
        put(f"formats/{name}.{ext}", data, "valid file of each format")
        put(f"truncated/{name}-half.{ext}", data[:len(data) // 2], "truncated")
        put(f"truncated/{name}-64b.{ext}", data[:64], "truncated")
        put(f"truncated/{name}-16b.{ext}", data[:16], "truncated")
        put(f"truncated/{name}-tail-zeroed.{ext}",
            data[:len(data) // 2] + b"\0" * (len(data) - len(data) // 2), "truncated")
        for k in range(3):
            flipped = bytearray(data)
            lo = 0 if k == 0 else min(64, len(data) - 1)
            for _ in range(8 * (k + 1)):
                pos = rng.randrange(lo, len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            put(f"bitflip/{name}-{k}.{ext}", bytes(flipped), "bit-flipped")
    # content that does not match its ending, or is no image at all
    put("mismatch/png-named.jpg", formats["png"][1], "wrong ending or not an image")
    put("mismatch/jpeg-named.gif", formats["jpeg"][1], "wrong ending or not an image")
    put("mismatch/text.png", b"hello, I am not an image\n" * 20, "wrong ending or not an image")
    put("mismatch/page.webp", b"<html><body>no</body></html>", "wrong ending or not an image")
    put("mismatch/vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><rect width="10" height="10"/></svg>', "wrong ending or not an image")
    put("mismatch/random.jpg", rng.randbytes(5000), "wrong ending or not an image")
    put("mismatch/jpeg-header-only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "wrong ending or "
        "not an image")
    # decompression bombs: small files declaring many pixels
    put("bombs/png-12000x12000.png", png_bytes(12000, 12000), "decompression bomb")
    put("bombs/png-20000x20000.png", png_bytes(20000, 20000), "decompression bomb")
    put("bombs/png-65535x65535-header.png", png_bytes(65535, 65535, rows=False),
        "decompression bomb")
    put("bombs/png-rgba16-12000x12000-header.png",
        png_bytes(12000, 12000, bit_depth=16, color_type=6, rows=False), "decompression bomb")
    gif = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    struct.pack_into("<HH", gif, 6, 65535, 65535)             # the logical screen
    put("bombs/gif-65535x65535-screen.gif", bytes(gif), "decompression bomb")
    jpeg = formats["jpeg"][1]
    put("bombs/jpeg-declares-65500x65500.jpg", patch_jpeg_size(jpeg, 65500, 65500),
        "decompression bomb")
    put("bombs/jpeg-declares-12000x12000.jpg", patch_jpeg_size(jpeg, 12000, 12000),
        "decompression bomb")
    text_bomb = zlib.compress(b"\0" * (64 * 2**20), 9)
    png = formats["png"][1]
    ztxt = b"Comment\0\0" + text_bomb
    chunk = (struct.pack(">I", len(ztxt)) + b"zTXt" + ztxt
             + struct.pack(">I", zlib.crc32(b"zTXt" + ztxt) & 0xFFFFFFFF))
    put("bombs/png-ztxt-64mib.png", png[:33] + chunk + png[33:], "decompression bomb")
    # thin images
    put("thin/1x20000.png", encode(Image.new("RGB", (1, 20000), "blue"), "PNG"), "thin image")
    put("thin/20000x1.png", encode(Image.new("RGB", (20000, 1), "red"), "PNG"), "thin image")
    put("thin/1x1000000.png", encode(Image.new("L", (1, 1_000_000), 90), "PNG"), "thin image")
    put("thin/1x1.gif", encode(Image.new("P", (1, 1)), "GIF"), "thin image")
    put("thin/3x65000.jpg", encode(Image.new("RGB", (3, 65000), "green"), "JPEG"), "thin image")
    # empty and too large
    for ext in ("jpg", "png", "heic"):
        put(f"empty/empty.{ext}", b"", "empty or too large")
    big = root / "empty" / "sparse-201MiB.jpg"
    with big.open("wb") as f:
        f.write(jpeg)
        f.truncate(201 * 2**20)                                  # sparse: no disk used
    manifest.append({"name": "empty/sparse-201MiB.jpg", "category": "empty or too large",
                     "expect": "file"})
    # odd names
    names = ["[bold]x[/bold].jpg", "[red]alert[/red].png", "\x1b[31mred\x1b[0m.jpg",
             "bell\x07.png", "new\nline.jpg", "carriage\rreturn.jpg", "tab\there.png",
             "  spaces around  .jpg", "a" * 240 + ".jpg", "ünïcödé 日本語 🙂.jpg", "-rf.jpg",
             "100%.png", "q?a=1&b#frag.jpg", "UPPER.JPG", "back\\slash.jpg", "'; DROP TABLE.jpg"]
    for i, n in enumerate(names):
        put(f"names/{n}", jpeg if i % 2 == 0 else png, "odd name")
    for raw in (b"caf\xe9-latin1.jpg", b"\xff\xfe-bad-utf8.png", b"\xed\xa0\x80-surrogate.jpg"):
        name = "names/" + os.fsdecode(raw)
        put(name, jpeg, "odd name (not UTF-8)")
    deep = "/".join(["deep"] * 40) + "/bottom.jpg"
    put(deep, jpeg, "odd name")
    # links, special files, folders named like images
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(jpeg)
    (outside / "dir").mkdir(exist_ok=True)
    links = root / "links"
    links.mkdir()
    (links / "outside.jpg").symlink_to(outside / "secret.jpg")
    manifest.append({"name": "links/outside.jpg", "category": "links and special files",
                     "expect": "outside-link"})
    (links / "inside.jpg").symlink_to(root / "formats" / "jpeg.jpg")
    manifest.append({"name": "links/inside.jpg", "category": "links and special files",
                     "expect": "file"})
    (links / "dangling.jpg").symlink_to(root / "no-such-file.jpg")
    (links / "loop.jpg").symlink_to(links / "loop.jpg")
    (links / "outside-dir.jpg").symlink_to(outside / "dir")
    os.mkfifo(links / "pipe.jpg")
    for n in ("dangling.jpg", "loop.jpg", "outside-dir.jpg", "pipe.jpg"):
        manifest.append({"name": f"links/{n}", "category": "links and special files",
                         "expect": "skipped"})
    (root / "album.jpg").mkdir()
    put("album.jpg/inside-a-folder-named-like-an-image.png", png, "links and special files")
    put(".hidden.jpg", jpeg, "links and special files", expect="skipped")
    put("notes.txt", b"not considered", "links and special files", expect="skipped")
    return manifest, missing


def peak_rss_run(cmd: list[str], rss_file: Path, timeout: float
                 ) -> tuple[subprocess.CompletedProcess, int | None]:
    """Run `cmd`; its peak RSS in KiB (GNU time -v, else psutil sampling)."""
    if Path("/usr/bin/time").exists():
        r = subprocess.run(["/usr/bin/time", "-v", "-o", str(rss_file), *cmd], env=ENV,
                           capture_output=True, timeout=timeout)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", rss_file.read_text())
        return r, int(m.group(1)) if m else None
    import psutil

    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    ps = psutil.Process(proc.pid)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate(timeout=timeout)))
    reader.start()
    while reader.is_alive():
        try:
            peak = max(peak, ps.memory_info().rss // 1024)
        except psutil.Error:
            break
        time.sleep(0.02)
    reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out[0], out[1]), peak


def run_hostile(args: argparse.Namespace, work: Path, rng: random.Random) -> dict[str, Any]:
    root = work / "hostile"
    root.mkdir()
    photo = sorted((DATA / "strecha" / "scenes").glob("*/*.jpg"))[0]
    manifest, missing = build_hostile(root, work / "outside-the-root", photo, rng)
    print(f"[hostile] {len(manifest)} entries built under {root}", flush=True)
    t0 = time.monotonic()
    r, rss = peak_rss_run(index_cmd(root, "--json"), work / "rss-hostile.txt", timeout=1800)
    seconds = time.monotonic() - t0
    try:
        report = json.loads(r.stdout)
    except ValueError:
        report = {}
    cat = inspect_catalog(root / ".loupe" / "catalog.db")
    rows: dict[str, list[tuple[str, str | None]]] = collections.defaultdict(list)
    for path, status, error, _sha in cat["rows"]:
        rows[path].append((status, error))
    per_cat: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems: list[str] = []
    reasons: dict[str, str] = {}
    for e in manifest:
        c = per_cat[e["category"]]
        c["entries"] += 1
        got = rows.get(e["name"], [])
        if e["expect"] == "file":
            if len(got) != 1:
                c["missing or duplicated"] += 1
                problems.append(f"{e['name']!r}: {len(got)} rows")
            elif got[0][0] == "ok":
                c["indexed"] += 1
            elif got[0][1]:
                c["recorded with a reason"] += 1
                reasons[e["name"]] = got[0][1]
            else:
                c["error without a reason"] += 1
                problems.append(f"{e['name']!r}: status error, no reason")
        elif got:
            c["indexed though it should not be"] += 1
            problems.append(f"{e['name']!r}: expected {e['expect']}, found in the catalog")
        else:
            c["outside link, counted" if e["expect"] == "outside-link" else
              "skipped by design (not a regular image file)"] += 1
    expected_names = {e["name"] for e in manifest}
    extra = sorted(set(rows) - expected_names)
    if extra:
        problems.append(f"rows for files not in the manifest: {extra[:5]}")
    n_files = sum(e["expect"] == "file" for e in manifest)
    n_links = sum(e["expect"] == "outside-link" for e in manifest)
    checks = {
        "exit code 0 (no abort)": r.returncode == 0,
        "every file indexed or recorded with a reason": not problems,
        "outside links counted, not followed": report.get("outside_links") == n_links,
        "report: scanned == files": report.get("scanned") == n_files,
        "integrity_check ok": cat["integrity"] == "ok",
        "ok rows == rows with a vector": cat["ok"] == cat["ok_with_vector"],
    }
    # The same corpus again: nothing to read; a human-readable run in another library;
    # stats and a search over the result.
    again = subprocess.run(index_cmd(root, "--json"), env=ENV, capture_output=True, timeout=900)
    rep2 = json.loads(again.stdout) if again.returncode == 0 else {}
    checks["second run: exit 0, every file unchanged"] = (
        again.returncode == 0 and rep2.get("unchanged") == n_files)
    human = subprocess.run(index_cmd(root, "--library", str(work / "hostile-lib2")), env=ENV,
                           capture_output=True, timeout=1800)
    herr = human.stderr.decode("utf-8", "replace")
    checks["human-readable run: exit 0"] = human.returncode == 0
    checks["human-readable run: no raw control characters printed"] = not CONTROL.search(
        herr + human.stdout.decode("utf-8", "replace"))
    stats = subprocess.run(cli("stats"), cwd=root, env=ENV, capture_output=True, timeout=300)
    search = subprocess.run(cli("search", "a church", "-k", "50"), cwd=root, env=ENV,
                            capture_output=True, timeout=300)
    printed = (stats.stdout + stats.stderr + search.stdout + search.stderr).decode("utf-8",
                                                                                   "replace")
    checks["stats and search: exit 0, no raw control characters"] = (
        stats.returncode == 0 and search.returncode == 0 and not CONTROL.search(printed))
    # A pile of 12000 x 12000 PNGs (144 MP each, under the default limit of 150 MP).
    pile = work / "bomb-pile"
    pile.mkdir()
    for i in range(args.bomb_pile):
        (pile / f"bomb{i}.png").write_bytes(png_bytes(12000, 12000, mark=i + 1))
    t1 = time.monotonic()
    pr, pile_rss = peak_rss_run(index_cmd(pile, "--json"), work / "rss-pile.txt", timeout=1800)
    pile_s = time.monotonic() - t1
    pile_rep = json.loads(pr.stdout) if pr.returncode == 0 else {}
    # A baseline for the peak RSS: the same command over ordinary photos.
    base_dir = work / "rss-baseline"
    write_photos(base_dir, photo_set(60))
    _, base_rss = peak_rss_run(index_cmd(base_dir, "--json"), work / "rss-base.txt", timeout=900)
    return {
        "entries": len(manifest), "files": n_files, "outside_links": n_links,
        "formats_not_written": missing,
        "rc": r.returncode, "seconds": round(seconds, 1),
        "peak_rss_mib": round(rss / 1024, 1) if rss else None,
        "peak_rss_mib_60_ordinary_photos": round(base_rss / 1024, 1) if base_rss else None,
        "bomb_pile": {"files": args.bomb_pile, "each": "12000 x 12000 PNG, 1 bit, "
                      f"{(pile / 'bomb0.png').stat().st_size} bytes", "rc": pr.returncode,
                      "added": pile_rep.get("added"), "errors": pile_rep.get("errors"),
                      "seconds": round(pile_s, 1),
                      "peak_rss_mib": round(pile_rss / 1024, 1) if pile_rss else None},
        "report": {k: report.get(k) for k in ("scanned", "added", "copies", "errors",
                                              "outside_links", "embedded")},
        "by_category": {k: dict(v) for k, v in per_cat.items()},
        "checks": checks, "problems": problems[:50],
        "reasons_sample": dict(sorted(reasons.items())[:400]),
        "stderr_tail": r.stderr.decode("utf-8", "replace")[-1500:] if r.returncode else "",
    }


# --- 3. server under load ------------------------------------------------------------------------
QUERIES = ["a church on a hill", "a fountain", "castle wall", "stone steps", "a door with arches",
           "trees in front of a building", "blue sky", "a statue", "windows", "people",
           "ünïcödé 日本語", "[bold]markup[/bold]", "'; DROP TABLE images; --", "%00%ff", "x" * 1000]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(args: argparse.Namespace, work: Path, rng: random.Random) -> dict[str, Any]:
    import httpx

    root = work / "served"
    pool = photo_set(args.server_photos + 200)
    write_photos(root, pool[:args.server_photos])
    spare = pool[args.server_photos:]
    t0 = time.monotonic()
    first = subprocess.run(index_cmd(root, "--json"), env=ENV, capture_output=True, timeout=1800)
    if first.returncode != 0:
        raise SystemExit(f"indexing the served library failed: {first.stderr.decode()[-2000:]}")
    print(f"[server] {json.loads(first.stdout)['scanned']} photos indexed in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    db = root / ".loupe" / "catalog.db"
    ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM images WHERE status='ok'")]
    port, token = free_port(), secrets.token_hex(16)
    log_path = work / "server.log"
    base = f"http://127.0.0.1:{port}"
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    examples: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    recent: list[int] = list(ids[:20])
    rounds: list[dict[str, Any]] = []
    admin: collections.Counter = collections.Counter()
    index_states: collections.Counter = collections.Counter()
    server = None
    driver_proc: list[subprocess.Popen] = []
    result: dict[str, Any] = {}

    def record(kind: str, status: str, ms: float, note: str = "") -> None:
        with lock:
            counts[kind][status] += 1
            latencies[kind].append(ms)
            if note and len(examples) < 20:
                examples.append(f"{kind} {status}: {note[:300]}")

    def client(seed: int) -> None:
        r = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                x = r.random()
                if x < 0.45:
                    kind, url, params = "text", "/api/search", {"q": r.choice(QUERIES), "k": 20}
                elif x < 0.85:
                    kind, url, params = "like", "/api/search", {"like": r.choice(ids), "k": 20}
                else:
                    with lock:
                        pick = r.choice(recent)
                    kind, url, params = "thumb", f"/api/images/{pick}/thumb", {}
                t = time.perf_counter()
                try:
                    resp = c.get(url, params=params)
                except httpx.TimeoutException as exc:
                    record(kind, "timeout", (time.perf_counter() - t) * 1000, repr(exc))
                    continue
                except httpx.HTTPError as exc:
                    record(kind, "connection error", (time.perf_counter() - t) * 1000, repr(exc))
                    continue
                ms = (time.perf_counter() - t) * 1000
                status = str(resp.status_code)
                note = resp.text if resp.status_code >= 500 else ""
                record(kind, status, ms, note)
                if kind != "thumb" and resp.status_code == 200:
                    got = [h["id"] for h in resp.json().get("results", [])]
                    if got:
                        with lock:
                            recent[:] = (got + recent)[:50]

    def driver() -> None:
        """Rounds of: files arrive (written aside, then renamed in), move and leave; then
        `loupe index` of the folder, as a separate process."""
        r = random.Random(11)
        k = 0
        while not stop.is_set():
            present = sorted(p for p in root.rglob("*.jpg") if ".loupe" not in p.parts)
            r.shuffle(present)
            for p in present[:12]:
                p.unlink()
            for j, p in enumerate(present[12:20]):
                dst = root / "moved" / f"m{k:03d}-{j}-{p.name}"
                dst.parent.mkdir(exist_ok=True)
                os.rename(p, dst)
            for j in range(24):
                rel, im = spare[(k * 24 + j) % len(spare)]
                dst = root / "arrived" / f"r{k:03d}" / Path(rel).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.parent / ("." + dst.name + ".part")
                im.save(tmp, format="JPEG", quality=88)
                os.rename(tmp, dst)
            t = time.monotonic()
            proc = subprocess.Popen(index_cmd(root, "--json"), env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            driver_proc[:] = [proc]
            out, err = proc.communicate(timeout=900)
            row: dict[str, Any] = {"round": k, "rc": proc.returncode,
                                   "seconds": round(time.monotonic() - t, 1)}
            if proc.returncode == 0:
                rep = json.loads(out)
                row.update({x: rep[x] for x in ("added", "moved", "removed", "embedded")})
            else:
                row["stderr"] = err.decode("utf-8", "replace")[-300:]
            rounds.append(row)
            k += 1

    def poke() -> None:
        """Now and then, the admin's re-index through the API, and its status."""
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.wait(7):
                try:
                    resp = c.post("/api/index", headers={"Authorization": f"Bearer {token}"})
                    admin[f"POST /api/index {resp.status_code}"] += 1
                    st = c.get("/api/index")
                    admin[f"GET /api/index {st.status_code}"] += 1
                    if st.status_code == 200:
                        index_states[st.json().get("state")] += 1
                except httpx.HTTPError as exc:
                    admin[f"error {type(exc).__name__}"] += 1

    threads: list[threading.Thread] = []
    try:
        with log_path.open("wb") as log:
            server = subprocess.Popen(cli("serve", str(root / ".loupe"), "--port", str(port),
                                          "--token", token, "--device", "cpu"),
                                      env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server ended: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer within 180 s")
            time.sleep(0.3)
        load_before = loadavg()
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(args.clients)]
        threads += [threading.Thread(target=driver, daemon=True),
                    threading.Thread(target=poke, daemon=True)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in threads[:args.clients]:
            t.join(timeout=120)
        load_duration = time.monotonic() - started
        threads[args.clients].join(timeout=900)        # the driver's last index run
        threads[args.clients + 1].join(timeout=120)
        # Afterwards: the library is whole, and the server catches up with it.
        for _ in range(10):   # the server's own re-index may hold the lock a moment
            final = subprocess.run(index_cmd(root, "--json"), env=ENV, capture_output=True,
                                   timeout=900)
            if final.returncode != 2 or b"another process" not in final.stderr:
                break
            time.sleep(3)
        cat = inspect_catalog(db)
        caught_up, searchable = False, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(f"{base}/api/health", timeout=30).json()
            searchable = health["searchable"]
            if searchable == cat["ok"] and not health["indexing"]:
                caught_up = True
                break
            time.sleep(1)
        total = collections.Counter()
        for c in counts.values():
            total.update(c)
        n5xx = sum(v for k, v in total.items() if k.isdigit() and int(k) >= 500)
        errors = total["connection error"] + total["timeout"]
        log_text = log_path.read_text(errors="replace")
        tracebacks = collections.Counter()
        for chunk in log_text.split("Traceback (most recent call last):")[1:]:
            last = next((ln for ln in chunk.splitlines()
                         if ln and not ln.startswith((" ", "\t"))), "?")
            tracebacks["lock held by the CLI run (LibraryError: another process is indexing)"
                       if "another process is indexing" in last else last[:200]] += 1
        unexpected = sum(v for k, v in tracebacks.items() if not k.startswith("lock held"))
        all_ms = sorted(ms for v in latencies.values() for ms in v)
        result = {
            "photos_at_start": len(ids), "clients": args.clients,
            "duration_s": round(load_duration, 1), "load_average_at_start": load_before,
            "load_average_at_end": loadavg(),
            "requests": sum(total.values()),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
            "latency_ms": {k: {"p50": round(float(np.percentile(v, 50)), 1),
                               "p99": round(float(np.percentile(v, 99)), 1),
                               "max": round(max(v), 1)} for k, v in latencies.items() if v},
            "p50_ms_all": round(float(np.percentile(all_ms, 50)), 1) if all_ms else None,
            "index_rounds": rounds,
            "index_rounds_exit_codes": dict(collections.Counter(str(r["rc"]) for r in rounds)),
            "admin_api": dict(admin), "server_indexer_states_seen": dict(index_states),
            "searchable_at_end": searchable, "catalog_ok_at_end": cat["ok"],
            "error_examples": examples,
            "server_log_tracebacks": dict(tracebacks),
            "server_log_tail": log_text[-2000:] if unexpected else "",
            "checks": {
                "no 5xx": n5xx == 0,
                "no connection error or timeout": errors == 0,
                "every index run: exit 0 or 'another process is indexing'": all(
                    r["rc"] == 0 or (r["rc"] == 2 and "another process" in r.get("stderr", ""))
                    for r in rounds),
                "final index exit 0": final.returncode == 0,
                "integrity_check ok at the end": cat["integrity"] == "ok",
                "ok rows == rows with a vector at the end": cat["ok"] == cat["ok_with_vector"],
                "server caught up (searchable == indexed) within 60 s": caught_up,
                "no unexpected traceback in the server log": unexpected == 0,
            },
        }
    finally:
        stop.set()
        for p in driver_proc:
            if p.poll() is None:
                p.kill()
                p.wait()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return result


# --- the report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = str(cpu_info()["model"])   # /proc/cpuinfo's model name
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": mem, "arch": platform.machine(), "os": platform.platform()}


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    import loupe

    out["loupe"] = loupe.__version__
    for pkg in ("pillow", "pillow-heif", "numpy", "torch", "onnxruntime", "fastapi", "uvicorn",
                "httpx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=30).stdout.strip()
        out["git_commit"] = sha
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "loupe"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
        out["uncommitted_changes_in_loupe"] = [line[3:] for line in dirty]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def summarise(res: dict[str, Any]) -> None:
    sig = res.get("signals")
    if sig:
        for key, title in (("sigkill", "kill -9 at a random moment, from an empty library"),
                           ("sigint", "Ctrl-C (SIGINT; exit-code checks: signals that came "
                                      "while the command ran)"),
                           ("incremental_sigkill", "kill -9 during an incremental run "
                                                   "(moves, deletions, new and rewritten files)")):
            g = sig[key]
            if not g["trials"]:
                continue
            rows = [[name, c["pass"], c["fail"]] for name, c in g["checks"].items()]
            print_table(f"{title}: {g['trials']} signals landed in a running command "
                        f"(+{g['runs_that_ended_before_their_moment']} runs ended first); "
                        f"where: {g['phases']}",
                        ["check", "pass", "fail"], rows)
        for ph, outcomes in sig["sigint_outside_the_command"].items():
            if outcomes:
                print(f"\nCtrl-C outside the command, {ph}: {outcomes} "
                      "(rc -2: died of SIGINT; a shell shows 130)")
    h = res.get("hostile")
    if h:
        cats = sorted({k for v in h["by_category"].values() for k in v} - {"entries"})
        rows = [[c, v["entries"], *[v.get(k, 0) for k in cats]]
                for c, v in h["by_category"].items()]
        print_table(f"hostile corpus: {h['entries']} entries, exit code {h['rc']}, "
                    f"{h['seconds']} s, peak RSS {h['peak_rss_mib']} MiB "
                    f"(60 ordinary photos: {h['peak_rss_mib_60_ordinary_photos']} MiB)",
                    ["category", "entries", *cats], rows)
        b = h["bomb_pile"]
        print(f"  {b['files']} PNGs of 12000 x 12000 ({b['each']}) indexed together: "
              f"rc {b['rc']}, {b['added']} added, {b['errors']} errors, {b['seconds']} s, "
              f"peak RSS {b['peak_rss_mib']} MiB")
        print_table("hostile corpus checks", ["check", "result"],
                    [[k, "pass" if v else "FAIL"] for k, v in h["checks"].items()])
    s = res.get("server")
    if s:
        statuses = sorted({k for v in s["by_kind"].values() for k in v})
        rows = [[k, sum(v.values()), *[v.get(x, 0) for x in statuses]]
                for k, v in s["by_kind"].items()]
        print_table(f"server under load: {s['clients']} clients x {s['duration_s']} s, "
                    f"{len(s['index_rounds'])} `loupe index` rounds meanwhile "
                    f"(exit codes {s['index_rounds_exit_codes']})",
                    ["kind", "requests", *statuses], rows)
        print(f"  admin API: {s['admin_api']}; server indexer states seen: "
              f"{s['server_indexer_states_seen']}; tracebacks in the server log: "
              f"{s['server_log_tracebacks']}")
        print_table("server checks", ["check", "result"],
                    [[k, "pass" if v else "FAIL"] for k, v in s["checks"].items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50,
                    help="kill -9 signals that land in a running `loupe index` (from empty)")
    ap.add_argument("--sigint-trials", type=int, default=20)
    ap.add_argument("--startup-trials", type=int, default=3,
                    help="SIGINT trials during interpreter start-up (reported apart)")
    ap.add_argument("--incremental-trials", type=int, default=10)
    ap.add_argument("--photos", type=int, default=160, help="photos in the kill folder")
    ap.add_argument("--server-photos", type=int, default=320)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0, help="server load, seconds")
    ap.add_argument("--bomb-pile", type=int, default=4,
                    help="12000 x 12000 PNGs indexed together, for the peak RSS")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--parts", default="signals,hostile,server")
    ap.add_argument("--quick", action="store_true", help="a smoke run of every part")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    # A background job of a non-interactive shell (nohup ... &) starts with SIGINT ignored,
    # and an ignored signal stays ignored across exec: the CLI under test would never see
    # Ctrl-C. A handler here is reset to the default in every child.
    sigint_at_start = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.quick:
        args.trials, args.sigint_trials, args.startup_trials = 6, 3, 1
        args.incremental_trials, args.photos, args.server_photos = 2, 60, 120
        args.duration, args.bomb_pile = 10.0, 2
    args.photos_all = max(args.photos + 20, 173)
    out = args.out or (Path(tempfile.gettempdir()) / "faults-quick.json" if args.quick
                       else HERE / "results" / "faults.json")
    rng = random.Random(args.seed)
    res: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/faults.py", *sys.argv[1:]]),
        "seed": args.seed, "model": MODEL, "machine": machine(), "versions": versions(),
        "load_average_before": loadavg(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sigint_was_ignored_by_the_parent": sigint_at_start == signal.SIG_IGN,
    }
    print(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; load average "
          f"{res['load_average_before']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="loupe-faults-"))
    t0 = time.monotonic()
    try:
        parts = args.parts.split(",")
        if "signals" in parts:
            res["signals"] = run_signals(args, work, rng)
        if "hostile" in parts:
            res["hostile"] = run_hostile(args, work, rng)
        if "server" in parts:
            res["server"] = run_server(args, work, rng)
    finally:
        res["load_average_after"] = loadavg()
        res["seconds"] = round(time.monotonic() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, ensure_ascii=False, default=str) + "\n")
        if not args.keep:
            subprocess.run(["chmod", "-R", "u+rwX", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)
    summarise(res)
    fails = []
    for part in ("signals",):
        for g in ("sigkill", "sigint", "incremental_sigkill"):
            fails += [f"{g}: {k}" for k, c in res.get(part, {}).get(g, {}).get("checks", {}).items()
                      if c["fail"]]
    for part in ("hostile", "server"):
        fails += [f"{part}: {k}" for k, v in res.get(part, {}).get("checks", {}).items() if not v]
    print(f"\nload average before {res['load_average_before']}, after "
          f"{res['load_average_after']}; {res['seconds']} s; written to {out}")
    print("all checks passed" if not fails else "FAILED: " + "; ".join(fails))


if __name__ == "__main__":
    main()
