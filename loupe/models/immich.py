"""Models without torch: CLIP towers exported the way Immich publishes them.

    enc = load_encoder("immich:ViT-B-32__openai")            # the hub: immich-app/ViT-B-32__openai
    enc = load_encoder("immich:org/some-clip-export")          # another hub repository
    enc = load_encoder("immich:/models/ViT-B-32__openai")      # a local folder

The layout (one repository or folder per model):

    config.json                    open_clip's model config (embed_dim, vision_cfg, text_cfg)
    visual/model.onnx              input "image" [1|n, 3, S, S] float32, output the embedding
    visual/preprocess_cfg.json     open_clip's preprocess_cfg (size, mean, std, interpolation,
                                   resize_mode, ...)
    textual/model.onnx             input "text" [1|n, context] int32, output the embedding
    textual/tokenizer.json         a Hugging Face `tokenizers` tokenizer
    textual/tokenizer_config.json  its pad_token (and friends)

Each tower loads alone (a query encoder downloads and opens only `textual/`). These exports
are Immich's, not checked here against a PyTorch reference (there is none without their
weights). Their identity: arch `immich:<name>`, source the hub commit (`hf:<repo>@<sha>`) or,
for a local folder, a sha256 over its files. Tokenising needs the `tokenizers` package;
downloading needs `huggingface_hub`.

`export_immich` writes an open_clip model in this layout (needs torch): what the tests load.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from loupe.core.errors import ModelError
from loupe.models.base import check_towers
from loupe.models.cache import cache_root, weights_sha256
from loupe.models.onnx import ExportedEncoder, image_probe, make_tower, text_probe
from loupe.models.openclip import PIXEL_PIPELINE

HUB_ORG = "immich-app"
SUBDIRS = {"image": "visual", "text": "textual"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class HfTokenizer:
    """A `tokenizers` tokenizer.json -> id lists with start/end tokens, cut to the context
    (the end token kept), as Immich feeds its text towers; cleaning as Immich does it."""

    def __init__(self, path: Path, context_length: int = 77, canonicalize: bool = False):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelError("this model's tokenizer needs the tokenizers package: "
                             "pip install tokenizers") from exc
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.canonicalize = canonicalize

    def clean(self, text: str) -> str:
        text = " ".join(text.split())
        if self.canonicalize:
            text = text.translate(str.maketrans("", "", string.punctuation)).lower()
        return text

    def __call__(self, texts: Iterable[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tok.encode_batch([self.clean(t) for t in texts])]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"not an Immich model folder: {path} is missing") from exc
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} should hold a JSON object")
    return data


def _pad_token(cfg: dict[str, Any]) -> str:
    pad = cfg.get("pad_token", "<|endoftext|>")
    return pad.get("content") if isinstance(pad, dict) else pad


def fetch(ref: str, towers: frozenset[str], cache_dir: str | Path | None = None) -> tuple[Path, str, str]:
    """`ref` (a folder, `org/repo` or an immich-app repo name) -> (folder, name, source).
    From the hub only the asked towers' files are downloaded."""
    local = Path(ref).expanduser()
    if local.is_dir():
        folder = local.resolve()
        parts = [f"{p.relative_to(folder)}:{weights_sha256(p, cache_dir)}"
                 for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".onnx", ".json")]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return folder, folder.name, f"sha256:{digest}"
    if ref.startswith(("/", ".", "~")):
        raise ModelError(f"Immich model folder not found: {ref}")
    repo = ref if "/" in ref else f"{HUB_ORG}/{ref}"
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelError("downloading Immich models needs huggingface_hub: "
                         "pip install huggingface_hub (or give a local folder)") from exc
    patterns = ["config.json"] + [f"{SUBDIRS[t]}/*" for t in sorted(towers)]
    try:
        path = Path(snapshot_download(repo, cache_dir=str(cache_root(cache_dir) / "hub"),
                                      allow_patterns=patterns,
                                      ignore_patterns=["*.armnn", "*.rknn", "*/fp16/*"]))
    except Exception as exc:  # network, missing repository, gated model: the hub's own errors
        raise ModelError(f"could not download {repo} from the Hugging Face hub: {exc}") from exc
    commit = path.name if _COMMIT.match(path.name) else "unknown"
    return path, repo.split("/")[-1], f"hf:{repo}@{commit}"


