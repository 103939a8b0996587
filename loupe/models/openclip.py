"""The reference backend: open_clip models in PyTorch, from the hub by name or a local file.

A model is named `ARCH:TAG` (an open_clip architecture and its pretrained tag,
e.g. `ViT-B-32:laion2b_s34b_b79k`), `hf-hub:org/repo`, or `ARCH` together with a
local weights file or folder. `ARCH:random` builds the architecture with seeded
random weights: what tests and throughput benchmarks use.

Architectures are open_clip's registry plus the JSON configs in
`loupe/models/configs/`: adding a model is adding a file there.

Text towers run only as long as the text where that is exact (`cut_text_tower`): CLIP-style
towers with a causal mask and end-of-text pooling give the same vector on the tokens up to
the end-of-text token as on the padded context.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from loupe.core.errors import ModelError
from loupe.models import preprocess as _preprocess
from loupe.models.base import BaseEncoder, check_towers
from loupe.models.cache import weights_sha256
from loupe.models.device import resolve_device

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: `loupe --help`, `loupe stats` and friends
# never pay the two seconds it takes to import.

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM_TAG = "random"
RANDOM_SEED = 0
# How Loupe turns a file into the model's pixels before `preprocess`: part of a space's
# identity, since changing any of it changes the vectors. JPEGs decode at the smallest
# DCT scale that keeps both sides >= image_size; EXIF orientation applied; alpha on white.
PIXEL_PIPELINE = {"decode": "jpeg-draft>=image_size", "exif_orientation": True, "alpha": "white"}


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    tag: str | None = None
    weights: Path | None = None

    @classmethod
    def parse(cls, name: str, weights: str | Path | None = None) -> ModelSpec:
        name = name.strip()
        if not name:
            raise ModelError("empty model name")
        if name.startswith(("hf-hub:", "local-dir:")):
            return cls(arch=name, weights=Path(weights) if weights else None)
        arch, _, tag = name.partition(":")
        return cls(arch=arch, tag=tag or None, weights=Path(weights).expanduser() if weights else None)

    @property
    def display(self) -> str:
        return f"{self.arch}:{self.tag}" if self.tag else self.arch


def _register_configs() -> None:
    import open_clip

    if "loupe-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def resolve_source(spec: ModelSpec, cache_dir: str | Path | None = None) -> str:
    """What names the weights, without torch: a checksum for a local file (cached by size and
    mtime), the folder for a local folder, the tag or hub name otherwise."""
    if spec.weights is not None:
        if not spec.weights.exists():
            raise ModelError(f"weights not found: {spec.weights}")
        if spec.weights.is_dir():
            return f"dir:{spec.weights.resolve()}"
        return f"sha256:{weights_sha256(spec.weights, cache_dir)}"
    if spec.arch.startswith(("hf-hub:", "local-dir:")):
        return spec.arch
    if spec.tag == RANDOM_TAG:
        return f"random:seed{RANDOM_SEED}"
    if spec.tag:
        return spec.tag
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    hint = f" one of: {', '.join(tags)}" if tags else ""
    raise ModelError(
        f"model {spec.display!r} names no weights: write {spec.arch}:TAG ({hint.strip() or 'a pretrained tag'}),"
        f" pass --weights FILE, or {spec.arch}:{RANDOM_TAG} for untrained weights"
    )


# --- text towers that can stop at the end-of-text token -----------------------------------------

def _text_parts(model: Any) -> dict[str, Any] | None:
    """The pieces of a causal, end-of-text-pooled open_clip text tower, or None where running
    it on fewer tokens than the context would change the vector."""
    import torch

    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "pool_type"):
        owner, pool = text, text.pool_type  # CustomTextCLIP with open_clip's TextTransformer
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            return None
        eos = getattr(text, "eos_id", None)
    elif hasattr(model, "transformer") and hasattr(model, "text_pool_type"):
        owner, pool = model, model.text_pool_type  # CLIP: the tower's parts live on the model
        eos = getattr(model, "text_eos_id", None)
    else:
        return None  # e.g. a Hugging Face text model
    mask = getattr(owner, "attn_mask", None)
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return None  # bidirectional attention: every token sees the padding
    n = mask.shape[0]
    causal = torch.full((n, n), float("-inf")).triu_(1)
    if not torch.equal(mask.float().cpu(), causal):
        return None
    if pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        return None  # `last`, `first`, mean pooling read positions past the end of text
    return {"owner": owner, "pool": pool, "eos_id": eos, "context_length": n}


def can_cut_text(model: Any) -> bool:
    """Whether this open_clip model's text tower gives the same vector on ids cut after the
    end-of-text token (causal mask, argmax/eos pooling, no class token or padding mask)."""
    return _text_parts(model) is not None


def cut_text_tower(model: Any) -> torch.nn.Module | None:
    """A module computing the text tower on [n, L] ids for any L up to the context, exact for
    ids cut after their end-of-text token; None for towers where that is not exact."""
    import torch

    parts = _text_parts(model)
    if parts is None:
        return None
    owner, pool, eos_id = parts["owner"], parts["pool"], parts["eos_id"]

    class CutText(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embedding = owner.token_embedding
            self.positional_embedding = owner.positional_embedding
            self.transformer = owner.transformer
            self.ln_final = owner.ln_final
            self.text_projection = owner.text_projection
            self.register_buffer("attn_mask", owner.attn_mask, persistent=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            n = ids.shape[1]
            dtype = self.transformer.get_cast_dtype()
            x = self.token_embedding(ids).to(dtype) + self.positional_embedding[:n].to(dtype)
            x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
            x = self.ln_final(x)
            if pool == "argmax":
                at = ids.argmax(dim=-1)
            else:
                at = (ids == eos_id).int().argmax(dim=-1)
            x = x[torch.arange(x.shape[0], device=x.device), at]
            proj = self.text_projection
            if proj is None:
                return x
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return CutText().eval()


def text_lengths(ids: np.ndarray, pool: str = "argmax", eos_id: int | None = None) -> np.ndarray:
    """Per row, the number of tokens up to and including the pooled (end-of-text) one."""
    if pool == "argmax":
        return ids.argmax(axis=-1) + 1
    return (ids == eos_id).argmax(axis=-1) + 1


# --- the encoder --------------------------------------------------------------------------------

class Encoder(BaseEncoder):
    """open_clip in PyTorch: the reference every other backend is checked against."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any,
                 identity: dict[str, Any], device: torch.device,
                 towers: Iterable[str] | None = None, truncate_text: bool = True,
                 text_cache: int = 256):
        super().__init__(identity, towers, text_cache)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self._dtype = next(model.parameters()).dtype
        parts = _text_parts(model) if "text" in self.towers else None
        self.text_pool = (parts["pool"], parts["eos_id"]) if parts else None
        self.cut_text = cut_text_tower(model) if truncate_text and parts else None

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Pixels -> the model's input (CHW float32). Safe to call from worker threads.

        The usual open_clip pipeline (shortest side to size, centre crop, normalise) is done in
        Pillow + numpy (`loupe.models.preprocess`, bounded by the output size): the same numbers
        as torchvision's transform on a PIL image, without torch ops in worker threads, which
        fight the model for the cores. Other pipelines use open_clip's transform."""
        if _preprocess.supports(self.identity):
            return _preprocess.prepare(image, self.identity)
        return self.preprocess(image).numpy()

    def encode_pixels(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        import torch

        self._need("image")
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            feats = self.model.encode_image(batch.to(self.device, dtype=self._dtype))
            return _normalised(feats)

    def tokens(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ids as the tower will see them: cut after the longest end-of-text token
        where that is exact, else padded to the context."""
        ids = self.tokenizer(list(texts))
        if self.cut_text is not None:
            n = int(text_lengths(ids.numpy(), *self.text_pool).max())
            ids = ids[:, :n]
        return ids

    def _text_features(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = self.tokens(texts).to(self.device)
            if self.cut_text is not None:
                return self.cut_text(ids).float().cpu().numpy()
            return self.model.encode_text(ids).float().cpu().numpy()

    def encode_text_padded(self, texts: list[str]) -> np.ndarray:
        """The reference: the whole padded context through open_clip's own encode_text."""
        import torch

        self._need("text")
        with torch.inference_mode():
            return _normalised(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)))


