"""The answer stages as users meet them: the pipeline's merge rule, `loupe search` (cut-off
and collapse on by default, --all, --like/--unlike, --diverse), `loupe dups`, and the API.

Real photos (Sacre Coeur with its rotated and scaled copies, the Strecha scenes) in a
library whose vectors are colour histograms (tests/answers_data.py): a first stage that
means something without model weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, served

from loupe.core.types import Candidates, Query, SearchRequest
from loupe.search import pipeline
from loupe.search.answers import face_chain
from loupe.search.stages import REGISTRY, Collapse, Cutoff
from loupe.search.stages.base import Reranker
from tests.answers_data import NO_MATCH, SACRE, copy_photos, histogram_library
from tests.test_server_browser import browser  # noqa: F401  (the Chromium fixture)

CONFIDENT = f"sacre/{SACRE[0]}.jpg"      # its 14 copies and a byte-identical copy are indexed


@pytest.fixture(autouse=True)
def answers_on(monkeypatch):
    """The suite runs without the answer stages (conftest); these tests run with the default."""
    monkeypatch.delenv("LOUPE_ANSWERS", raising=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers") / "photos"
    groups = copy_photos(root)
    histogram_library(root).close()
    return root, groups


def search(root: Path, *args: str) -> dict:
    r = cli("search", *args, "--format", "json", cwd=root)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def group_of(groups: dict[str, list[str]], rel: str) -> str:
    return next(name for name, rels in groups.items() if rel in rels)


# --- the merge rule ---------------------------------------------------------------------------


class Unit:
    """A store of unit vectors by id (ids are row numbers)."""

    def __init__(self, vectors: np.ndarray):
        self.x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def vectors(self, ids):
        return self.x[np.asarray(ids, np.int64)]

    def search_vector(self, vec, k, filters=None, exclude=()):
        s = self.x @ vec
        s[list(exclude)] = -np.inf
        order = np.argsort(-s, kind="stable")[:k]
        return Candidates(order, s[order])

    def ids(self):
        return np.arange(len(self.x))


class SearchAgain(Reranker):
    """A stage that searches again (like alpha-QE) and returns whatever the store gives."""

    name = "again"
    searches_again = True
    depth = 3

    def rerank(self, query, candidates, store):
        return store.search_vector(query.vector, 10)


def test_a_removed_result_never_comes_back_and_the_columns_travel() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 8))
    # ids 0-3 are one photo and its copies; 4-9 others
    x = np.concatenate([base[0] + 0.01 * rng.normal(size=(4, 8)), rng.normal(size=(6, 8))])
    store = Unit(x)
    query = Query(store.x[0])
    first = store.search_vector(query.vector, 10)
    out = pipeline.apply([Collapse(depth=2), SearchAgain()], query, first, store)
    # collapse saw the whole list (not only its depth of 2): the copies fold into one result,
    # and the stage that searched again did not bring them back
    assert sorted(out.ids.tolist()) == [0, 4, 5, 6, 7, 8, 9]
    row = out.ids.tolist().index(0)
    assert out.group_size[row] == 4 and set(out.members[row]) == {1, 2, 3}
    assert out.groups[row] == 0 and all(out.group_size[out.ids != 0] == 1)
    # the columns of a later stage's own output survive an earlier one's
    cut = pipeline.apply([Cutoff(keep=True, side="query"), SearchAgain()], query, first, store)
    assert not np.isnan(cut.confidence).any()
    assert dict(zip(cut.ids.tolist(), cut.confidence.tolist(), strict=True)) == pytest.approx(
        dict(zip(first.ids.tolist(), Cutoff(side="query").calibrate(query, first, store).tolist(),
                 strict=True)))


def test_a_dropping_stage_sees_past_its_depth() -> None:
    """The cut-off at depth 2 still judges the third result: no uncalibrated tail fills k."""
    rng = np.random.default_rng(1)
    store = Unit(rng.normal(size=(50, 16)))
    query = Query(store.x[0])
    first = store.search_vector(query.vector, 50)
    out = pipeline.apply([Cutoff(depth=2, threshold=2.0, side="query")], query, first, store)
    z = Cutoff(side="query").calibrate(query, first, store)
    assert out.ids.tolist() == first.ids[z >= 2.0].tolist()
    assert (out.confidence >= 2.0).all()


def test_collapse_is_registered() -> None:
    assert REGISTRY["collapse"] is Collapse


def test_face_chain_order_and_show_all() -> None:
    chain = face_chain(diverse=0.5)
    assert [s.name for s in chain] == ["collapse", "cutoff", "mmr"] and chain[2].lam == 0.5
    shown = face_chain(show_all=True)
    assert [s.name for s in shown] == ["cutoff"] and shown[0].keep
    assert face_chain(answers="none") == []
    assert [s.name for s in face_chain([Cutoff(threshold=3)])] == ["cutoff", "collapse"]


# --- loupe search ------------------------------------------------------------------------------


def test_rotated_copies_collapse_into_one_result(photos) -> None:
    root, groups = photos
    out = search(root, "--like", CONFIDENT, "-k", "5")
    assert out["confident"] is True
    first = out["results"][0]
    copies = set(groups[SACRE[0]]) - {CONFIDENT}
    shown = {first["rel_path"]} | {m["rel_path"] for m in first["group"]["members"]}
    assert shown == copies and first["group"]["size"] == len(copies) == 15
    # no other result is one of its copies
    assert not {r["rel_path"] for r in out["results"][1:]} & copies
    # --all shows each copy on its own, with its confidence, and no groups
    every = search(root, "--like", CONFIDENT, "-k", "20", "--all")
    assert {r["rel_path"] for r in every["results"][:15]} == copies
    assert all("group" not in r and isinstance(r["confidence"], float) for r in every["results"])
    table = cli("search", "--like", CONFIDENT, "-k", "5", cwd=root)
    assert "+14 similar" in table.stdout


def test_no_confident_match_then_all(photos) -> None:
    root, _ = photos
    out = search(root, "--like", NO_MATCH)
    assert out["results"] == [] and out["confident"] is False
    assert "no confident match" in out["message"]
    r = cli("search", "--like", NO_MATCH, cwd=root)
    assert r.exit_code == 0 and r.stdout == ""
    assert "no confident match" in r.stderr and "--all" in r.stderr
    every = search(root, "--like", NO_MATCH, "--all", "-k", "10")
    assert len(every["results"]) == 10 and every["confident"] is None
    assert max(r["confidence"] for r in every["results"]) < 2.0


def test_the_cutoff_keeps_every_result_that_clears_it(photos) -> None:
    root, _ = photos
    every = search(root, "--like", CONFIDENT, "-k", "100", "--all")["results"]
    kept = search(root, "--like", CONFIDENT, "-k", "100")["results"]
    confident = {r["rel_path"] for r in every if r["confidence"] >= 2.0}
    shown = {r["rel_path"] for r in kept} | {m["rel_path"] for r in kept for m in r["group"]["members"]}
    assert confident <= shown
    assert all(r["confidence"] >= 2.0 for r in kept)


def test_liked_and_unliked_images_move_the_results(photos) -> None:
    root, groups = photos
    query = groups["fountain"][0]
    base = search(root, "--like", query, "--all", "-k", "20")["results"]

    def count(results, name):
        return sum(group_of(groups, r["rel_path"]) == name for r in results)

    # the first result from another place: fewer of that place once it is unliked
    other = next(r["rel_path"] for r in base if group_of(groups, r["rel_path"]) != "fountain")
    place = group_of(groups, other)
    unliked = search(root, "--like", query, "--unlike", other, "--all", "-k", "20")["results"]
    assert other not in {r["rel_path"] for r in unliked}
    assert count(unliked, place) < count(base, place)
    castle = groups["castle"][0]
    liked = search(root, "--like", query, "--like", castle, "--all", "-k", "20")["results"]
    assert count(liked, "castle") > count(base, "castle")
    assert {query, castle}.isdisjoint({r["rel_path"] for r in liked})


def test_diverse_spreads_the_results(photos) -> None:
    root, groups = photos
    plain = search(root, "--like", CONFIDENT, "--all", "-k", "10")["results"]
    varied = search(root, "--like", CONFIDENT, "--all", "-k", "10", "--diverse", "0.3")["results"]

    def distinct(results):
        return len({group_of(groups, r["rel_path"]) for r in results})

    assert distinct(plain) == 1 and distinct(varied) > 2


def test_bad_values_are_refused_before_any_model_loads(photos, monkeypatch) -> None:
    import loupe.library

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loupe.library, "load_encoder", refuse)
    root, _ = photos
    for args, words in ((("--like", CONFIDENT, "--diverse", "2"), "--diverse"),
                        (("--like", "nowhere.jpg", "--like", CONFIDENT), "nowhere.jpg"),
                        (("--like", CONFIDENT, "--unlike", "gone.png"), "--unlike gone.png"),
                        (("--like", CONFIDENT, "--unlike", CONFIDENT), "both liked and unliked")):
        r = cli("search", *args, cwd=root)
        assert r.exit_code == 2, (args, r.stdout)
        assert words in r.stderr + r.stdout
    monkeypatch.setenv("LOUPE_ANSWERS", "cutoff:nope=1")
    r = cli("search", "--like", CONFIDENT, cwd=root)
    assert r.exit_code == 2 and "answers setting" in r.stderr


def test_feedback_from_the_python_api(photos) -> None:
    from loupe import Library

    root, groups = photos
    with Library.open(root / ".loupe") as lib:
        fountain = groups["fountain"]
        hits = lib.search(request=SearchRequest(liked=fountain[:2], k=5))
        assert all(group_of(groups, h.meta["rel_path"]) == "fountain" for h in hits)
        assert not {h.meta["rel_path"] for h in hits} & set(fountain[:2])


# --- loupe dups ---------------------------------------------------------------------------------


@pytest.fixture
def dup_photos(tmp_path):
    """Two Sacre Coeur photos with their 14 rotated and scaled copies each, a byte-identical
    copy of the first, and two unrelated Strecha views."""
    import shutil

    from tests.answers_data import SHARED_DATA, copy_sacre_group, histogram_library

    root = tmp_path / "photos"
    groups = {stem: copy_sacre_group(root, stem) for stem in (SACRE[0], SACRE[-1])}
    (root / "again").mkdir()
    shutil.copyfile(root / f"{SACRE[0]}.jpg", root / f"again/{SACRE[0]}.jpg")
    groups[SACRE[0]].append(f"again/{SACRE[0]}.jpg")
    for scene in ("fountain-P11", "castle-P19"):
        shutil.copyfile(SHARED_DATA / "strecha" / "scenes" / scene / "0000.jpg", root / f"{scene}.jpg")
    histogram_library(root).close()
    return root, groups


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file() and ".loupe" not in p.parts}


def dups_json(root: Path, *args: str) -> dict:
    r = cli("dups", *args, "--format", "json", cwd=root)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def names(report: dict, root: Path) -> list[set[str]]:
    return [{Path(m["path"]).relative_to(root).as_posix()
             for m in [g["representative"], *g["duplicates"]]} for g in report["groups"]]


def test_dups_finds_exact_and_embedding_groups(dup_photos, tmp_path) -> None:
    root, groups = dup_photos
    exact = {f"{SACRE[0]}.jpg", f"again/{SACRE[0]}.jpg"}
    found = names(dups_json(root), root)
    assert any(exact <= g for g in found)
    # every group by perceptual hash holds copies of one photo only
    assert all(any(g <= set(rels) for rels in groups.values()) for g in found)
    by_vectors = dups_json(root, "--method", "embedding:0.97")
    assert sorted(map(sorted, names(by_vectors, root))) == sorted(map(sorted, groups.values()))
    assert by_vectors["duplicates"] == sum(len(g) - 1 for g in groups.values())
    page = tmp_path / "sheet.html"
    r = cli("dups", "--method", "embedding:0.97", "--html", str(page), cwd=root)
    assert r.exit_code == 0 and "2 groups" in r.stdout
    assert "2 duplicate groups" in page.read_text()


def test_dups_move_is_a_dry_run_until_execute_and_undo_puts_back(dup_photos, tmp_path) -> None:
    root, groups = dup_photos
    before = snapshot(root)
    attic = tmp_path / "attic"
    dry = cli("dups", "--method", "embedding:0.97", "--move-to", str(attic), cwd=root)
    assert dry.exit_code == 0 and "dry run" in dry.stderr and "would do" in dry.stdout
    assert snapshot(root) == before and not attic.exists()
    journal = tmp_path / "journal.jsonl"
    done = dups_json(root, "--method", "embedding:0.97", "--move-to", str(attic), "--execute",
                     "--journal", str(journal))
    moved = [s for s in done["action"]["steps"] if s["outcome"] == "done"]
    assert len(moved) == sum(len(g) - 1 for g in groups.values())
    assert all(not Path(s["path"]).exists() and Path(s["target"]).is_file() for s in moved)
    r = cli("dups", "--undo", str(journal), cwd=root)
    assert r.exit_code == 0, r.stderr
    assert snapshot(root) == before


def test_dups_hardlink_and_undo(dup_photos, tmp_path) -> None:
    root, _ = dup_photos
    before = snapshot(root)
    journal = tmp_path / "links.jsonl"
    out = dups_json(root, "--hardlink", "--execute", "--journal", str(journal))
    linked = [s for s in out["action"]["steps"] if s["outcome"] == "done"]
    assert [Path(s["path"]).name for s in linked] == [f"{SACRE[0]}.jpg"]
    assert Path(linked[0]["path"]).samefile(linked[0]["target"])
    assert cli("dups", "--undo", str(journal), cwd=root).exit_code == 0
    assert snapshot(root) == before and os.stat(linked[0]["path"]).st_nlink == 1


def test_dups_refuses_bad_options_and_foreign_journals(dup_photos, tmp_path) -> None:
    root, _ = dup_photos
    before = snapshot(root)
    for args, words in ((("--method", "bogus"), "unknown"),
                        (("--method", "phash:70"), "Hamming"),
                        (("--method", "embedding:x"), "number"),
                        (("--execute",), "--execute does an action"),
                        (("--delete", "--hardlink"), "choose one action"),
                        (("--undo", str(tmp_path / "none.jsonl")), "no such journal")):
        r = cli("dups", *args, cwd=root)
        assert r.exit_code == 2 and words in r.stderr, (args, r.stderr)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"not in the library")
    journal = tmp_path / "forged.jsonl"
    journal.write_text(json.dumps({"state": "begin", "step": "1", "action": "delete",
                                   "path": str(outside), "target": None, "sha256": None,
                                   "size": 1, "keep": str(outside), "meta": {}}) + "\n")
    r = cli("dups", "--undo", str(journal), cwd=root)
    assert r.exit_code == 2 and "outside this library" in r.stderr
    assert snapshot(root) == before and outside.read_bytes() == b"not in the library"


# --- the API and the page -----------------------------------------------------------------------

TOKEN = "answers-token"


@pytest.fixture(scope="module")
def api(photos):
    from fastapi.testclient import TestClient

    from loupe import Library
    from loupe.server import create_app

    root, groups = photos
    lib = Library.open(root / ".loupe")
    with TestClient(create_app(lib, TOKEN)) as client:
        client.lib = lib
        yield client


def test_api_search_carries_confidence_groups_and_feedback(api, photos, monkeypatch) -> None:
    root, groups = photos
    monkeypatch.delenv("LOUPE_ANSWERS", raising=False)
    ids = {rel: api.lib.id_of_path(rel) for rel in (CONFIDENT, NO_MATCH)}
    out = api.get("/api/search", params={"like": ids[CONFIDENT], "k": 5}).json()
    assert out["confident"] is True
    first = out["results"][0]
    assert first["group"]["size"] == 15 and len(first["group"]["members"]) == 14
    assert all(m["thumb"].startswith("/api/images/") for m in first["group"]["members"])
    assert str(root) not in json.dumps(out)                 # no server paths
    none = api.get("/api/search", params={"like": ids[NO_MATCH]}).json()
    assert none["results"] == [] and none["confident"] is False
    every = api.get("/api/search", params={"like": ids[NO_MATCH], "all": "true", "k": 5}).json()
    assert len(every["results"]) == 5 and all(r["confidence"] < 2 for r in every["results"])
    fountain = [api.lib.id_of_path(r) for r in groups["fountain"][:2]]
    liked = api.get("/api/search", params={"liked": fountain, "all": "true", "k": 5}).json()
    assert {group_of(groups, r["rel_path"]) for r in liked["results"]} == {"fountain"}
    assert not {r["id"] for r in liked["results"]} & set(fountain)
    assert api.get("/api/search", params={"q": "x", "diverse": 2}).status_code == 422
    assert api.get("/api/search", params={"q": "x", "liked": 10**9}).status_code == 404


def test_api_dups_lists_groups_read_only(api, photos) -> None:
    root, groups = photos
    out = api.get("/api/dups", params={"method": "embedding:0.97"}).json()
    mine = next(g for g in out["groups"]
                if CONFIDENT in {g["keep"]["rel_path"], *(d["rel_path"] for d in g["duplicates"])})
    assert {mine["keep"]["rel_path"], *(d["rel_path"] for d in mine["duplicates"])} == set(groups[SACRE[0]])
    assert str(root) not in json.dumps(out)
    assert api.get("/api/dups", params={"method": "bogus"}).status_code == 400
    assert api.post("/api/dups").status_code == 405        # no actions over HTTP


@pytest.fixture(scope="module")
def live(photos):
    from types import SimpleNamespace

    from loupe import Library
    from loupe.server import create_app

    root, groups = photos
    lib = Library.open(root / ".loupe")
    with served(create_app(lib, TOKEN)) as url:
        yield SimpleNamespace(url=url, lib=lib, groups=groups)
    lib.close()


@pytest.fixture
def page(browser, live, request):  # noqa: F811 - browser: the imported fixture
    from tests.test_server_browser import ARTIFACTS, TIMEOUT_MS

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], errors


def shown(pg) -> list[str]:
    return pg.locator("#results li img").evaluate_all("els => els.map(e => e.alt)")


@pytest.mark.browser
def test_page_says_no_confident_match_then_shows_all(page, live) -> None:
    from playwright.sync_api import expect

    from tests.test_server_browser import SCREENSHOTS

    page.goto(f"{live.url}/?like={live.lib.id_of_path(NO_MATCH)}")
    expect(page.locator("#summary")).to_have_text("No confident match.")
    expect(page.locator("#answer-note")).to_contain_text("No confident match")
    expect(page.locator("#results li")).to_have_count(0)
    page.screenshot(path=str(SCREENSHOTS / "no-confident-match.png"))
    page.locator("#show-all").click()
    expect(page.locator("#results li")).to_have_count(30)
    expect(page.locator("#answer-note")).to_contain_text("Showing every result")
    assert "all=true" in page.url
    page.locator("#show-all").click()                       # back to confident results only
    expect(page.locator("#results li")).to_have_count(0)


@pytest.mark.browser
def test_page_group_badge_expands_the_copies(page, live) -> None:
    from playwright.sync_api import expect

    from tests.test_server_browser import SCREENSHOTS

    page.goto(f"{live.url}/?like={live.lib.id_of_path(CONFIDENT)}")
    badge = page.locator("#results li .group-badge").first
    expect(badge).to_have_text("+14 similar")
    expect(badge).to_have_attribute("aria-expanded", "false")
    before = len(shown(page))
    copies = set(live.groups[SACRE[0]]) - {CONFIDENT}
    assert not copies & set(shown(page)[1:])
    badge.click()
    expect(page.locator("#results li.member")).to_have_count(14)
    assert set(shown(page)[:15]) == copies                  # the members follow their card
    page.screenshot(path=str(SCREENSHOTS / "near-duplicate-group.png"))
    badge.click()
    expect(page.locator("#results li.member")).to_have_count(0)
    assert len(shown(page)) == before


@pytest.mark.browser
def test_page_thumbs_rerun_the_search_with_feedback(page, live) -> None:
    from playwright.sync_api import expect

    from tests.test_server_browser import SCREENSHOTS

    groups = live.groups
    query = groups["fountain"][0]
    page.goto(f"{live.url}/?like={live.lib.id_of_path(query)}&all=true")
    expect(page.locator("#results li")).to_have_count(30)
    castle = groups["castle"][0]
    before = sum(group_of(groups, p) == "castle" for p in shown(page)[:20])
    # a castle view among the results, liked: more castle views come up
    page.goto(f"{live.url}/?like={live.lib.id_of_path(query)}&all=true"
              f"&liked={live.lib.id_of_path(castle)}")
    expect(page.locator("#feedback")).to_contain_text("1 liked")
    after = sum(group_of(groups, p) == "castle" for p in shown(page)[:20])
    assert after > before and castle not in shown(page)
    # thumbs down on the first result: it leaves, and the address keeps the feedback
    first = page.locator("#results li").first
    name = first.locator("img").get_attribute("alt")
    first.locator("button.unlike").click()
    expect(page.locator("#feedback")).to_contain_text("1 disliked")
    expect(page.locator("#results li").first.locator("img")).not_to_have_attribute("alt", name)
    assert name not in shown(page) and "unliked=" in page.url
    page.screenshot(path=str(SCREENSHOTS / "relevance-feedback.png"))
    page.locator("#clear-feedback").click()
    expect(page.locator("#feedback")).to_be_hidden()


def test_text_queries_reuse_the_cached_caption_bank(photos) -> None:
    from loupe import Library
    from loupe.search.answers import text_bank

    root, _ = photos
    out = search(root, "a white church", "--all", "-k", "3")
    assert len(out["results"]) == 3 and all("confidence" in r for r in out["results"])
    assert list((root / ".loupe").rglob("text-bank-space*.npy"))

    def refuse(texts):
        raise AssertionError("the captions were encoded again")

    with Library.open(root / ".loupe") as lib:
        bank = text_bank(refuse, lib.store, lib.catalog.active_space())
        assert len(bank.vectors) == 1000 and bank.hubs is None


@pytest.mark.slow
def test_dups_verify_keeps_copies_and_drops_a_lookalike(tmp_path) -> None:
    """Spatial verification through the CLI: rotated and scaled copies stay grouped; another
    photo of the same church, close in colour, does not join them."""
    import shutil

    from tests.answers_data import SHARED_DATA

    root = tmp_path / "photos"
    root.mkdir()
    sacre = SHARED_DATA / "sacre_coeur"
    stem, other = SACRE[0], SACRE[1]
    for name, src in ((f"{stem}.jpg", sacre / "mapping" / f"{stem}.jpg"),
                      ("rot90.jpg", sacre / "mapping_rot" / f"{stem}_rot90.jpg"),
                      ("rot180.jpg", sacre / "mapping_rot" / f"{stem}_rot180.jpg"),
                      ("scale.jpg", sacre / "mapping_scale" / f"{stem}_scale0.5.jpg"),
                      ("other.jpg", sacre / "mapping" / f"{other}.jpg")):
        shutil.copyfile(src, root / name)
    histogram_library(root).close()
    loose = dups_json(root, "--method", "embedding:0.5")
    assert any("other.jpg" in g for g in names(loose, root))          # colour alone merges it
    verified = dups_json(root, "--method", "embedding:0.5", "--verify")
    assert names(verified, root) == [{f"{stem}.jpg", "rot90.jpg", "rot180.jpg", "scale.jpg"}]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_answers_search_a_read_only_library_without_writing(tmp_path) -> None:
    """The query banks are cached in the library when it can be written, and computed
    without being kept when it cannot: searches still answer, nothing is written."""
    from conftest import TINY, files_state, make_folder, make_read_only, run_as_nobody

    from loupe import Library

    root = tmp_path / "photos"
    make_folder(root, 5)
    Library.open(root / ".loupe", model=TINY, device="cpu").index()
    before = make_read_only(tmp_path, root / ".loupe")
    code = ("import json, sys; from loupe import Library\n"
            "from loupe.core.types import SearchRequest\n"
            "from loupe.search.answers import face_chain\n"
            "lib = Library.open(sys.argv[1], device='cpu')\n"
            "n = [len(lib.search(request=SearchRequest(k=3, rerank=face_chain(show_all=True), **q)))\n"
            "     for q in ({'like': 'img0001.png'}, {'text': 'a red bicycle'})]\n"
            "print(json.dumps(n))")
    r = run_as_nobody(code, str(root / ".loupe"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [3, 3]
    assert files_state(root / ".loupe") == before
