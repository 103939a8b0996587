"""A cold text query: ONNX Runtime's saved optimised graph (equal outputs, rebuilt when the
export changes, refused when it differs), the tokenizer's shortcuts (exact), and a fresh
`loupe search` process that loads neither torch, faiss nor ftfy."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, TINY, make_folder

from loupe.models import ortcache
from loupe.models.text import _PLAIN, ClipTokenizer, _fix_text, pad


def tiny_text_graph(path: Path, seed: int = 0, vocab: int = 500, width: int = 64) -> Path:
    """A text-tower-shaped graph: ids [n, L] -> embedding -> MatMul -> Gelu -> MatMul -> mean
    over the sequence [n, width], weights random (MatMul weights are what ORT pre-packs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(vocab, width)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(size=(width, 4 * width)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4 * width, width)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["x"]),
             helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"]),
             helper.make_node("ReduceMean", ["y", "axis"], ["out"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "L"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def ids(seed: int, n: int = 3, length: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 500, size=(n, length), dtype=np.int64)


def run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"ids": x})[0]


def saved_folders(model: Path) -> list[Path]:
    return sorted(p for p in (model.parent / ortcache.SUBDIR).glob(f"{model.stem}-*"))


def test_the_saved_graph_gives_the_same_outputs_and_is_used_next_time(tmp_path):
    model = tiny_text_graph(tmp_path / "textual.onnx")
    plain = ort.InferenceSession(str(model), options(), providers=["CPUExecutionProvider"])
    first = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    [folder] = saved_folders(model)
    assert json.loads((folder / "ok.json").read_text())["ok"] is True
    assert (folder / "model.onnx.data").stat().st_size > 0      # weights beside the graph
    second = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    assert Path(second._model_path) == folder / "model.onnx"     # loaded from the saved graph
    for seed, length in [(1, 1), (2, 7), (3, 77)]:
        x = ids(seed, length=length)
        want = run(plain, x)
        assert np.array_equal(run(first, x), want) and np.array_equal(run(second, x), want)


def test_the_saved_graph_runs_with_the_callers_threads_and_spinning(tmp_path):
    model = tiny_text_graph(tmp_path / "textual.onnx")
    opts = options()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ortcache.cached_session(model, opts, probe=lambda: ids(0))
    saved = ortcache.cached_session(model, opts, probe=lambda: ids(0))
    assert saved._model_path.endswith("model.onnx") and Path(saved._model_path) != model
    got = saved.get_session_options()
    assert got.intra_op_num_threads == 1
    assert got.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert got.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_a_changed_export_gets_a_new_saved_graph(tmp_path):
    model = tiny_text_graph(tmp_path / "textual.onnx", seed=0)
    ortcache.cached_session(model, options(), probe=lambda: ids(0))
    [old] = saved_folders(model)
    tiny_text_graph(model, seed=1)                                # the export is replaced
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    again = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    [new] = saved_folders(model)
    assert new != old and not old.exists()                        # the stale graph is gone
    plain = ort.InferenceSession(str(model), options(), providers=["CPUExecutionProvider"])
    reloaded = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    assert Path(reloaded._model_path) == new / "model.onnx"
    x = ids(5)
    assert np.array_equal(run(again, x), run(plain, x))
    assert np.array_equal(run(reloaded, x), run(plain, x))


def test_a_saved_graph_that_differs_is_refused(tmp_path, monkeypatch):
    model = tiny_text_graph(tmp_path / "textual.onnx", seed=0)
    other = tiny_text_graph(tmp_path / "other.onnx", seed=1)
    real = ort.InferenceSession

    def swapped(path, *args, **kwargs):  # the saved graph, as read back, computes something else
        if Path(path).name == "model.onnx":
            path = str(other)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", swapped)
    session = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    monkeypatch.setattr(ort, "InferenceSession", real)
    [folder] = saved_folders(model)
    verdict = json.loads((folder / "refused.json").read_text())
    assert verdict["ok"] is False and "differ" in verdict["why"]
    assert not list(folder.glob("model.onnx*"))                   # nothing kept to load
    plain = real(str(model), options(), providers=["CPUExecutionProvider"])
    later = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    assert Path(later._model_path) == model                       # the plain graph, no retry
    x = ids(3)
    assert np.array_equal(run(session, x), run(plain, x))
    assert np.array_equal(run(later, x), run(plain, x))


def test_a_damaged_saved_graph_is_rebuilt(tmp_path):
    model = tiny_text_graph(tmp_path / "textual.onnx")
    ortcache.cached_session(model, options(), probe=lambda: ids(0))
    [folder] = saved_folders(model)
    (folder / "model.onnx").write_bytes(b"not a graph")
    session = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    plain = ort.InferenceSession(str(model), options(), providers=["CPUExecutionProvider"])
    assert np.array_equal(run(session, ids(4)), run(plain, ids(4)))
    assert (folder / "ok.json").exists()
    again = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    assert Path(again._model_path) == folder / "model.onnx"


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_ORT_CACHE", "0")
    model = tiny_text_graph(tmp_path / "textual.onnx")
    session = ortcache.cached_session(model, options(), probe=lambda: ids(0))
    assert Path(session._model_path) == model and not (tmp_path / ortcache.SUBDIR).exists()


