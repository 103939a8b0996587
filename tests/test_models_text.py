"""Text towers: run only as long as the text where that is exact, a torch-free tokenizer, the
query cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY

from loupe.models.openclip import can_cut_text, load_encoder
from loupe.models.text import ClipTokenizer, TextCache, pad

TEXTS = [
    "a photo of a cat",
    "red car",
    "",
    "x",
    "the facade of an old church with a fountain in front of it, photographed at dusk " * 2,
    "mountains " * 80,  # longer than any context: cut, the last token stays end-of-text
    "東京タワーの写真 & café",
]


@pytest.fixture(scope="module")
def extra_configs(tmp_path_factory):
    """Tiny variants: the text tower inside a CustomTextCLIP (causal), and a bidirectional
    tower with last-token pooling (SigLIP-style), where cutting the ids is not exact."""
    import open_clip

    from loupe.models.openclip import CONFIG_DIR, _register_configs

    _register_configs()
    base = json.loads((CONFIG_DIR / "loupe-tiny.json").read_text())
    folder = tmp_path_factory.mktemp("configs")
    custom = {**base, "custom_text": True}
    bidir = {**base, "text_cfg": {**base["text_cfg"], "no_causal_mask": True, "pool_type": "last"}}
    (folder / "loupe-tiny-custom.json").write_text(json.dumps(custom))
    (folder / "loupe-tiny-bidir.json").write_text(json.dumps(bidir))
    open_clip.add_model_config(folder)
    return folder


@pytest.mark.parametrize("arch", ["loupe-tiny", "loupe-tiny-custom", "ViT-B-32"])
def test_text_tower_cut_after_end_of_text_is_exact(arch, extra_configs):
    enc = load_encoder(f"{arch}:random", device="cpu", towers=("text",))
    ctx = enc.tokenizer.context_length
    assert enc.cut_text is not None
    ids = enc.tokens(TEXTS)
    assert ids.shape[1] == ctx  # the long text fills the context
    short = enc.tokens(TEXTS[:4])
    assert short.shape[1] == 7 < ctx  # "a photo of a cat": 5 tokens + start and end
    cut = enc.encode_text(TEXTS[:4] + TEXTS[6:])
    padded = enc.encode_text_padded(TEXTS[:4] + TEXTS[6:])
    assert np.abs(cut - padded).max() < 1e-5
    # one text at a time: every query runs on its own length
    for t in TEXTS:
        assert np.abs(enc._text_features([t]) / np.linalg.norm(enc._text_features([t]))
                      - enc.encode_text_padded([t])[0]).max() < 1e-5


def test_towers_where_cutting_is_not_exact_are_padded(extra_configs):
    enc = load_encoder("loupe-tiny-bidir:random", device="cpu", towers=("text",))
    assert not can_cut_text(enc.model)
    assert enc.cut_text is None
    assert enc.tokens(["red car"]).shape[1] == enc.tokenizer.context_length
    assert np.array_equal(enc.encode_text(TEXTS), enc.encode_text_padded(TEXTS))
    causal = load_encoder(TINY, device="cpu", towers=("text",))
    assert can_cut_text(causal.model)
    # turning the cut off gives padded ids
    off = load_encoder(TINY, device="cpu", towers=("text",), truncate_text=False)
    assert off.cut_text is None and off.tokens(["red car"]).shape[1] == 32


def test_torch_free_tokenizer_gives_open_clip_ids(tmp_path):
    import open_clip
    from open_clip.tokenizer import default_bpe

    ref = open_clip.get_tokenizer("ViT-B-32")
    ours = ClipTokenizer(default_bpe(), 77)
    texts = TEXTS + ["  Hello,   WORLD!! ", "naïve café — 東京 🗼 &amp; &lt;b&gt;", "don't 1234",
                     "schön Ümlaut ÆØÅ", "mojibake: Ã©tÃ©", "<start_of_text> <end_of_text>"]
    want = ref(texts).numpy()
    got = pad(ours(texts), 77)
    assert np.array_equal(got, want)
    assert ours(["mountains " * 80])[0][-1] == ours.eot_id and len(ours(["mountains " * 80])[0]) == 77


def test_query_cache_computes_each_text_once():
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return np.stack([np.full(4, len(t), np.float32) for t in texts])

    cache = TextCache(size=2)
    a = cache.lookup(["red car"], compute)
    b = cache.lookup(["red car", "blue"], compute)
    assert calls == [["red car"], ["blue"]]
    assert np.array_equal(a[0], b[0]) and b[1][0] == 4
    b[0][:] = -1  # callers get copies: the cache is not changed through them
    assert cache.lookup(["red car"], compute)[0][0] == 7
    cache.lookup(["third"], compute)  # evicts the least recently used ("blue")
    cache.lookup(["blue"], compute)
    assert calls[-1] == ["blue"] and cache.hits == 2


def test_encoder_uses_the_query_cache():
    enc = load_encoder(TINY, device="cpu", towers=("text",))
    seen = []
    real = enc._text_features
    enc._text_features = lambda texts: (seen.append(list(texts)), real(texts))[1]
    first = enc.encode_text(["red car", "a photo of a cat"])
    again = enc.encode_text(["a photo of a cat", "red car"])
    assert seen == [["red car", "a photo of a cat"]]
    assert np.array_equal(first[::-1], again)
