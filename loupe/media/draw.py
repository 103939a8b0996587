"""Draw the boxes that spatial verification returns onto an image (for `--show-boxes`)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from loupe.core.types import Box


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Box | None],
    color: str = "#ff3b30",
    width: int | None = None,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined; None entries are skipped."""
    out = image.convert("RGB")  # always a new image: the caller's stays untouched
    draw = ImageDraw.Draw(out)
    # Thick enough to see on a thumbnail of a large photo, thin on a small one.
    stroke = width or max(2, round(max(out.size) / 250))
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=color, width=stroke)
        if labels is not None and i < len(labels) and labels[i]:
            draw.text((min(x0, x1) + stroke, min(y0, y1) + stroke), labels[i], fill=color)
    return out
