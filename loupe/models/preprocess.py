"""Pixels -> an image tower's input, from an identity alone: no model, no torch.

    x = prepare(image, encoder.identity)      # CHW float32, what encode_pixels takes

The indexer decodes and prepares in worker threads before (or while) the model loads, so
this is a pure function of the picture and the identity's `preprocess` dict (open_clip's
preprocess_cfg: size, mean, std, interpolation, resize_mode).

`shortest` (open_clip's default: shortest side to `size`, centre crop) gives the same numbers
as torchvision's Resize + CenterCrop on a PIL image, at a cost bounded by the output size: when
resizing the whole picture would make more than `FULL_RESIZE_MAX` times the output's pixels (a
panorama past 4:1, a 1 x 200000 strip that would become 224 x 44,800,000), only the source
region that survives the crop is resampled (`resize_crop`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from loupe.core.errors import ModelError

__all__ = ["prepare", "supports", "resize_crop"]

# Up to this many times the output's pixels, the whole picture is resized and then cropped,
# exactly as torchvision does (ordinary photos: 1.33x at 4:3); beyond it, the crop alone.
FULL_RESIZE_MAX = 4.0

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "random": Image.Resampling.BICUBIC,  # open_clip's eval transform treats `random` as bicubic
}
# Half-width of each filter's kernel at scale 1 (Pillow's supports), in source pixels.
_SUPPORT = {Image.Resampling.BICUBIC: 2.0, Image.Resampling.BILINEAR: 1.0}


def _cfg(identity_or_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    cfg = identity_or_cfg.get("preprocess", identity_or_cfg)
    if not isinstance(cfg, Mapping) or "mean" not in cfg or "std" not in cfg:
        raise ModelError("identity has no usable `preprocess` (needs size, mean and std)")
    return cfg


def _square_size(cfg: Mapping[str, Any]) -> int | None:
    size = cfg.get("size", 224)
    if isinstance(size, int):
        return size
    if isinstance(size, Sequence) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None


def supports(identity_or_cfg: Mapping[str, Any]) -> bool:
    """Whether `prepare` implements this pipeline (else a backend needs open_clip's transform)."""
    try:
        cfg = _cfg(identity_or_cfg)
    except ModelError:
        return False
    return (cfg.get("resize_mode", "shortest") or "shortest") in ("shortest", "squash") \
        and (cfg.get("interpolation", "bicubic") or "bicubic") in _FILTERS \
        and _square_size(cfg) is not None


def prepare(image: Image.Image, identity: Mapping[str, Any]) -> np.ndarray:
    """A decoded picture -> the image tower's input: CHW float32, normalised.

    `identity` is an encoder identity (or just its `preprocess` dict). Thread-safe; imports
    no torch. Raises ModelError for pipelines it does not implement (see `supports`)."""
    cfg = _cfg(identity)
    if not supports(cfg):
        raise ModelError(f"pixel pipeline not implemented without open_clip: {dict(cfg)}")
    size = _square_size(cfg)
    resample = _FILTERS[cfg.get("interpolation", "bicubic") or "bicubic"]
    im = image if image.mode == "RGB" else image.convert("RGB")
    if (cfg.get("resize_mode", "shortest") or "shortest") == "squash":
        if im.size != (size, size):
            im = im.resize((size, size), resample)
    else:
        im = resize_crop(im, size, resample)
    return _normalise(np.asarray(im), cfg["mean"], cfg["std"])


def _normalise(hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC -> float32 CHW, (x / 255 - mean) / std as one multiply-add per channel written
    straight into the CHW array: a third of the time of the three whole-array passes and the
    transposed copy (equal within 5e-7)."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    scale, bias = np.float32(1 / 255) / std32, -mean32 / std32
    out = np.empty((3, *hwc.shape[:2]), np.float32)
    for c in range(3):
        np.multiply(hwc[:, :, c], scale[c], out=out[c], casting="unsafe")
        out[c] += bias[c]
    return out


def resize_crop(im: Image.Image, size: int,
                resample: Image.Resampling = Image.Resampling.BICUBIC,
                full_resize_max: float = FULL_RESIZE_MAX) -> Image.Image:
    """Shortest side to `size`, then the centre `size` x `size` crop, in work bounded by the
    output: at most `full_resize_max` x size^2 resized pixels.

    Sizes and offsets follow torchvision's Resize(int) and CenterCrop. Within the bound this is
    exactly resize-then-crop. Beyond it, the two resampling passes (horizontal, then vertical,
    as upstream Pillow runs them) each go through `box` on just the source rows and columns the
    crop needs, with the kernels' centres of the full resize: equal to resize-then-crop up to
    the float rounding of those centres (a grey level or two on few pixels), or to the
    rounding of the intermediate row where a Pillow build runs the passes the other way."""
    w, h = im.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if (new_w, new_h) == (w, h):
        return im.crop((left, top, left + size, top + size))
    if new_w * new_h <= full_resize_max * size * size:
        return im.resize((new_w, new_h), resample).crop((left, top, left + size, top + size))
    sx, sy = w / new_w, h / new_h
    x0, x1 = left * sx, (left + size) * sx
    y0, y1 = top * sy, (top + size) * sy
    # Rows the vertical pass reads: the crop's span plus the kernel's reach (scaled when
    # shrinking), with a pixel to spare. Near the image's edges this is the edge itself, so
    # the kernels clip exactly where they clip in the full resize.
    reach = _SUPPORT.get(resample, 3.0) * max(sy, 1.0) + 1.0
    r0, r1 = max(0, math.floor(y0 - reach)), min(h, math.ceil(y1 + reach))
    rows = im.crop((0, r0, w, r1)) if (r0, r1) != (0, h) else im
    if sx != 1.0 or left:
        # horizontal pass only: the box spans every row, so Pillow skips the vertical one
        rows = rows.resize((size, r1 - r0), resample, box=(x0, 0, x1, r1 - r0))
    # vertical pass only: the box spans every column
    return rows.resize((size, size), resample, box=(0, y0 - r0, size, y1 - r0))
