"""Learned local features for spatial verification: DISK keypoints matched by LightGlue (kornia).

`Spatial(detector="disk")` (registered as `spatial-learned`) detects DISK keypoints and
descriptors on the working-size image and matches them with LightGlue instead of RootSIFT +
ratio test + mutual nearest neighbours; the MAGSAC fit, inlier count, decision and box are the
same as for SIFT.

Weights (`Spatial.weights`):
- "" (default): kornia's own loaders, from the hub on first use (`DISK.from_pretrained("depth")`,
  `LightGlue("disk")`), cached by torch under ~/.cache/torch;
- a folder: `disk.pth` (a DISK checkpoint: its "extractor" entry, or a bare state dict) and
  `disk_lightglue.pth` (a LightGlue state dict, original or kornia key names), loaded offline;
- "random": random initialisation with a fixed seed. Only for measuring cost: the matches mean
  nothing.

Optional: needs `kornia` (the `rerank-learned` extra).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from loupe.search.stages.itm import missing_modules, require, weights_unavailable

if TYPE_CHECKING:
    import torch

REQUIRES = ("torch", "kornia")
LEARNED_DETECTORS = ("disk",)
DISK_FILE = "disk.pth"
LIGHTGLUE_FILE = "disk_lightglue.pth"
_RANDOM_SEED = 20240601


def available() -> bool:
    """Whether the learned detectors can run here (for `loupe rerankers`)."""
    return not missing_modules(REQUIRES)


def weights_identity(weights: str) -> str:
    """A short name for the weights, part of the feature cache's folder name: a folder's is the
    hash of its two files (hashed again only when they change)."""
    if weights in ("", "pretrained"):
        return "depth"
    if weights == "random":
        return "random"
    files = [Path(weights).expanduser() / name for name in (DISK_FILE, LIGHTGLUE_FILE)]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else (str(f),)
                  for f in files)
    return _files_hash(stamp)


@functools.lru_cache(maxsize=16)
def _files_hash(stamp: tuple[tuple[Any, ...], ...]) -> str:
    digest = hashlib.sha256()
    for entry in stamp:
        path = Path(entry[0])
        if len(entry) > 1 and path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class DiskLightGlue:
    """DISK detector/descriptor and the LightGlue matcher for it, on one device."""

    def __init__(self, weights: str = "", device: str = "auto") -> None:
        require("spatial-learned", REQUIRES)
        import torch
        from kornia.feature import DISK, LightGlue

        from loupe.models.device import resolve_device

        self.device = resolve_device(device)
        conf = {"input_dim": 128}   # LightGlue's "disk" configuration
        if weights in ("", "pretrained"):
            try:
                self.disk = DISK.from_pretrained("depth", device=self.device)
                self.glue = LightGlue("disk")
            except (OSError, RuntimeError) as exc:   # kornia wraps a failed download in RuntimeError
                raise weights_unavailable(
                    "spatial-learned", "kornia DISK 'depth' + LightGlue 'disk'", exc,
                    f"a local folder (weights=DIR) must hold {DISK_FILE} and {LIGHTGLUE_FILE}",
                ) from exc
        elif weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_RANDOM_SEED)
                self.disk = DISK()
                self.glue = LightGlue(None, **conf)
        else:
            folder = Path(weights).expanduser()
            missing = [n for n in (DISK_FILE, LIGHTGLUE_FILE) if not (folder / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"spatial: weights folder {folder} lacks {', '.join(missing)} "
                    f"(expected {DISK_FILE} and {LIGHTGLUE_FILE})")
            self.disk = DISK()
            state = torch.load(folder / DISK_FILE, map_location="cpu", weights_only=True)
            self.disk.load_state_dict(state.get("extractor", state))
            self.glue = LightGlue(None, **conf)
            _load_lightglue(self.glue, torch.load(folder / LIGHTGLUE_FILE, map_location="cpu",
                                                  weights_only=True))
        self.disk = self.disk.to(self.device).eval()
        self.glue = self.glue.to(self.device).eval()
        self._lock = threading.Lock()   # one forward at a time per model on a shared device

    def extract(self, rgb: Image.Image, max_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (n, 2) in the image's pixels and float16 descriptors (n, 128)."""
        import torch

        x = torch.from_numpy(np.asarray(rgb.convert("RGB"), dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1)[None].to(self.device)
        with self._lock, torch.inference_mode():
            feats = self.disk(x, n=max_keypoints, pad_if_not_divisible=True)[0]
        points = feats.keypoints.float().cpu().numpy().astype(np.float32)
        return points, feats.descriptors.float().cpu().numpy().astype(np.float16)

    def match(self, points0: np.ndarray, desc0: np.ndarray, size0: np.ndarray,
              points1: np.ndarray, desc1: np.ndarray, size1: np.ndarray) -> np.ndarray:
        """(m, 2) index pairs that LightGlue matches between two feature sets."""
        import torch

        def side(points: np.ndarray, desc: np.ndarray, size: np.ndarray) -> dict[str, Any]:
            return {
                "keypoints": torch.from_numpy(points.astype(np.float32))[None].to(self.device),
                "descriptors": torch.from_numpy(desc.astype(np.float32))[None].to(self.device),
                "image_size": torch.as_tensor(size, dtype=torch.float32)[None].to(self.device),
            }

        with self._lock, torch.inference_mode():
            out = self.glue({"image0": side(points0, desc0, size0),
                             "image1": side(points1, desc1, size1)})
        return out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)


def _load_lightglue(glue: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load LightGlue weights written with either the original or kornia's key names."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("matcher.")
        key = re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", key)
        renamed[key] = value
    result = glue.load_state_dict(renamed, strict=False)
    parameters = dict(glue.named_parameters())
    absent = [k for k in result.missing_keys if k in parameters]
    if absent or result.unexpected_keys:
        raise ValueError(f"spatial: LightGlue weights do not fit (missing {absent[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]})")


_MODELS: dict[tuple[str, str], DiskLightGlue] = {}
_MODELS_LOCK = threading.Lock()


def disk_lightglue(weights: str = "", device: str = "auto") -> DiskLightGlue:
    """The DISK + LightGlue pair for these weights, loaded once per process."""
    key = (weights, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = DiskLightGlue(weights, device)
        return _MODELS[key]