# --- the tokenizer's shortcuts ---------------------------------------------------------------------
PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def test_ftfy_is_skipped_only_where_it_changes_nothing():
    import ftfy

    rng = random.Random(0)
    texts = ["".join(p) for p in itertools.product(PRINTABLE, repeat=2)]
    texts += ["".join(rng.choice(PRINTABLE) for _ in range(rng.randint(0, 80))) for _ in range(5000)]
    skipped = [t for t in texts if _PLAIN.fullmatch(t)]
    assert len(skipped) > 9000                                   # the shortcut is taken ...
    assert all(ftfy.fix_text(t) == t for t in skipped)           # ... where ftfy is the identity
    for text in ["&amp;amp;", "caf\u00e9", "a\x1b[31mred", "line\r\nbreak", "\u201cquoted\u201d"]:
        assert not _PLAIN.fullmatch(text)
        assert _fix_text(text) == ftfy.fix_text(text)


def test_the_tokenizer_still_gives_open_clip_ids_on_many_texts():
    import open_clip
    from open_clip.tokenizer import default_bpe

    ref = open_clip.get_tokenizer("ViT-B-32")
    ours = ClipTokenizer(default_bpe(), 77)
    rng = random.Random(1)
    words = ["cat", "a", "photo", "of", "château", "naïve", "東京", "&amp;", "don't", "x1234",
             "Hello!!", "über", "\t", "ﬁsh", "\u201cquoted\u201d", "Ã©tÃ©", "🗼"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(300)]
    texts += ["".join(rng.choice(PRINTABLE) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    assert np.array_equal(pad(ours(texts), 77), ref(texts).numpy())


def test_the_parsed_merges_are_kept_and_refreshed_when_the_vocabulary_changes(tmp_path):
    import gzip
    import shutil

    from open_clip.tokenizer import default_bpe

    vocab = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copyfile(default_bpe(), vocab)
    cache = tmp_path / "bpe.merges"
    texts = ["a photo of a cat", "naïve café 東京 &amp;", "mountains " * 80, ""]
    plain = ClipTokenizer(vocab)
    first = ClipTokenizer(vocab, cache=cache)        # parses, writes the cache
    assert cache.exists() and first.ranks == plain.ranks
    second = ClipTokenizer(vocab, cache=cache)       # reads it back
    assert second(texts) == first(texts) == plain(texts) and second.ids == plain.ids
    # a vocabulary whose first merge is dropped: ranks shift, the cache must not answer
    lines = gzip.decompress(vocab.read_bytes()).decode().split("\n")
    vocab.write_bytes(gzip.compress("\n".join([lines[0], *lines[2:]]).encode()))
    changed = ClipTokenizer(vocab, cache=cache)
    assert changed.ranks == ClipTokenizer(vocab).ranks != plain.ranks
    cache.write_bytes(b"damaged")                   # a damaged cache is parsed again
    assert ClipTokenizer(vocab, cache=cache).ranks == changed.ranks


# --- a fresh `loupe search` process -------------------------------------------------------------------
SEARCH = """
import json, sys
from loupe.cli import main
sys.argv = ["loupe", "search", "a red car", "--library", sys.argv[1], "--all", "--format", "json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = {m: m in sys.modules for m in ("torch", "open_clip", "ftfy", "faiss.swigfaiss")}
print(json.dumps(loaded))
"""


@pytest.mark.slow  # 30 s: an export; tests/test_core_spaces.py checks the same through Library
def test_a_cold_search_uses_the_saved_graph_and_imports_only_what_it_needs(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 6)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOUPE_MODEL_CACHE": str(tmp_path / "models")}
    env.pop("LOUPE_BACKEND", None)   # the default: the exported towers on ONNX Runtime
    index = subprocess.run([sys.executable, "-m", "loupe.cli", "index", str(root), "--model", TINY,
                            "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert index.returncode == 0, index.stderr
    runs = [subprocess.run([sys.executable, "-c", SEARCH, str(root / ".loupe")], env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    saved = list((tmp_path / "models").glob(f"*/{ortcache.SUBDIR}/textual-*/ok.json"))
    assert len(saved) == 1                                        # saved by the first query
    results = [json.loads("\n".join(r.stdout.strip().splitlines()[:-1])) for r in runs]
    assert results[0] == results[1] and len(results[0]["results"]) == 6
    loaded = json.loads(runs[1].stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "open_clip": False, "ftfy": False, "faiss.swigfaiss": False}


def test_the_text_tower_from_the_saved_graph_equals_the_plain_one(tmp_path, monkeypatch):
    from loupe.models import load_encoder
    from loupe.models.onnx import load_exported

    towers = ("text",)
    monkeypatch.delenv("LOUPE_BACKEND", raising=False)
    enc = load_encoder(TINY, device="cpu", backend="onnxruntime", towers=towers,
                       cache_dir=tmp_path)
    folder = Path(enc.report["folder"])
    texts = ["a photo of a cat", "red car", "", "mountains " * 80, "東京タワーの写真 & café"]
    cached = load_exported(folder, towers=towers)
    assert Path(cached.text_tower.session._model_path).parent.parent.name == ortcache.SUBDIR
    monkeypatch.setenv("LOUPE_ORT_CACHE", "0")
    plain = load_exported(folder, towers=towers)
    assert Path(plain.text_tower.session._model_path) == folder / "textual.onnx"
    assert np.array_equal(cached.encode_text(texts), plain.encode_text(texts))
    assert np.array_equal(enc.encode_text(texts), plain.encode_text(texts))
