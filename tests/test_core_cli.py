"""The CLI as a user types it: index, search (every mode), stats, --json, errors."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, cli, make_folder, run_cli


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "photos"
    make_folder(root, 8)
    make_folder(root, 4, start=40, sub="trip")
    (root / "broken.jpg").write_text("nope")
    r = cli("index", str(root), "--model", TINY, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["added"], report["errors"]) == (12, 1)
    return root


def test_search_modes_json(photos):
    r = cli("search", "--image", "img0003.png", "-k", "2", "--json", cwd=photos)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert res[0]["rel_path"] == "img0003.png" and res[0]["score"] > 0.9999
    r = cli("search", "--like", "trip/img0041.png", "-k", "3", "--json", cwd=photos)
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and "trip/img0041.png" not in [x["rel_path"] for x in res]
    r = cli("search", "a dog on a beach", "--folder", "trip", "--json", cwd=photos / "trip")
    res = json.loads(r.stdout)["results"]
    assert {x["rel_path"] for x in res} == {f"trip/img{i:04d}.png" for i in range(40, 44)}
    r = cli("search", "--image", "img0001.png", "in green", "--weight", "0.7", "--json", cwd=photos)
    assert r.exit_code == 0 and json.loads(r.stdout)["results"]
    r = cli("search", "2:golden retriever", "+", "img0002.png", "-", "fruit", "--json", cwd=photos)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["results"]


def test_table_output_and_stats(photos):
    r = cli("search", "--image", "img0005.png", "-k", "3", cwd=photos)
    header, first = r.stdout.splitlines()[:2]
    assert r.exit_code == 0 and header.split() == ["#", "id", "score", "path", "size", "date"]
    assert first.split()[3] == "img0005.png" and first.split()[0] == "1"
    r = cli("stats", "--json", cwd=photos)
    info = json.loads(r.stdout)
    assert (info["files"], info["indexed"], info["errors"]) == (13, 12, 1)
    assert info["model"] == TINY and info["error_list"][0]["path"] == "broken.jpg"
    r = cli("stats", cwd=photos)
    assert "broken.jpg" in r.stdout and "12 indexed" in r.stdout


def test_errors_are_clear_and_change_nothing(photos, tmp_path):
    before = json.loads(cli("stats", "--json", cwd=photos).stdout)
    cases = [
        (["search", "--image", "missing.jpg"], "--image missing.jpg: no such file"),
        (["search"], "empty query"),
        (["search", "x", "--since", "yesterday"], "--since wants a date"),
        (["search", "--image", "img0001.png", "--box", "1,2,3"], "--box wants"),
        (["search", "--like", "not/indexed.png"], "not an indexed image"),
    ]
    for args, message in cases:
        r = cli(*args, cwd=photos)
        assert r.exit_code == 2, (args, r.stderr)
        assert message in " ".join(r.stderr.split()), (args, r.stderr)
    r = cli("search", "x", cwd=tmp_path)
    assert r.exit_code == 2 and "no library" in r.stderr
    after = json.loads(cli("stats", "--json", cwd=photos).stdout)
    assert {k: after[k] for k in ("files", "indexed", "vectors")} == {
        k: before[k] for k in ("files", "indexed", "vectors")}


def test_help_teaches():
    r = run_cli("search", "--help")  # the installed entry point, in a fresh process
    assert r.returncode == 0
    for flag in ("--image", "--like", "--weight", "--folder", "--since", "--threshold", "--json"):
        assert flag in r.stdout
    assert "golden retriever" in r.stdout


def test_paths_are_printed_literally(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 2)
    (root / "img0000.png").rename(root / "[draft] beach.png")
    assert cli("index", str(root), "--model", TINY, "--device", "cpu").exit_code == 0
    r = cli("search", "--image", "[draft] beach.png", "-k", "1", cwd=root)
    assert r.exit_code == 0 and "[draft] beach.png" in r.stdout


def test_index_with_dba_and_local_features(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 5)
    r = cli("index", str(root), "--model", TINY, "--device", "cpu", "--dba", "3",
            "--local-features", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["local_features"]["extracted"] + out["local_features"]["cached"] == 5
    assert out["local_features"]["failed"] == 0
    again = json.loads(cli("index", str(root), "--local-features", "--json").stdout)
    assert again["local_features"]["cached"] == 5 and again["local_features"]["extracted"] == 0
    stats = json.loads(cli("stats", "--json", cwd=root).stdout)
    assert stats["dba"] == {"k": 3, "alpha": 3.0}
