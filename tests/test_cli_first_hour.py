"""The first hour of a new user: output that pipes, wrong input that fails loudly before any
model loads, searches scoped to where the user stands, honest summaries, help that teaches."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, TINY, cli, make_folder

import loupe.library

LONG = "a-folder-name-long-enough-that-an-eighty-column-table-would-cut-it-short"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hour") / "photos"
    make_folder(root, 6)
    make_folder(root, 3, start=40, sub="paris")
    make_folder(root, 2, start=60, sub="paris/old")
    make_folder(root, 2, start=80, sub=LONG)
    (root / "broken.jpg").write_text("not an image")
    r = cli("index", str(root), "--model", TINY, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    return root


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(loupe.library, "load_encoder", refuse)


def test_piped_output_is_never_cut_and_every_format_parses_back(photos):
    r = cli("search", "--like", "img0001.png", "-k", "20", cwd=photos)
    assert r.exit_code == 0
    assert f"{LONG}/img0080.png" in r.stdout                 # a 90-character path, whole
    assert "…" not in r.stdout and "..." not in r.stdout
    rows = {f: cli("search", "--like", "img0001.png", "-k", "5", "--format", f, cwd=photos).stdout
            for f in ("json", "jsonl", "csv", "tsv", "paths")}
    as_json = json.loads(rows["json"])["results"]
    ids = [x["id"] for x in as_json]
    assert len(ids) == 5
    assert [json.loads(line)["id"] for line in rows["jsonl"].splitlines()] == ids
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        parsed = list(csv.DictReader(io.StringIO(rows[fmt]), delimiter=sep))
        assert [int(x["id"]) for x in parsed] == ids
        assert [x["path"] for x in parsed] == [x["rel_path"] for x in as_json]   # relative to here
    assert rows["paths"].splitlines() == [x["rel_path"] for x in as_json]
    # paths relative to where the user stands, and the id column that --like takes
    r = cli("search", "--like", "img0001.png", "-k", "3", "--format", "csv", "--everywhere",
            cwd=photos / "paris")
    paths = [x["path"] for x in csv.DictReader(io.StringIO(r.stdout))]
    assert all(p.startswith("../") or not p.startswith(str(photos)) for p in paths)
    first_id = next(csv.DictReader(io.StringIO(r.stdout)))["id"]
    assert cli("search", "--like", first_id, "-k", "1", cwd=photos).exit_code == 0


def test_search_is_scoped_to_the_folder_you_stand_in(photos):
    inside = json.loads(cli("search", "x", "-k", "50", "--json", cwd=photos / "paris").stdout)["results"]
    assert {r["rel_path"] for r in inside} == {f"paris/img{i:04d}.png" for i in (40, 41, 42)} | {
        f"paris/old/img{i:04d}.png" for i in (60, 61)}
    everywhere = json.loads(cli("search", "x", "-k", "50", "--json", "--everywhere",
                                cwd=photos / "paris").stdout)["results"]
    assert len(everywhere) == 13
    # --folder relative to here, and a glob whose * does not cross folders
    r = json.loads(cli("search", "x", "-k", "50", "--json", "--folder", "old", cwd=photos / "paris").stdout)
    assert {x["rel_path"] for x in r["results"]} == {"paris/old/img0060.png", "paris/old/img0061.png"}
    r = json.loads(cli("search", "x", "-k", "50", "--json", "--glob", "paris/*.png", cwd=photos).stdout)
    assert {x["rel_path"] for x in r["results"]} == {f"paris/img{i:04d}.png" for i in (40, 41, 42)}


@pytest.mark.parametrize("args, message", [
    (["--type", "foo", "x"], "--type 'foo': unknown format"),
    (["--folder", "nowhere", "x"], "--folder nowhere: no indexed image under it"),
    (["--box", "0,0,5,5", "x"], "--box selects a region of a query image"),
    (["--show-boxes", "out", "x"], "--show-boxes draws the boxes a spatial reranker finds"),
    (["--show-boxes", "out", "--rerank", "qe", "x"], "--rerank 'qe' makes no boxes"),
    (["--glob", "zz/*.png", "x"], "--glob 'zz/*.png' matches no indexed image"),
    (["--image", "README.txt"], "--image README.txt: not an image"),
    (["--image", "missing.jpg"], "--image missing.jpg: no such file"),
    (["--like", "broken.jpg"], "broken.jpg could not be indexed: not an image"),
    (["--format", "xml", "x"], "--format 'xml'"),
    (["--device", "tpu", "x"], "unknown device 'tpu'"),
    (["--box", "nan,0,5,5", "--image", "img0001.png"], "--box"),
    (["--rerank", "bogus", "x"], "unknown reranker 'bogus'"),
])
def test_wrong_input_fails_loudly_before_any_model_loads(photos, no_model, args, message):
    (photos / "README.txt").write_text("not an image")
    r = cli("search", *args, cwd=photos)
    assert r.exit_code == 2, (args, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1                          # one line, no traceback


def test_checks_run_in_a_fresh_process_without_importing_torch(photos):
    code = ("import sys; from loupe.cli import main; sys.argv = ['loupe', 'search', '--type', 'foo', 'x']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=photos, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr


def test_summaries_count_moves_and_deletes(tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 10)
    assert cli("index", str(root), "--model", TINY, "--device", "cpu").exit_code == 0
    (root / "moved").mkdir()
    for f in files[:7]:
        f.rename(root / "moved" / f.name)
    files[7].unlink()
    r = cli("index", str(root), "--json")
    report = json.loads(r.stdout)
    assert (report["moved"], report["removed"], report["embedded"]) == (7, 1, 0)
    assert report["seconds"] > 0
    last = json.loads(cli("stats", "--json", cwd=root).stdout)["last_index"]
    assert last["seconds"] == report["seconds"] and last["moved"] == 7
    r = cli("index", str(root))
    assert "7 moved" not in r.stderr and "0 removed" in r.stderr and "9 unchanged" in r.stderr


def test_awkward_states_get_a_sentence(tmp_path, photos):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("index", str(empty), "--model", TINY, "--device", "cpu")
    assert r.exit_code == 0 and "no images found in" in r.stderr
    r = cli("search", "x", cwd=empty)
    assert r.exit_code == 2 and "has no indexed images yet" in r.stderr
    r = cli("stats", cwd=empty)
    assert "the library is empty" in r.stdout


def test_update_indexes_before_searching(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)
    assert cli("index", str(root), "--model", TINY, "--device", "cpu").exit_code == 0
    make_folder(root, 1, start=70)
    before = json.loads(cli("search", "x", "--json", cwd=root).stdout)["results"]
    after = json.loads(cli("search", "x", "--json", "--update", cwd=root).stdout)["results"]
    assert (len(before), len(after)) == (3, 4)


def test_version_short_help_and_examples_line_by_line():
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.startswith("loupe ")
    assert cli("-h").exit_code == 0 and "Commands" in cli("-h").stdout
    text = cli("search", "-h").stdout
    assert "\n  loupe search --image query.jpg\n" in text          # each example on its own line
    options = text[text.index("Options:"):]
    assert not re.search(r"<[a-z]", options), options   # no type tags like <int range>, <bool>


def test_offline_model_download_fails_fast_and_leaves_no_library(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 2)
    env = {k: v for k, v in os.environ.items() if k != "LOUPE_MODEL"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "loupe.cli", "index", str(root)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "--weights" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert not (root / ".loupe").exists()


def test_eval_custom_writes_no_file_unasked_and_names_a_wrong_separator(tmp_path, photos):
    queries = tmp_path / "q.csv"
    queries.write_text("query;relevant\nx;img0001.png\n")
    r = cli("eval", "custom", "--queries", str(queries), "--library", str(photos / ".loupe"),
            cwd=tmp_path)
    assert r.exit_code == 2 and "separated by ';'" in r.stderr
    queries.write_text("query,relevant\nimg0002.png,img0001.png\n")
    r = cli("eval", "custom", "--queries", str(queries), "--library", str(photos / ".loupe"),
            cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.csv"]
