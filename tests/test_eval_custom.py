"""`loupe eval custom` end to end on real photos: Sacre Coeur copies against the originals.

Builds a library of the ten originals with the tiny random model, runs the CLI
with a report, then checks the numbers against an independent computation
from Library.search and checks the HTML report (every query named, every
<img> a readable image file).
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from loupe.eval import custom
from loupe.eval.cli import register
from loupe.eval.common import DatasetError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sacre_coeur"
pytestmark = pytest.mark.skipif(not (SHARED / "mapping").is_dir(), reason="needs ../shared/data (present in CI)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from loupe.library import Library

    root = tmp_path_factory.mktemp("photos")
    originals = sorted((SHARED / "mapping").glob("*.jpg"))
    for p in originals:
        shutil.copy(p, root / p.name)
    lib = Library.open(root / ".loupe", model="loupe-tiny:random", device="cpu")
    lib.index()
    lib.close()
    rows = ["query,relevant"]
    for p in originals:
        rows.append(f"{SHARED / 'mapping_rot' / (p.stem + '_rot90.jpg')},{p.name}")
        rows.append(f"{SHARED / 'mapping_scale' / (p.stem + '_scale0.5.jpg')},{p.name}")
    rows.append(f'"the Sacre Coeur, Paris",{originals[0].name}')
    rows.append(f'"the Sacre Coeur, Paris",{originals[1].name}')
    rows.append(f"{originals[2].name},{originals[3].name}")   # an indexed image as the query
    rows.append("a red bicycle,")                             # no relevant image
    (root / "queries.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def run(photos):
    app = typer.Typer()
    register(app)
    report = photos / "report"
    res = CliRunner().invoke(app, ["eval", "custom", "--queries", str(photos / "queries.csv"),
                                   "--library", str(photos / ".loupe"), "--report", str(report),
                                   "--out", str(photos / "res.json"), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return json.loads((photos / "res.json").read_text()), report


def _ap(ranked_names, relevant):
    hits, total = 0, 0.0
    for i, name in enumerate(ranked_names, start=1):
        if name in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant)


def test_numbers_match_library_search(photos, run):
    from loupe.library import Library

    result, _ = run
    per_query = {q["query"]: q for q in result["per_query"]}
    assert len(per_query) == 23
    lib = Library.open(photos / ".loupe", device="cpu", create=False)
    aps = []
    try:
        for q in custom.load(photos / "queries.csv", lib.root).queries:
            relevant = {rel for _, rel in q.relevant}
            if q.image is not None and q.image.parent == photos:   # indexed: searched by its vector
                hits = lib.search(like=q.image, k=20)
            elif q.image is not None:
                hits = lib.search(image=q.image, k=20)
            else:
                hits = lib.search(q.query, k=20)
            names = [h.meta["rel_path"] for h in hits]
            if not relevant:
                assert per_query[q.query]["AP"] is None
                continue
            ap = _ap(names, relevant)
            aps.append(ap)
            assert per_query[q.query]["AP"] == pytest.approx(100 * ap, abs=1e-4), q.query
            assert per_query[q.query]["R@1"] == pytest.approx(100 * len(set(names[:1]) & relevant) / len(relevant))
    finally:
        lib.close()
    assert result["metrics"]["mAP"] == pytest.approx(100 * sum(aps) / len(aps), abs=1e-4)
    assert "1 of 23 queries have no relevant image" in result["notes"][0]
    assert result["config"]["dataset"]["library_images"] == 10
    assert result["config"]["model"]["model"] == "loupe-tiny:random"
    assert result["config"]["environment"]["numpy"]


class _Parse(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_names_every_query_and_its_images_load(photos, run):
    result, report = run
    html = (report / "index.html").read_text(encoding="utf-8")
    parser = _Parse()
    parser.feed(html)
    text = " ".join(parser.text)
    for q in result["per_query"]:
        assert q["query"] in text
    # 23 query sections; each shows its top 10 (the library has 10 images); 21 image queries show themselves
    assert len(parser.srcs) >= 23 * 10 + 21
    for src in set(parser.srcs):
        path = report / src
        assert path.is_file(), src
        with Image.open(path) as im:
            im.verify()
    assert (report / "results.json").is_file()
    assert (report / "plots" / "per_query.png").is_file()


def test_bad_queries_file_names_the_line(photos, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("query,relevant\nfine,a.jpg\n,b.jpg\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: empty query"):
        custom.load(bad, photos)
    bad.write_text("query,relevant\nmissing_query.jpg,a.jpg\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: image query 'missing_query.jpg' not found"):
        custom.load(bad, photos)
    bad.write_text("q,a.jpg,extra\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: expected 'query,relevant', got 3 fields"):
        custom.load(bad, photos)
    # a relevant image the library does not hold is an error, not a silent zero
    bad.write_text("the Sacre Coeur,not_indexed.jpg\n")
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["eval", "custom", "--queries", str(bad), "--library", str(photos / ".loupe"),
                                   "--out", str(tmp_path / "r.json"), "--quiet", "--device", "cpu"])
    assert res.exit_code == 2
    assert "bad.csv:1" in res.output and "not_indexed.jpg" in res.output
