"""Learned rerankers (ITM cross-encoder, VLM judge) with tiny random-weight transformers models
built offline, saved with `save_pretrained` and loaded back through the real loading path;
scores checked against each model's own forward pass, computed by hand here."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loupe.core.errors import ModelError
from loupe.core.types import Candidates, Query
from loupe.search.stages import itm as itm_module
from loupe.search.stages import vlm as vlm_module
from loupe.search.stages.itm import ITM, MatchModel, MissingExtra, score_pairs
from loupe.search.stages.vlm import VLM, grid_image
from loupe.storage.memory import MemoryStore

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    BertTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

WORDS = ["a", "photo", "of", "red", "bird", "blue", "thing", "green", "make", "it"]


def spread_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights large enough that the output depends on the image (the default
    initialisation of a tiny model gives nearly constant scores, which no test could tell apart)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def noise_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(cells).resize(size, Image.Resampling.NEAREST).save(path)
    return path


def gallery(folder: Path, n: int, cache: Path) -> tuple[MemoryStore, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [noise_image(folder / f"g{i}.png", seed=i) for i in range(n)]
    return MemoryStore(paths, np.eye(n, 4, dtype=np.float32), cache), paths


def head(n: int) -> Candidates:
    return Candidates(np.arange(n), np.linspace(0.9, 0.5, n))


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# -- tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BLIP ITM model with random weights and a BERT word-piece vocabulary, saved to disk."""
    folder = tmp_path_factory.mktemp("blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(vocab)))
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": 5 + len(WORDS), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "encoder_hidden_size": 32,
                     "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 2,
                     "sep_token_id": 3},
        projection_dim=16, image_text_hidden_size=16)
    model = spread_weights(BlipForImageTextRetrieval(config), seed=1)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


VLM_VOCAB = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>", "yes", "no", "1", "2", "3", "user:",
             "assistant:", "Does", "this", "image", "match", "the", "description:", "Answer", "or",
             "a", "red", "bird?", "first", "second", "reference", "photo", "which", "best"]