TorchEncoder = Encoder


def _normalised(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(name: str, weights: str | Path | None = None, device: str = "auto", *,
                 towers: Iterable[str] | None = None, truncate_text: bool = True,
                 cache_dir: str | Path | None = None, text_cache: int = 256,
                 precision: str = "auto") -> Encoder:
    """Build the torch encoder from a model name and optional local weights (a file or a folder).

    `towers`: ("image",), ("text",) or both (default); the tower not asked for is dropped after
    loading. `cache_dir` only locates the weights-checksum cache. `precision`: auto (fp16 on
    CUDA, else fp32), fp32, or fp16 (CUDA only)."""
    import open_clip
    import torch

    towers = check_towers(towers)
    _register_configs()
    spec = ModelSpec.parse(name, weights)
    dev = resolve_device(device)
    model_name, pretrained = spec.arch, None
    source = resolve_source(spec, cache_dir)
    if spec.weights is not None:
        if spec.weights.is_dir():
            model_name = f"local-dir:{spec.weights}"
        else:
            pretrained = str(spec.weights)
    elif spec.tag and spec.tag != RANDOM_TAG and not spec.arch.startswith(("hf-hub:", "local-dir:")):
        pretrained = spec.tag
    if not spec.arch.startswith(("hf-hub:", "local-dir:")) and spec.arch not in open_clip.list_models():
        raise ModelError(f"unknown architecture {spec.arch!r}; see open_clip.list_models()")

    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16") or (precision == "fp16" and dev.type != "cuda"):
        raise ModelError(f"torch runs fp32, or fp16 on CUDA; not {precision} on {dev.type}")
    _set_threads(torch)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, precision=precision, device=dev
            )
    except (RuntimeError, OSError, KeyError) as exc:
        raise ModelError(f"could not load model {name!r}: {exc}") from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)

    pp = dict(model.visual.preprocess_cfg)
    size = pp.get("size", 224)
    identity = {
        "model": name if spec.weights is None else f"{spec.arch}@{spec.weights.name}",
        "arch": spec.arch,
        "source": source,
        "dim": int(model.text_projection.shape[-1]) if _has_proj(model) else _probe_dim(model, dev),
        "image_size": int(size if isinstance(size, int) else size[0]),
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
        "pipeline": dict(PIXEL_PIPELINE),
    }
    _drop_towers(model, towers)
    enc = Encoder(model, preprocess, tokenizer, identity, dev, towers=towers,
                  truncate_text=truncate_text, text_cache=text_cache)
    enc.precision = precision
    return enc


def _set_threads(torch: Any) -> None:
    """$LOUPE_THREADS (e.g. `loupe serve --threads`) bounds torch's intra-op threads as it
    bounds the exported backends'; set where torch is first needed, so nothing imports torch
    only to configure it."""
    from loupe.models.onnx import default_threads

    threads = default_threads()
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _drop_towers(model: Any, towers: frozenset[str]) -> None:
    """Free the tower not asked for (open_clip builds both)."""
    if "image" not in towers:
        model.visual = None
    if "text" not in towers:
        if getattr(model, "text", None) is not None:
            model.text = None
        for attr in ("transformer", "token_embedding", "ln_final"):
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)


def _has_proj(model: torch.nn.Module) -> bool:
    import torch

    proj = getattr(model, "text_projection", None)
    return isinstance(proj, torch.Tensor | torch.nn.Parameter) and proj.ndim == 2


def _probe_dim(model: torch.nn.Module, dev: torch.device) -> int:
    import torch

    size = model.visual.preprocess_cfg.get("size", 224)
    size = size if isinstance(size, int) else size[0]
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        probe = torch.zeros(1, 3, size, size, device=dev, dtype=dtype)
        return int(model.encode_image(probe).shape[-1])
