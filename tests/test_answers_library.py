"""The answer stages through the library's one pipeline: registered, chained, text banks given."""

from __future__ import annotations

from conftest import TINY, make_folder

from loupe import Library
from loupe.search import stages


def test_answer_stages_run_from_a_spec_on_text_and_image_queries(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 12)
    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    lib.index()
    chain = stages.get("cutoff:keep=true,hubness,mmr:lam=0.5")
    hits = lib.search("a red bicycle", k=5, rerank=chain)
    assert len(hits) == 5
    assert chain[0].text_bank is not None and chain[1].text_bank is chain[0].text_bank
    plain = {h.id for h in lib.search("a red bicycle", k=12)}
    assert {h.id for h in hits} <= plain
    assert len(lib.search(like="img0001.png", k=5, rerank="mmr:lam=0.3,hubness")) == 5
    # a cut-off that keeps nothing below its threshold answers with fewer, never with others
    strict = lib.search("a red bicycle", k=5, rerank="cutoff:threshold=50")
    assert strict == []