def load_immich(ref: str, towers: Iterable[str] | None = None, backend: str = "onnxruntime",
                cache_dir: str | Path | None = None, threads: int | None = None,
                text_cache: int = 256) -> ExportedEncoder:
    towers = check_towers(towers)
    folder, name, source = fetch(ref, towers, cache_dir)
    config = _read(folder / "config.json")
    text_cfg = config.get("text_cfg", {})
    pp = _read(folder / "visual" / "preprocess_cfg.json") if (folder / "visual").is_dir() else None
    if "image" in towers and pp is None:
        raise ModelError(f"{folder} has no visual/ tower")
    if pp is None:  # a text-only download: the image size is in the model config
        vision = config.get("vision_cfg", {})
        pp = {"size": vision.get("image_size", 224)}
    size = pp.get("size", 224)
    dim = config.get("embed_dim")
    if not isinstance(dim, int):
        raise ModelError(f"{folder / 'config.json'} has no embed_dim")
    identity = {
        "model": f"immich:{ref}",
        "arch": f"immich:{name}",
        "source": source,
        "dim": dim,
        "image_size": int(size if isinstance(size, int) else size[0]),
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
        "pipeline": dict(PIXEL_PIPELINE),
    }
    image_t = text_t = tokenizer = None
    if "image" in towers:
        image_t = make_tower(_model_file(folder, "visual"), backend, "fp32", threads,
                             probe=lambda: image_probe(identity), spin=False)
    cfg: dict[str, Any] = {}
    if "text" in towers:
        ctx = int(text_cfg.get("context_length", 77))
        kwargs = text_cfg.get("tokenizer_kwargs") or {}
        tokenizer = HfTokenizer(folder / "textual" / "tokenizer.json", ctx,
                                canonicalize=kwargs.get("clean") == "canonicalize")
        tok_cfg = _read(folder / "textual" / "tokenizer_config.json")
        pad_id = tokenizer.tok.token_to_id(_pad_token(tok_cfg))
        cfg = {"kind": "hf-tokenizers", "context_length": ctx,
               "pad_id": 0 if pad_id is None else int(pad_id), "cut": False}
        # started from ONNX Runtime's saved graph when it was checked equal (ortcache.py)
        text_t = make_tower(_model_file(folder, "textual"), backend, "fp32", threads,
                            probe=lambda: text_probe(tokenizer, cfg))
    enc = ExportedEncoder(identity, image_t, text_t, tokenizer, cfg, backend, "fp32", text_cache)
    enc.report = {"folder": str(folder), "check": "Immich export: not checked against PyTorch"}
    return enc


def _model_file(folder: Path, sub: str) -> Path:
    path = folder / sub / "model.onnx"
    if not path.is_file():
        raise ModelError(f"{path} is missing")
    return path


# --- writing the layout (needs torch) -----------------------------------------------------------

def export_immich(ref: Any, folder: str | Path, towers: Iterable[str] | None = None) -> Path:
    """Write `ref` (a torch encoder) in Immich's layout: static batch of 1, int32 token input,
    normalised outputs, a tokenizer.json equivalent to open_clip's CLIP tokenizer."""
    import open_clip
    import torch

    from loupe.models.export import _torch_export

    folder = Path(folder)
    towers = check_towers(towers)
    model = ref.model
    config = open_clip.get_model_config(ref.identity["arch"]) or {}
    (folder / "visual").mkdir(parents=True, exist_ok=True)
    (folder / "textual").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if "image" in towers:
        class Visual(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(image, normalize=True)

        (folder / "visual" / "preprocess_cfg.json").write_text(
            json.dumps(ref.identity["preprocess"], indent=2))
        s = ref.image_size
        _torch_export(Visual().eval(), torch.zeros(1, 3, s, s), folder / "visual" / "model.onnx",
                      "image", {})
    if "text" in towers:
        class Textual(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, text: torch.Tensor) -> torch.Tensor:
                return self.model.encode_text(text, normalize=True)

        ctx = int(ref.tokenizer.context_length)
        example = torch.zeros(1, ctx, dtype=torch.int32)
        _torch_export(Textual().eval(), example, folder / "textual" / "model.onnx", "text", {})
        write_clip_tokenizer_json(folder / "textual", ctx)
    return folder


def write_clip_tokenizer_json(folder: Path, context_length: int) -> None:
    """CLIP's BPE as a `tokenizers` tokenizer.json (+ tokenizer_config.json), built from the
    vocabulary open_clip ships: NFC, whitespace collapsed, lower case, CLIP's split pattern,
    byte-level symbols, </w> word ends, <|startoftext|> ... <|endoftext|>."""
    from open_clip.tokenizer import default_bpe
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    from loupe.models.text import EOT, SOT, ClipTokenizer

    clip = ClipTokenizer(default_bpe(), context_length)
    rename = {SOT: "<|startoftext|>", EOT: "<|endoftext|>"}
    vocab = {rename.get(t, t): i for t, i in clip.ids.items()}
    merges = [tuple(m.split(" ")) for m in sorted(clip.ranks, key=clip.ranks.__getitem__)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                               unk_token="<|endoftext|>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(),
                                           normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    split = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", clip.eot_id), ("<|startoftext|>", clip.sot_id),
        trim_offsets=False, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": context_length}, indent=2))


def text_ids(enc: ExportedEncoder, texts: list[str]) -> np.ndarray:
    """The padded ids an Immich text tower is fed (for tests and debugging)."""
    return enc.tokens(texts)
