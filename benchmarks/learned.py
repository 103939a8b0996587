"""Learned second stage: what each reranker costs per candidate on this CPU, and the spatial
decision rule (fixed 15 inliers vs adaptive) on hard real pairs.

    python benchmarks/learned.py                         # everything; 21 min on 2 busy cores
    python benchmarks/learned.py --parts spatial         # only the decision rule
    python benchmarks/learned.py --parts itm,vlm --vlm-size small

No model weights can be downloaded here: the cost rows use realistic architectures with random
weights (BLIP-base ITM; a 0.6B LLaVA-class VLM, SigLIP-B/16 at 384 px + a Qwen2-0.5B-sized LM;
DISK + LightGlue), which cost what the trained ones cost; their scores mean nothing. The eval rows
run INQUIRE-Rerank and CIRR through `loupe.eval` with tiny random models: they check the code
path, not quality.

Spatial decision, on ../shared/data/strecha (93 photos, six scenes, 1536 px). Queries:
- view: every photo against the photos 1..4 positions away in its own scene (larger gaps are
  larger viewpoint changes);
- crop: 40 random square crops of 300-800 px (of the 1536 px photos), against their own full
  photo and its neighbours (1..2 away);
- scale+light: 40 photos scaled by 0.25-0.5 with gamma 0.4 or 2.2 and brightness 0.5 or 1.5,
  against their own full photo and its neighbours;
each list padded with 20 non-matching photos. Non-matches: Herz-Jesus (a church in one city)
against castle/entry/fountain (another site). The README's rule "other scene group = non-match"
is wrong for castle, entry and fountain: they are one castle courtyard (entry-P10 is its gateway,
the fountain stands in it), and SIFT verifies many of those pairs with up to ~170 inliers; the
`same_site` row counts them apart. Every list goes through `Spatial.rerank` (SIFT, RootSIFT,
MAGSAC, the defaults: 1000 keypoints, 1024 px); both rules are applied by `Spatial.decide` to
the same inlier counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loupe.core.types import Candidates, Query  # noqa: E402
from loupe.models.device import cpu_info
from loupe.search.stages.spatial import Spatial  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRECHA = DATA / "strecha" / "scenes"
OUT = Path(__file__).resolve().parent / "results" / "learned.json"
PARTS = ("spatial", "itm", "vlm", "features", "eval")


def machine() -> dict[str, Any]:
    import torch

    cpu = str(cpu_info()["model"])   # /proc/cpuinfo's model name
    versions = {}
    for name in ("torch", "transformers", "kornia", "cv2"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "versions": versions}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# -- spatial decision ------------------------------------------------------------------------------


class PhotoStore:
    """The Store protocol over the Strecha photos (ids = positions), features cached on disk."""

    def __init__(self, paths: list[Path], cache: Path) -> None:
        self.paths, self.cache = paths, cache

    def image_path(self, id_: int) -> Path:
        return self.paths[int(id_)]

    def load_image(self, id_: int) -> Image.Image:
        with Image.open(self.paths[int(id_)]) as im:
            return im.convert("RGB")

    def cache_dir(self, name: str) -> Path:
        folder = self.cache / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.zeros((len(ids), 1), np.float32)

    def search_vector(self, vec, k, filters=None, exclude=()) -> Candidates:
        raise NotImplementedError


def site(scene: str) -> str:
    return "karlsruhe" if scene.startswith("Herz-Jesus") else "castle"


def hard_queries(paths: list[Path], rng: random.Random, n_crop: int, n_scale: int
                 ) -> list[tuple[str, int, Image.Image]]:
    def photo(i: int) -> Image.Image:
        with Image.open(paths[i]) as im:
            return im.convert("RGB")

    out = [("view", i, photo(i)) for i in range(len(paths))]
    for i in rng.sample(range(len(paths)), n_crop):
        im = photo(i)
        side = rng.randint(300, 800)
        x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
        out.append(("crop", i, im.crop((x, y, x + side, y + side))))
    for i in rng.sample(range(len(paths)), n_scale):
        im = photo(i)
        f = rng.uniform(0.25, 0.5)
        im = im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BILINEAR)
        gamma = rng.choice([0.4, 2.2])
        im = Image.fromarray((255 * (np.asarray(im) / 255.0) ** gamma).astype(np.uint8))
        out.append(("scale+light", i, ImageEnhance.Brightness(im).enhance(rng.choice([0.5, 1.5]))))
    return out


def spatial_decision(negatives: int = 20, n_crop: int = 40, n_scale: int = 40) -> dict[str, Any]:
    paths = sorted(STRECHA.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"photos not found under {STRECHA}")
    scene = [p.parent.name for p in paths]
    index = [int(p.stem) for p in paths]
    rng = random.Random(0)
    spatial = Spatial()
    fixed = Spatial(decision="fixed")
    rows: list[dict[str, Any]] = []
    extract_s = verify_s = 0.0
    n_verified_pairs = n_queries = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = PhotoStore(paths, Path(tmp))
        for kind, q, image in hard_queries(paths, rng, n_crop, n_scale):
            gaps = (1, 2, 3, 4) if kind == "view" else (0, 1, 2)
            pos = [j for j in range(len(paths)) if scene[j] == scene[q]
                   and abs(index[j] - index[q]) in gaps]
            pool = [j for j in range(len(paths)) if site(scene[j]) != site(scene[q])]
            neg = rng.sample(pool, negatives)
            ids = np.array(pos + neg, dtype=np.int64)
            out = spatial.rerank(Query(vector=np.zeros(1, np.float32), image=image),
                                 Candidates(ids, np.zeros(len(ids))), store)
            assert len(out) == len(ids)
            extract_s += spatial.timings.get("query_features_s", 0.0)
            verify_s += spatial.timings.get("verify_s", 0.0)
            n_verified_pairs += len(ids)
            n_queries += 1
            inliers = np.array(spatial.evidence["inliers"])
            adaptive = spatial.decide(inliers)
            needed = spatial.evidence["min_inliers_needed"]
            old = fixed.decide(inliers)
            for j, id_ in enumerate(ids.tolist()):
                rows.append({"kind": kind, "query": f"{scene[q]}/{index[q]:04d}",
                             "candidate": f"{scene[id_]}/{index[id_]:04d}",
                             "gap": abs(index[id_] - index[q]) if j < len(pos) else None,
                             "match": j < len(pos), "inliers": int(inliers[j]),
                             "needed_adaptive": needed, "fixed": bool(old[j]),
                             "adaptive": bool(adaptive[j])})
        # The README's grouping calls these non-matches; they are one courtyard.
        same_site = []
        castle = [i for i, s in enumerate(scene) if s.startswith("castle")]
        others = [i for i, s in enumerate(scene) if s.startswith(("entry", "fountain"))]
        for _ in range(40):
            a, b = rng.choice(castle), rng.choice(others)
            cache = spatial.cache(store)
            fa, fb = spatial.features(store, a, cache), spatial.features(store, b, cache)
            same_site.append(spatial.verify(fa, fb)[0])

    def summary(sel: list[dict[str, Any]]) -> dict[str, Any]:
        m = [r for r in sel if r["match"]]
        n = [r for r in sel if not r["match"]]
        return {
            "true_pairs": len(m), "non_pairs": len(n),
            "verified_fixed15": round(np.mean([r["fixed"] for r in m]), 4) if m else None,
            "verified_adaptive": round(np.mean([r["adaptive"] for r in m]), 4) if m else None,
            "rejected_fixed15": round(1 - np.mean([r["fixed"] for r in n]), 4) if n else None,
            "rejected_adaptive": round(1 - np.mean([r["adaptive"] for r in n]), 4) if n else None,
            "false_accepts_fixed15": sum(r["fixed"] for r in n),
            "false_accepts_adaptive": sum(r["adaptive"] for r in n),
            "max_inliers_non_match": max((r["inliers"] for r in n), default=None),
        }

    table = {"all": summary(rows)}
    for kind in ("view", "crop", "scale+light"):
        table[kind] = summary([r for r in rows if r["kind"] == kind])
    for gap in (1, 2, 3, 4):
        table[f"view gap {gap}"] = summary([r for r in rows if r["kind"] == "view" and
                                            (r["gap"] == gap or not r["match"])])
    needed = [r["needed_adaptive"] for r in rows]
    return {
        "settings": {k: v for k, v in spatial.params().items() if k not in ("weights", "device")},
        "table": table,
        "adaptive_min_inliers_needed": {str(v): needed.count(v) for v in sorted(set(needed))},
        "same_site_castle_vs_entry_fountain": {
            "pairs": len(same_site), "inliers_ge_15": sum(v >= 15 for v in same_site),
            "max_inliers": max(same_site)},
        "queries": n_queries,
        "cost": {"query_features_ms_per_query": round(1000 * extract_s / n_queries, 1),
                 "verify_ms_per_candidate": round(1000 * verify_s / n_verified_pairs, 1),
                 "note": "verify includes extracting a database photo's features the first time "
                         "it is seen (then cached on disk)"},
    }


# -- ITM ------------------------------------------------------------------------------------------


def word_vocab(folder: Path, words: list[str]) -> Path:
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return vocab


QUERY_WORDS = ("a photo of the fountain in a castle courtyard church facade with columns "
               "red stone wall").split()


def itm_cost(candidates: int = 16) -> dict[str, Any]:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    from loupe.search.stages.itm import ITM

    with tempfile.TemporaryDirectory() as tmp:
        processor = BlipProcessor(image_processor=BlipImageProcessor(),   # 384 x 384, as BLIP-base
                                  tokenizer=BertTokenizer(str(word_vocab(Path(tmp), QUERY_WORDS))))
        torch.manual_seed(0)
        config = BlipConfig()   # the defaults are BLIP-base: ViT-B/16 at 384 px, BERT-base with cross-attention
        t0 = time.perf_counter()
        model = BlipForImageTextRetrieval(config).eval()
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        itm = ITM.from_model(model, processor, device="cpu", batch_size=16)
        paths = sorted(STRECHA.glob("*/*.jpg"))[:candidates]
        store = PhotoStore(paths, Path(tmp) / "cache")
        ids = np.arange(len(paths))
        cands = Candidates(ids, np.zeros(len(ids)))
        itm.rerank(Query(vector=np.zeros(1), text="a photo of the fountain"), cands, store)
        cold = dict(itm.timings)
        itm.rerank(Query(vector=np.zeros(1), text="church facade with columns"), cands, store)
        warm = dict(itm.timings)
        cache_bytes = sum(f.stat().st_size for f in (Path(tmp) / "cache").rglob("*.npy"))
    return {"model": "BLIP-base ITM architecture (BlipConfig() defaults), random weights",
            "parameters_M": round(params / 1e6, 1), "build_s": round(build_s, 2),
            "candidates": len(ids), "batch_size": 16,
            "cold_ms_per_candidate": cold["ms_per_candidate"],
            "warm_ms_per_candidate": warm["ms_per_candidate"],
            "image_side_ms_per_image": round(1000 * cold.get("image_s", 0) / len(ids), 1),
            "text_side_ms_per_candidate": round(1000 * warm.get("text_s", 0) / len(ids), 1),
            "cache_kb_per_image": round(cache_bytes / len(ids) / 1024, 1),
            "cold": cold, "warm": warm}


# -- VLM ------------------------------------------------------------------------------------------


def word_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>", "yes", "no",
             *[str(i) for i in range(1, 10)], *words]
    vocab = list(dict.fromkeys(vocab))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens={"image_token": "<image>"})


CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
        "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def llava(size: str) -> tuple[Any, Any, str]:
    """A LLaVA-architecture VLM with random weights: SigLIP vision tower + Qwen2 LM."""
    import torch
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    if size == "0.5b":
        vision = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, image_size=384, patch_size=16)
        text = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                           num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                           max_position_embeddings=4096, tie_word_embeddings=True)
        what = ("LLaVA architecture, SigLIP-B/16 at 384 px (576 image tokens) + Qwen2-0.5B-sized "
                "LM (24 layers, 896 wide, 151936 vocabulary), random weights")
    else:
        vision = SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                    num_attention_heads=6, image_size=224, patch_size=16)
        text = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                           num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                           max_position_embeddings=2048, tie_word_embeddings=True)
        what = ("LLaVA architecture, small: SigLIP 6x384 at 224 px (196 image tokens) + "
                "8-layer 512-wide Qwen2 LM, random weights")
    tokenizer = word_tokenizer(QUERY_WORDS + "Does this image match the description: Answer or "
                               "The shows photos, numbered to Which best matches with its number."
                               .split())
    side = vision.image_size
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="full",
        chat_template=CHAT, image_token="<image>", num_additional_image_tokens=0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=4,
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor, what


def vlm_cost(size: str, candidates: int = 3) -> dict[str, Any]:
    from loupe.search.stages.vlm import VLM

    t0 = time.perf_counter()
    model, processor, what = llava(size)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    paths = sorted(STRECHA.glob("*/*.jpg"))[:max(candidates, 4)]
    with tempfile.TemporaryDirectory() as tmp:
        store = PhotoStore(paths, Path(tmp))
        query = Query(vector=np.zeros(1), text="a photo of the fountain")
        pointwise = VLM.from_model(model, processor, device="cpu", batch_size=1)
        ids = np.arange(candidates)
        pointwise.rerank(query, Candidates(ids, np.zeros(len(ids))), store)
        point = dict(pointwise.timings)
        composed = Query(vector=np.zeros(1), text="a photo of the fountain",
                         image=store.load_image(len(paths) - 1))
        pointwise.rerank(composed, Candidates(ids[:1], np.zeros(1)), store)
        comp = dict(pointwise.timings)
        listwise = VLM.from_model(model, processor, device="cpu", listwise=True, list_size=4,
                                  tile=192)
        all4 = np.arange(4)
        listwise.rerank(query, Candidates(all4, np.zeros(4)), store)
        lst = dict(listwise.timings)
    return {"model": what, "parameters_M": round(params / 1e6, 1), "build_s": round(build_s, 2),
            "pointwise_ms_per_candidate": point["ms_per_candidate"],
            "composed_ms_per_candidate": comp["ms_per_candidate"],
            "listwise_grid_of_4_ms_per_candidate": lst["ms_per_candidate"],
            "pointwise": point, "composed": comp, "listwise": lst}


# -- learned local features -----------------------------------------------------------------------


def features_cost(pairs: int = 3, max_side: int = 1024) -> dict[str, Any]:
    from loupe.search.stages.spatial import SpatialLearned

    paths = [STRECHA / "fountain-P11" / f"{i:04d}.jpg" for i in range(pairs + 1)]
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    out: dict[str, Any] = {}
    clock = time.perf_counter
    for name, spatial in (("sift", Spatial(max_side=max_side)),
                          ("disk+lightglue (random weights)",
                           SpatialLearned(weights="random", max_side=max_side))):
        t0, c0 = clock(), time.process_time()
        feats = [spatial.extract(im) for im in images]
        t1, c1 = clock(), time.process_time()
        inliers = [spatial.verify(feats[0], f)[0] for f in feats[1:]]
        t2, c2 = clock(), time.process_time()
        out[name] = {"max_side": max_side, "max_keypoints": spatial.max_keypoints,
                     "extract_ms_per_image": round(1000 * (t1 - t0) / len(images), 1),
                     "extract_cpu_ms_per_image": round(1000 * (c1 - c0) / len(images), 1),
                     "match_and_fit_ms_per_pair": round(1000 * (t2 - t1) / len(inliers), 1),
                     "match_and_fit_cpu_ms_per_pair": round(1000 * (c2 - c1) / len(inliers), 1),
                     "inliers": inliers}
    return {"detectors": out}


# -- the eval harness with tiny models ------------------------------------------------------------


def eval_paths() -> dict[str, Any]:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    from loupe.eval import composed, inquire
    from loupe.eval.common import Embedder, EvalOptions
    from loupe.eval.testing import ColorEncoder
    from loupe.search.stages.itm import ITM
    from loupe.search.stages.vlm import VLM

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        # tiny BLIP, saved and loaded back by path as a real checkpoint would be
        words = ["red", "bird", "green", "make", "it", "more"]
        processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                                  tokenizer=BertTokenizer(str(word_vocab(tmp, words))))
        config = BlipConfig(
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            text_config={"vocab_size": 5 + len(words), "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 2,
                         "encoder_hidden_size": 32, "max_position_embeddings": 64,
                         "pad_token_id": 0, "bos_token_id": 2, "sep_token_id": 3},
            projection_dim=16, image_text_hidden_size=16)
        torch.manual_seed(0)
        BlipForImageTextRetrieval(config).save_pretrained(tmp / "blip")
        processor.save_pretrained(tmp / "blip")

        root = tmp / "inquire"
        (root / "imgs").mkdir(parents=True)
        rng = np.random.default_rng(0)
        lines = ["query,image_path,relevant"]
        for q, text in enumerate(["red bird", "green bird"]):
            for i in range(12):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    root / "imgs" / f"{q}-{i}.png")
                lines.append(f"{text},imgs/{q}-{i}.png,{int(i % 4 == 0)}")
        (root / "inquire_rerank.csv").write_text("\n".join(lines) + "\n")
        itm = ITM(model=str(tmp / "blip"), device="cpu")
        options = EvalOptions(cache_dir=tmp / "cache", rerank=[itm])   # rerank="itm" once registered
        enc = ColorEncoder({"red bird": (1, 0, 0), "green bird": (0, 1, 0)})
        t0 = time.perf_counter()
        result = inquire.evaluate_rerank(inquire.load_rerank(root), options, Embedder(options, enc))
        out["inquire_rerank_itm_tiny"] = {"metrics": result.metrics,
                                          "seconds": round(time.perf_counter() - t0, 2)}

        # CIRR layout with a tiny VLM judging composed queries (reference + edit)
        tokenizer = word_tokenizer(["make", "it", "green", "more", "red"])
        lp = LlavaProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                            tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="full",
                            chat_template=CHAT, image_token="<image>", num_additional_image_tokens=0)
        lc = LlavaConfig(
            vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=32, patch_size=16),
            text_config=Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, max_position_embeddings=256),
            image_token_index=4, vision_feature_select_strategy="full", vision_feature_layer=-1)
        LlavaForConditionalGeneration(lc).save_pretrained(tmp / "llava")
        lp.save_pretrained(tmp / "llava")
        croot = tmp / "cirr"
        colors = [(250, 0, 0), (250, 250, 0), (0, 250, 0), (250, 120, 0), (0, 0, 250), (0, 250, 250)]
        split = {}
        for i, c in enumerate(colors):
            (croot / "dev").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), c).save(croot / "dev" / f"dev-{i}.png")
            split[f"dev-{i}"] = f"./dev/dev-{i}.png"
        (croot / "cirr" / "image_splits").mkdir(parents=True)
        (croot / "cirr" / "captions").mkdir(parents=True)
        (croot / "cirr" / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split))
        caps = [{"pairid": 10, "reference": "dev-0", "target_hard": "dev-2", "caption": "make it green",
                 "img_set": {"id": 1, "members": ["dev-0", "dev-2", "dev-4", "dev-5"]}},
                {"pairid": 11, "reference": "dev-4", "target_hard": "dev-5", "caption": "more red",
                 "img_set": {"id": 2, "members": ["dev-4", "dev-5", "dev-1", "dev-3"]}}]
        (croot / "cirr" / "captions" / "cap.rc2.val.json").write_text(json.dumps(caps))
        vlm = VLM(model=str(tmp / "llava"), device="cpu", depth=5)
        options = EvalOptions(cache_dir=tmp / "cache2", rerank=[vlm])  # rerank="vlm" once registered
        enc = ColorEncoder({"make it green": (0, 1, 0), "more red": (1, 0, 0)})
        t0 = time.perf_counter()
        result = composed.evaluate(composed.load_cirr(croot), options, Embedder(options, enc))
        out["cirr_vlm_tiny"] = {"metrics": result.metrics, "seconds": round(time.perf_counter() - t0, 2)}
    out["note"] = "tiny random models: these check the code path through loupe.eval, not quality"
    return out


# -- main -----------------------------------------------------------------------------------------


def show(results: dict[str, Any]) -> None:
    if "spatial" in results:
        print("\nSpatial decision on hard real pairs (SIFT, 1000 keypoints, 1024 px, MAGSAC)")
        print(f"{'pairs':<14}{'true':>6}{'non':>6}  {'verified 15':>11}{'verified ad.':>13}"
              f"{'rejected 15':>12}{'rejected ad.':>13}{'FA 15':>6}{'FA ad.':>7}")
        for name, r in results["spatial"]["table"].items():
            f = lambda v: f"{100 * v:.1f}%" if v is not None else "-"  # noqa: E731
            print(f"{name:<14}{r['true_pairs']:>6}{r['non_pairs']:>6}  {f(r['verified_fixed15']):>11}"
                  f"{f(r['verified_adaptive']):>13}{f(r['rejected_fixed15']):>12}"
                  f"{f(r['rejected_adaptive']):>13}{r['false_accepts_fixed15']:>6}"
                  f"{r['false_accepts_adaptive']:>7}")
    print("\nCost per candidate on this CPU")
    if "itm" in results:
        r = results["itm"]
        print(f"  itm  {r['model']}: cold {r['cold_ms_per_candidate']:.0f} ms "
              f"(CPU {r['cold']['cpu_ms_per_candidate']:.0f}; image side "
              f"{r['image_side_ms_per_image']:.0f} ms/image), cached images "
              f"{r['warm_ms_per_candidate']:.0f} ms (CPU {r['warm']['cpu_ms_per_candidate']:.0f})")
    if "vlm" in results:
        r = results["vlm"]
        print(f"  vlm  {r['model']}: pointwise {r['pointwise_ms_per_candidate']:.0f} ms "
              f"(CPU {r['pointwise']['cpu_ms_per_candidate']:.0f}), composed "
              f"{r['composed_ms_per_candidate']:.0f} ms, listwise grid of 4 "
              f"{r['listwise_grid_of_4_ms_per_candidate']:.0f} ms")
    if "features" in results:
        for name, r in results["features"]["detectors"].items():
            print(f"  spatial {name}: extract {r['extract_ms_per_image']:.0f} ms/image "
                  f"(CPU {r['extract_cpu_ms_per_image']:.0f}), match+MAGSAC "
                  f"{r['match_and_fit_ms_per_pair']:.0f} ms/pair "
                  f"(CPU {r['match_and_fit_cpu_ms_per_pair']:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--vlm-size", default="0.5b", choices=("0.5b", "small"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, Any] = {
        "command": "python benchmarks/learned.py " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_average_1min": {"start": load()},
        "offline": "random weights everywhere: cost rows are real, scores are not",
    }
    runs = {"spatial": spatial_decision, "itm": itm_cost, "vlm": lambda: vlm_cost(args.vlm_size),
            "features": features_cost, "eval": eval_paths}
    for part in parts:
        t0, load0 = time.perf_counter(), load()
        results[part] = runs[part]()
        results[part]["wall_s"] = round(time.perf_counter() - t0, 1)
        results[part]["load_average_1min_start_end"] = [load0, load()]
        results["load_average_1min"][f"after_{part}"] = load()
        print(f"[{part}] done in {results[part]['wall_s']} s, load {load()}", flush=True)
    show(results)
    if args.out.exists() and set(parts) != set(PARTS):   # keep the parts not re-run
        previous = json.loads(args.out.read_text())
        for key in PARTS:
            if key not in parts and key in previous:
                results[key] = previous[key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