CHAT = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaVA (CLIP vision tower + Llama) with random weights and a word-level tokenizer whose
    vocabulary holds 'yes' and 'no' (and no capitalised or spaced variants), saved to disk."""
    folder = tmp_path_factory.mktemp("llava") / "model"
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VLM_VOCAB)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
        chat_template=CHAT, image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(VLM_VOCAB), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=256, pad_token_id=0, bos_token_id=2,
                                eos_token_id=3),
        image_token_index=4, vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = spread_weights(LlavaForConditionalGeneration(config), seed=2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# -- ITM ------------------------------------------------------------------------------------------


def blip_reference(model_dir: Path, images: list[Image.Image], text: str) -> np.ndarray:
    """P(match) by the model's own forward pass, image and text together."""
    model = BlipForImageTextRetrieval.from_pretrained(model_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        return np.array([
            model(**processor(images=im, text=text, return_tensors="pt")).itm_score.softmax(-1)[0, 1]
            for im in images])


def test_itm_score_is_the_models_match_probability(tmp_path: Path, blip_dir: Path) -> None:
    store, paths = gallery(tmp_path / "g", 5, tmp_path / "cache")
    itm = ITM(model=str(blip_dir), device="cpu", cache_dtype="float32")
    out = itm.rerank(Query(vector=np.ones(4, np.float32), text="a red bird"), head(5), store)

    expected = blip_reference(blip_dir, [rgb(p) for p in paths], "a red bird")
    assert np.diff(np.sort(expected)).min() > 1e-4         # the images are told apart
    assert out.ids.tolist() == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose(out.scores, expected[out.ids], atol=1e-5)
    t = itm.timings
    assert (t["candidates"], t["images_encoded"], t["images_cached"]) == (5, 5, 0)
    assert t["ms_per_candidate"] > 0 and t["text_s"] > 0


def test_itm_image_side_is_cached_by_file_content(tmp_path: Path, blip_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, paths = gallery(tmp_path / "g", 3, tmp_path / "cache")
    query = Query(vector=np.ones(4, np.float32), text="blue thing")
    itm = ITM(model=str(blip_dir), device="cpu", cache_dtype="float32")
    first = itm.rerank(query, head(3), store)

    folders = [p for p in (tmp_path / "cache" / "store").iterdir() if p.name.startswith("itm-")]
    assert len(folders) == 1
    names = sorted(f.stem for f in folders[0].rglob("*.npy"))
    assert names == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)

    # Again: only the text side runs (the vision tower would raise).
    def no_vision(*args, **kwargs):
        raise AssertionError("the image side ran again")

    monkeypatch.setattr(MatchModel, "image_tokens", no_vision)
    second = itm.rerank(query, head(3), store)
    assert second.ids.tolist() == first.ids.tolist()
    np.testing.assert_array_equal(second.scores, first.scores)
    assert itm.timings["images_cached"] == 3 and "images_encoded" not in itm.timings

    # A moved copy of a photo in another gallery reuses the entry: same bytes, same key.
    moved = tmp_path / "elsewhere" / "renamed.png"
    moved.parent.mkdir()
    shutil.copy(paths[1], moved)
    other = MemoryStore([moved], np.eye(1, 4, dtype=np.float32), tmp_path / "cache")
    copy_out = itm.rerank(query, head(1), other)
    np.testing.assert_array_equal(copy_out.scores, first.scores[first.ids.tolist().index(1)])
    monkeypatch.undo()

    # An edited photo is encoded again.
    noise_image(paths[2], seed=99)
    itm.rerank(query, head(3), store)
    assert (itm.timings["images_cached"], itm.timings["images_encoded"]) == (2, 1)


def test_itm_half_precision_cache_stays_close(tmp_path: Path, blip_dir: Path) -> None:
    store, paths = gallery(tmp_path / "g", 4, tmp_path / "cache")
    query = Query(vector=np.ones(4, np.float32), text="green photo")
    full = ITM(model=str(blip_dir), device="cpu", cache_dtype="float32").rerank(query, head(4), store)
    half = ITM(model=str(blip_dir), device="cpu").rerank(query, head(4), store)
    by_id = dict(zip(full.ids.tolist(), full.scores.tolist(), strict=True))
    np.testing.assert_allclose(half.scores, [by_id[i] for i in half.ids.tolist()], atol=5e-3)
    assert len({p.parent.parent.name for p in (tmp_path / "cache").rglob("*.npy")}) == 2


def test_itm_leaves_queries_without_text_alone(tmp_path: Path, blip_dir: Path) -> None:
    store, paths = gallery(tmp_path / "g", 2, tmp_path / "cache")
    cands = head(2)
    out = ITM(model=str(blip_dir), device="cpu").rerank(
        Query(vector=np.ones(4, np.float32), image=rgb(paths[0])), cands, store)
    assert out is cands


def test_blip2_match_equals_its_forward() -> None:
    config = transformers.Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        qformer_config={"vocab_size": 20, "hidden_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32, "max_position_embeddings": 64,
                        "use_qformer_text_input": True},
        num_query_tokens=4, image_text_hidden_size=16)
    model = spread_weights(transformers.Blip2ForImageTextRetrieval(config), seed=3)
    matcher = MatchModel(model, processor=None)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    mask = torch.ones_like(ids)
    ours = matcher.match(matcher.image_tokens(pixels), ids, mask).numpy()
    with torch.no_grad():
        theirs = model(pixel_values=pixels, input_ids=ids.expand(3, -1), attention_mask=mask.expand(3, -1),
                       use_image_text_matching_head=True).logits_per_image.softmax(-1)[:, 1].numpy()
    assert np.ptp(theirs) > 1e-3
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_itm_reranks_inquire_through_the_eval_harness(tmp_path: Path, blip_dir: Path) -> None:
    from loupe.eval import inquire
    from loupe.eval.common import Embedder, EvalOptions
    from loupe.eval.metrics import ap_at_k_scored
    from loupe.eval.testing import ColorEncoder

    root = tmp_path / "inquire"
    (root / "train_rerank").mkdir(parents=True)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        noise_image(root / "train_rerank" / f"{name}.png", seed=10 + i)
    relevant = {"a": 0, "b": 1, "c": 1, "d": 0}
    (root / "inquire_rerank.csv").write_text("query,image_path,relevant\n" + "".join(
        f"red bird,train_rerank/{n}.png,{relevant[n]}\n" for n in names))
    itm = ITM(model=str(blip_dir), device="cpu", cache_dtype="float32")
    options = EvalOptions(cache_dir=tmp_path / "cache", rerank=[itm])   # until "itm" is registered
    result = inquire.evaluate_rerank(inquire.load_rerank(root), options,
                                     Embedder(options, ColorEncoder({"red bird": (1, 0, 0)})))

    probs = score_pairs(itm, [rgb(root / "train_rerank" / f"{n}.png") for n in names], "red bird")
    order = np.argsort(-probs, kind="stable")
    assert [item.label for item in result.queries[0].top] == [f"{names[i]}.png" for i in order]
    rel = np.array([relevant[names[i]] for i in order], bool)
    ap = ap_at_k_scored(rel, -np.arange(4.0), 2, 4)
    assert result.metrics["mAP"] == pytest.approx(100 * ap)
    assert result.config["rerank"][0]["name"] == "itm"


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(itm_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    assert not itm_module.available() and not vlm_module.available()
    store, _ = gallery(tmp_path / "g", 1, tmp_path / "cache")
    query = Query(vector=np.ones(4, np.float32), text="a bird")
    with pytest.raises(MissingExtra, match=r"itm reranker needs transformers.*loupe-search\[rerank-learned\]"):
        ITM(model="not/loaded-yet").rerank(query, head(1), store)
    with pytest.raises(MissingExtra, match=r"vlm reranker needs transformers"):
        VLM(model="not/loaded-yet").rerank(query, head(1), store)


def test_weights_that_cannot_be_loaded_are_a_model_error_naming_them(tmp_path: Path) -> None:
    # A folder without a checkpoint (transformers: ValueError) and a hub name that is not
    # cached while the hub is out of reach (OSError) end the same way: one error naming the model.
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    store, _ = gallery(tmp_path / "g", 1, tmp_path / "cache")
    query = Query(vector=np.ones(4, np.float32), text="a bird")
    for stage in (ITM(model=str(empty)), VLM(model=str(empty))):
        with pytest.raises(ModelError) as info:
            stage.rerank(query, head(1), store)
        message = str(info.value)
        assert message.startswith(f"{stage.name}: cannot load the model {str(empty)!r}")
        assert f"{stage.name}:model=DIR" in message and "save_pretrained" in message
        assert isinstance(info.value.__cause__, OSError | ValueError)


def test_learned_features_that_cannot_be_downloaded_are_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    kornia = pytest.importorskip("kornia")
    from loupe.search.stages.learned_features import DiskLightGlue

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to load weights from all 2 source(s)")   # what kornia raises

    monkeypatch.setattr(kornia.feature.DISK, "from_pretrained", offline)
    with pytest.raises(ModelError, match=r"^spatial-learned: cannot load the model .*DISK.*"
                                         r"weights=DIR\) must hold disk.pth and disk_lightglue.pth"):
        DiskLightGlue("", "cpu")


# -- VLM ------------------------------------------------------------------------------------------


def vlm_reference(model_dir: Path, prompt: str, images: list[list[Image.Image]]) -> np.ndarray:
    """p(yes) / (p(yes) + p(no)) from the model's own next-token logits, one prompt at a time."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    yes, no = VLM_VOCAB.index("yes"), VLM_VOCAB.index("no")
    out = []
    for ims in images:
        content = [{"type": "image"} for _ in ims] + [{"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[ims], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
            generated = model.generate(**inputs, max_new_tokens=1, do_sample=False,
                                       output_logits=True, return_dict_in_generate=True)
        # the first generated token's logits are the forward pass's last position
        torch.testing.assert_close(generated.logits[0][0], logits)
        p = logits.double().softmax(-1)
        out.append(float(p[yes] / (p[yes] + p[no])))
    return np.array(out)


@pytest.mark.parametrize("kind", ["text", "composed", "image"])
def test_vlm_yes_score_equals_the_models_logits(tmp_path: Path, llava_dir: Path, kind: str) -> None:
    store, paths = gallery(tmp_path / "g", 4, tmp_path / "cache")
    reference = rgb(noise_image(tmp_path / "ref.png", seed=50))
    query = Query(vector=np.ones(4, np.float32), text=None if kind == "image" else "a red bird",
                  image=None if kind == "text" else reference)
    vlm = VLM(model=str(llava_dir), device="cpu", batch_size=3)
    out = vlm.rerank(query, head(4), store)

    prompt = {"text": "Does this image match the description: a red bird? Answer yes or no.",
              "composed": ("The first image is a reference. Does the second image match the "
                           "reference changed as follows: a red bird? Answer yes or no."),
              "image": "Do these two images show the same object or place? Answer yes or no."}[kind]
    both = kind != "text"
    expected = vlm_reference(llava_dir, prompt, [[reference, rgb(p)] if both else [rgb(p)]
                                                 for p in paths])
    assert np.diff(np.sort(expected)).min() > 1e-4
    assert out.ids.tolist() == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose(out.scores, expected[out.ids], atol=1e-5)
    assert vlm.timings["candidates"] == 4 and vlm.timings["model_s"] > 0


def test_vlm_batches_give_the_same_scores(tmp_path: Path, llava_dir: Path) -> None:
    store, _ = gallery(tmp_path / "g", 3, tmp_path / "cache")
    query = Query(vector=np.ones(4, np.float32), text="a red bird")
    one = VLM(model=str(llava_dir), device="cpu", batch_size=1).rerank(query, head(3), store)
    three = VLM(model=str(llava_dir), device="cpu", batch_size=3).rerank(query, head(3), store)
    assert one.ids.tolist() == three.ids.tolist()
    np.testing.assert_allclose(one.scores, three.scores, atol=1e-5)


def test_vlm_listwise_orders_the_grid_by_its_numbers(tmp_path: Path, llava_dir: Path) -> None:
    store, paths = gallery(tmp_path / "g", 5, tmp_path / "cache")
    vlm = VLM(model=str(llava_dir), device="cpu", listwise=True, list_size=3, tile=32)
    out = vlm.rerank(Query(vector=np.ones(4, np.float32), text="a red bird"), head(5), store)

    grid = grid_image([rgb(p) for p in paths[:3]], tile=32)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(llava_dir)
    prompt = ("The image shows 3 photos, numbered 1 to 3. Which photo best matches the "
              "description: a red bird? Answer with its number.")
    content = [{"type": "image"}, {"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)
    with torch.no_grad():
        logits = model(**processor(text=[text], images=[[grid]], return_tensors="pt")).logits[0, -1]
    marks = logits[[VLM_VOCAB.index(d) for d in "123"]].softmax(-1).numpy()
    assert np.diff(np.sort(marks)).min() > 1e-4
    assert out.ids[:3].tolist() == np.argsort(-marks, kind="stable").tolist()
    np.testing.assert_allclose(out.scores[:3], np.sort(marks)[::-1], atol=1e-5)
    assert out.ids[3:].tolist() == [3, 4]                   # the rest keeps its order
    assert vlm.timings["candidates"] == 3


def test_grid_marks_number_the_tiles() -> None:
    white = [Image.new("RGB", (40, 30), (255, 255, 255)) for _ in range(5)]
    grid = np.asarray(grid_image(white, tile=60))
    assert grid.shape == (120, 180, 3)                      # 5 tiles: 3 columns, 2 rows
    for i in range(5):
        x0, y0 = (i % 3) * 60, (i // 3) * 60
        assert grid[y0 + 1, x0 + 1].tolist() == [0, 0, 0]   # the mark's box
        assert grid[y0 + 30, x0 + 30].tolist() == [255, 255, 255]
    assert grid[61, 121].tolist() == [255, 255, 255]        # no sixth mark


def test_vlm_rejects_long_lists() -> None:
    with pytest.raises(ValueError, match="list_size must be at most 9"):
        VLM(listwise=True, list_size=12)


def test_tiny_models_load_through_auto_classes(llava_dir: Path, blip_dir: Path) -> None:
    # The real loading path: AutoConfig/AutoProcessor/Auto* by folder, as for a hub name.
    judge = vlm_module.load_judge(str(llava_dir), "cpu")
    assert type(judge.model).__name__ == "LlavaForConditionalGeneration"
    assert (judge.yes, judge.no) == ([VLM_VOCAB.index("yes")], [VLM_VOCAB.index("no")])
    assert judge.number_ids(3) == [VLM_VOCAB.index(d) for d in "123"]
    matcher = itm_module.load_match_model(str(blip_dir), "cpu")
    assert matcher.kind == "blip" and len(matcher.identity("float16")) == 64
    assert json.loads((blip_dir / "config.json").read_text())["model_type"] == "blip"
