"""loupe.dups: pairs per method against brute force, groups as connected components, the
representative, the report, and actions that are dry runs by default and reversible."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loupe import dups
from loupe.dups.find import Item, Options, hamming, representative_key
from loupe.search.stages.spatial import Spatial
from tests.conftest import make_image

# --- pairs per method ----------------------------------------------------------------------


def test_exact_pairs_by_content_hash() -> None:
    shas = ["a", "b", "a", None, "a", None, "b"]
    got = {tuple(p) for p in dups.exact_pairs(shas).tolist()}
    assert got == {(0, 2), (0, 4), (2, 4), (1, 6)}


def test_hamming_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(0, 2**63, 6, dtype=np.int64)]
    codes: list[int | None] = []
    for b in base:                       # each code with near variants (a few bits flipped)
        codes.append(b)
        for flips in (1, 5, 12):
            v = b
            for bit in rng.choice(64, flips, replace=False):
                v ^= 1 << int(bit)
            codes.append(v)
    codes[3] = None
    codes.append(codes[0])               # an identical hash: distance 0
    for limit in (0, 5, 12):
        pairs, dist = dups.hamming_pairs(codes, limit, chunk=7)
        expected = {(i, j): hamming(codes[i], codes[j]) for i in range(len(codes))
                    for j in range(i + 1, len(codes)) if codes[i] is not None
                    and codes[j] is not None and hamming(codes[i], codes[j]) <= limit}
        assert dict(zip(map(tuple, pairs.tolist()), dist.tolist(), strict=True)) == expected
        assert len(expected) > 0


def test_embedding_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs, cos = dups.embedding_pairs(x, 0.9, chunk=16)
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if float(x[i] @ x[j]) >= 0.9}
    assert {tuple(p) for p in pairs.tolist()} == expected and expected
    np.testing.assert_allclose(cos, [float(x[i] @ x[j]) for i, j in pairs], atol=1e-6)


# --- find: groups ----------------------------------------------------------------------------


def items_with(shas, phashes, sizes) -> list[Item]:
    return [Item(Path(f"/x/{i}.jpg"), sha256=s, size=z, width=10, height=10, phash=p)
            for i, (s, p, z) in enumerate(zip(shas, phashes, sizes, strict=True))]


def test_groups_are_connected_components_of_pairs_from_any_method() -> None:
    # 0 == 1 by content; 1 ~ 2 by pHash (distance 1); 2 ~ 3 by embedding; 4, 5 alone;
    # 0 and 3 share no evidence, yet one group holds 0..3.
    items = items_with(["s0", "s0", "s2", "s3", "s4", "s5"],
                       [0b0, 0b0, 0b1, 0xFFFF, 0xFF00FF, 0xF0F0F0F0F0],
                       [100, 100, 300, 50, 70, 90])
    vectors = np.eye(6, dtype=np.float32)
    vectors[3] = vectors[2]
    result = dups.find(items, vectors, Options(phash=1, embedding=0.99))
    assert result.groups == [[2, 0, 1, 3]]           # largest file first (300 bytes)
    assert {(p.a, p.b): p.methods for p in result.pairs} == {
        (0, 1): ("exact", "phash"), (0, 2): ("phash",), (1, 2): ("phash",),
        (2, 3): ("embedding",)}
    only_exact = dups.find(items, vectors, Options(phash=None))
    assert only_exact.groups == [[0, 1]]


def test_representative_is_the_largest_file_then_more_pixels_then_path() -> None:
    a = Item(Path("/b.jpg"), size=10, width=5, height=5)
    b = Item(Path("/a.jpg"), size=10, width=5, height=5)
    c = Item(Path("/c.jpg"), size=10, width=9, height=9)
    d = Item(Path("/d.jpg"), size=11, width=1, height=1)
    assert sorted([a, b, c, d], key=representative_key) == [d, c, b, a]


def test_scan_files_reads_hashes_and_keeps_undecodable_files(tmp_path: Path) -> None:
    one = make_image(tmp_path / "one.png", seed=1, size=(128, 96))
    copy = tmp_path / "sub" / "copy.png"
    copy.parent.mkdir()
    shutil.copyfile(one, copy)
    smaller = tmp_path / "smaller.jpg"
    Image.open(one).convert("RGB").resize((64, 48)).save(smaller, quality=90)
    other = make_image(tmp_path / "other.png", seed=2, size=(128, 96))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    broken2 = tmp_path / "broken2.jpg"
    shutil.copyfile(broken, broken2)
    items = dups.scan_files([one, copy, smaller, other, broken, broken2])
    assert items[0].sha256 == items[1].sha256 != items[2].sha256
    assert items[4].error and items[4].sha256 and items[4].phash is None
    assert items[0].width == 128 and items[0].size == one.stat().st_size
    assert hamming(items[0].phash, items[2].phash) <= 4 < hamming(items[0].phash, items[3].phash)
    result = dups.find(items, options=Options(phash=6))
    assert sorted(sorted(g) for g in result.groups) == [[0, 1, 2], [4, 5]]


def test_verification_keeps_the_copy_and_drops_the_lookalike(shared_data: Path) -> None:
    originals = sorted((shared_data / "sacre_coeur" / "mapping").glob("*.jpg"))[:2]
    rotated = shared_data / "sacre_coeur" / "mapping_rot" / f"{originals[0].stem}_rot90.jpg"
    items = dups.scan_files([originals[0], rotated, originals[1]])
    vectors = np.ones((3, 4), np.float32) / 2                 # every pair a candidate
    loose = dups.find(items, vectors, Options(phash=None, embedding=0.5))
    assert loose.groups == [[0, 1, 2]] or sorted(loose.groups[0]) == [0, 1, 2]
    small = Spatial(max_side=512, max_keypoints=500)          # cheaper than the default
    strict = dups.find(items, vectors, Options(phash=None, embedding=0.5, verify=True),
                       spatial=small)
    assert [sorted(g) for g in strict.groups] == [[0, 1]]
    kept = strict.pairs[0]
    assert (kept.a, kept.b) == (0, 1) and kept.inliers >= 15
    assert kept.inliers >= 0.95 * kept.matches
    assert strict.candidates == 3 and len(strict.pairs) == 1


# --- report ----------------------------------------------------------------------------------


def small_result(tmp_path: Path) -> dups.Result:
    a = make_image(tmp_path / "keep <me>.png", seed=3, size=(120, 90))
    b = tmp_path / "dup.png"
    shutil.copyfile(a, b)
    c = make_image(tmp_path / "alone.png", seed=4)
    big = tmp_path / "keep <me>.png"
    with open(big, "ab") as fh:                 # the same pixels, a larger file: representative
        fh.write(b"\0" * 10)
    items = dups.scan_files([b, big, c])
    return dups.find(items, options=Options(exact=False, phash=0))


def test_report_json_and_contact_sheet(tmp_path: Path) -> None:
    result = small_result(tmp_path)
    report = json.loads(json.dumps(dups.to_json(result)))
    assert len(report["groups"]) == 1
    group = report["groups"][0]
    assert group["representative"]["path"].endswith("keep <me>.png")
    assert [d["path"] for d in group["duplicates"]] == [str(tmp_path / "dup.png")]
    assert group["pairs"][0]["methods"] == ["phash"] and group["pairs"][0]["phash"] == 0
    assert report["reclaimable_bytes"] == (tmp_path / "dup.png").stat().st_size
    page = dups.contact_sheet(result, tmp_path / "sheet.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2
    assert "keep &lt;me&gt;.png" in page and "keep <me>" not in page
    linked = dups.contact_sheet(result, tmp_path / "out" / "linked.html", embed=False).read_text()
    assert 'src="../keep%20%3Cme%3E.png"' in linked


# --- actions ----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (
            p.is_dir(), p.read_bytes() if p.is_file() else None,
            st.st_mode, st.st_mtime_ns if p.is_file() else None)
    return out


@pytest.fixture
def library_folder(tmp_path: Path) -> tuple[Path, dups.Result]:
    root = tmp_path / "photos"
    a = make_image(root / "a.png", seed=5, size=(120, 90))
    make_image(root / "solo.png", seed=6)
    for rel in ("x/a-copy.png", "x/y/a-copy2.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, root / rel)
        os.utime(root / rel, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.chmod(root / "x/a-copy.png", 0o640)
    near = root / "near.png"
    Image.open(a).save(near, compress_level=1)      # the same pixels, other bytes (larger)
    items = dups.scan_files(sorted(p for p in root.rglob("*.png")))
    result = dups.find(items, options=Options(phash=0))
    assert len(result.groups) == 1 and len(result.groups[0]) == 4
    return root, result


def test_actions_are_a_dry_run_by_default(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    before = snapshot(root)
    for action, kwargs in (("move", {"move_to": tmp_path / "attic"}), ("hardlink", {}),
                           ("delete", {})):
        ops = dups.plan(result, action, **kwargs)
        assert len(ops) == 3
        done = dups.execute(ops)
        assert all(op.outcome in ("would do", f"skip: {op.skip}") for op in done)
        assert "would do" in {op.outcome for op in done}
        assert dups.describe(done)
    assert snapshot(root) == before
    assert not (tmp_path / "attic").exists()
    with pytest.raises(ValueError, match="journal"):
        dups.execute(dups.plan(result, "delete"), dry_run=False)


def test_move_and_undo_restore_everything_exactly(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    before = snapshot(root)
    attic = tmp_path / "attic"
    journal = tmp_path / "journal.jsonl"
    done = dups.execute(dups.plan(result, "move", move_to=attic), journal, dry_run=False)
    assert [op.outcome for op in done] == ["done"] * 3
    moved = {Path(op.path).relative_to(root).as_posix() for op in done}
    keep = Path(result.items[result.groups[0][0]].path).relative_to(root).as_posix()
    assert keep not in moved and len(moved) == 3
    for rel in moved:
        assert not (root / rel).exists() and (attic / rel).is_file()
    report = dups.undo(journal)
    assert [r["outcome"] for r in report] == ["restored"] * 3
    assert snapshot(root) == before
    assert not attic.exists() or not any(attic.rglob("*"))
    assert [r["outcome"] for r in dups.undo(journal)] == ["nothing to undo"] * 3


def test_hardlink_and_undo_restore_everything_exactly(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    before = snapshot(root)
    journal = tmp_path / "journal.jsonl"
    ops = dups.plan(result, "hardlink")
    # The representative is near.png (the largest file: the same pixels, other bytes): it is
    # left alone; a.png is the first of the identical copies, which are linked to it.
    assert Path(ops[0].keep).name == "near.png"
    assert {Path(op.path).name: op.skip is None for op in ops} == {
        "a.png": False, "a-copy.png": True, "a-copy2.png": True}
    keep = root / "a.png"
    done = dups.execute(ops, journal, dry_run=False)
    linked = [op for op in done if op.outcome == "done"]
    assert len(linked) == 2 and all(Path(op.path).samefile(keep) for op in linked)
    assert dups.undo(journal) == [{"path": op.path, "action": "hardlink", "outcome": "restored"}
                                  for op in reversed(linked)]
    assert snapshot(root) == before
    assert all(Path(op.path).stat().st_nlink == 1 for op in linked)


def test_delete_is_journalled_but_not_reversible(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    journal = tmp_path / "journal.jsonl"
    done = dups.execute(dups.plan(result, "delete"), journal, dry_run=False)
    assert all(op.outcome == "done" and not Path(op.path).exists() for op in done)
    assert Path(done[0].keep).exists()
    assert {r["outcome"] for r in dups.undo(journal)} == {"not restorable: deleted"}


def test_a_file_changed_since_planning_is_left_alone(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    ops = dups.plan(result, "delete")
    victim = Path(ops[0].path)
    victim.write_bytes(victim.read_bytes() + b"changed")
    done = dups.execute(ops, tmp_path / "journal.jsonl", dry_run=False)
    assert done[0].outcome == "skip: changed since it was planned" and victim.exists()
    assert all(op.outcome == "done" for op in done[1:])


def test_undo_after_an_interruption(library_folder, tmp_path: Path) -> None:
    root, result = library_folder
    before = snapshot(root)
    journal = tmp_path / "journal.jsonl"
    dups.execute(dups.plan(result, "move", move_to=tmp_path / "attic"), journal, dry_run=False)
    # Cut the journal after the last step's "begin": the step ran, its "done" never got written.
    lines = journal.read_text().splitlines()
    assert json.loads(lines[-1])["state"] == "done"
    journal.write_text("\n".join(lines[:-1]) + "\n")
    assert [r["outcome"] for r in dups.undo(journal)] == ["restored"] * 3
    assert snapshot(root) == before


def test_find_in_library(tmp_path: Path, tiny: str) -> None:
    import loupe

    root = tmp_path / "photos"
    a = make_image(root / "a.png", seed=7, size=(96, 80))
    shutil.copyfile(a, root / "a-copy.png")
    make_image(root / "b.png", seed=8)
    make_image(root / "c.png", seed=9)
    lib = loupe.Library.open(root / ".loupe", model=tiny, device="cpu")
    lib.index()
    result = dups.find_in_library(lib, Options(phash=None, embedding=0.999))
    assert [[result.items[i].path.name for i in g] for g in result.groups] == \
        [["a-copy.png", "a.png"]] or [[result.items[i].path.name for i in g]
                                      for g in result.groups] == [["a.png", "a-copy.png"]]
    assert all(result.items[i].id is not None for i in result.groups[0])
    hashed = dups.find_in_library(lib, Options(phash=0))
    assert [sorted(result.items[i].path.name for i in g) for g in hashed.groups] == \
        [["a-copy.png", "a.png"]]
