"""Text and image encoders: open_clip models, loaded from the hub by name or from a local file.

A model is named `ARCH:TAG` (an open_clip architecture and its pretrained tag,
e.g. `ViT-B-32:laion2b_s34b_b79k`), `hf-hub:org/repo`, or `ARCH` together with a
local weights file or folder. `ARCH:random` builds the architecture with seeded
random weights: what tests and throughput benchmarks use.

Architectures are open_clip's registry plus the JSON configs in
`loupe/model_configs/`: adding a model is adding a file there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: `loupe --help`, `loupe stats` and friends
# never pay the two seconds it takes to import.

CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_TAG = "random"
RANDOM_SEED = 0


class ModelError(ValueError):
    """A model name, tag or weights file that cannot be used."""


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


def _register_configs() -> None:
    import open_clip

    if "loupe-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but PyTorch sees no CUDA device")
    return torch.device(device)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Encoder:
    """Maps images and texts to L2-normalised float32 vectors in one shared space."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any,
                 identity: dict[str, Any], device: torch.device):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.dim = int(identity["dim"])
        self.image_size = int(identity["image_size"])
        self._dtype = next(model.parameters()).dtype

    @property
    def name(self) -> str:
        return self.identity["model"]

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Pixels -> the model's input (CHW float32). Safe to call from worker threads.

        The usual open_clip pipeline (shortest side to size, centre crop, normalise) is
        done in Pillow + numpy: the same numbers as torchvision's transform on a PIL image,
        without torch ops in worker threads, which fight the model for the cores."""
        pp = self.identity["preprocess"]
        if pp.get("resize_mode") == "shortest" and pp.get("interpolation") in _PIL_FILTERS:
            return _shortest_crop_normalise(image.convert("RGB"), self.image_size,
                                            _PIL_FILTERS[pp["interpolation"]], pp["mean"], pp["std"])
        return self.preprocess(image).numpy()

    def encode_pixels(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        with torch.inference_mode():
            feats = self.model.encode_image(batch.to(self.device, dtype=self._dtype))
            return _normalised(feats)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(np.stack([self.prepare(im) for im in images]))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return _normalised(self.model.encode_text(tokens))

    def same_model(self, other: dict[str, Any]) -> bool:
        keys = ("arch", "source", "dim")
        return all(self.identity.get(k) == other.get(k) for k in keys)


_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _shortest_crop_normalise(im: Image.Image, size: int, resample: Image.Resampling,
                             mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    # Output sizes and crop offsets follow torchvision's Resize(int) and CenterCrop exactly.
    w, h = im.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), resample)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _normalised(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(name: str, weights: str | Path | None = None, device: str = "auto") -> Encoder:
    """Build an encoder from a model name and optional local weights (a file or a folder)."""
    import open_clip
    import torch

    _register_configs()
    spec = ModelSpec.parse(name, weights)
    dev = resolve_device(device)
    model_name, pretrained, source = spec.arch, None, None

    if spec.weights is not None:
        if not spec.weights.exists():
            raise ModelError(f"weights not found: {spec.weights}")
        if spec.weights.is_dir():
            model_name, source = f"local-dir:{spec.weights}", f"dir:{spec.weights.resolve()}"
        else:
            pretrained, source = str(spec.weights), f"sha256:{file_sha256(spec.weights)}"
    elif spec.arch.startswith(("hf-hub:", "local-dir:")):
        source = spec.arch
    elif spec.tag == RANDOM_TAG:
        source = f"random:seed{RANDOM_SEED}"
    elif spec.tag:
        pretrained, source = spec.tag, spec.tag
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        hint = f" one of: {', '.join(tags)}" if tags else ""
        raise ModelError(
            f"model {name!r} names no weights: write {spec.arch}:TAG ({hint.strip() or 'a pretrained tag'}),"
            f" pass --weights FILE, or {spec.arch}:{RANDOM_TAG} for untrained weights"
        )
    if not spec.arch.startswith(("hf-hub:", "local-dir:")) and spec.arch not in open_clip.list_models():
        raise ModelError(f"unknown architecture {spec.arch!r}; see open_clip.list_models()")

    precision = "fp16" if dev.type == "cuda" else "fp32"
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
    }
    return Encoder(model, preprocess, tokenizer, identity, dev)


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
