"""A library of real photos whose vectors mean something without model weights.

The random-weight tiny model puts every pair of images at cosine ~0.99, so the answer
stages (cut-off, collapse, feedback, MMR) cannot be seen working on it. Here each photo's
vector is a colour histogram instead (HSV 4x4x2 = 32 bins, the tiny model's width; black
padding left out, so rotated and padded copies keep their histogram), added through
`Library.add_embedded`: searches by an indexed image (--like) then rank by colour, as the
weight-free first stage of benchmarks/answers.py does (8x4x4 bins there).

Files (about 250): the ten Sacre Coeur photos with their rotated and scaled copies, one
byte-identical copy, the Strecha scenes (93 views of four buildings, made smaller), and
one synthetic picture that matches nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import SHARED_DATA, TINY

SACRE = tuple(sorted(p.stem for p in (SHARED_DATA / "sacre_coeur" / "mapping").glob("*.jpg")))
COPIES = ("rot45", "rot90", "rot135", "rot180", "rot225", "rot270", "rot315",
          "scale0.2", "scale0.4", "scale0.5", "scale0.6", "scale0.7", "scale0.8", "scale0.9")
NO_MATCH = "synthetic/stripes.png"


def histogram(image: Image.Image) -> np.ndarray:
    """Unit 32-d vector: square roots of the HSV 4x4x2 histogram of non-black pixels."""
    small = image.convert("RGB")
    small.thumbnail((128, 128))
    rgb = np.asarray(small).reshape(-1, 3)
    hsv = np.asarray(small.convert("HSV")).reshape(-1, 3).astype(np.float32)[rgb.max(1) > 16]
    counts = np.histogramdd(hsv, bins=(4, 4, 2), range=((0, 256),) * 3)[0].ravel()
    vec = np.sqrt(counts / max(counts.sum(), 1))
    return (vec / np.linalg.norm(vec)).astype(np.float32)



def copy_sacre_group(root: Path, stem: str, prefix: str = "") -> list[str]:
    """Copy a Sacre Coeur original and its rotated and scaled copies under `root/prefix`;
    returns their relative paths, the original first."""
    sacre = SHARED_DATA / "sacre_coeur"
    rels = [f"{prefix}{stem}.jpg"] + [f"{prefix}copies/{stem}_{c}.jpg" for c in COPIES]
    srcs = [sacre / "mapping" / f"{stem}.jpg"] + [
        sacre / ("mapping_rot" if c.startswith("rot") else "mapping_scale") / f"{stem}_{c}.jpg"
        for c in COPIES]
    for rel, src in zip(rels, srcs, strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    return rels

def copy_photos(root: Path) -> dict[str, list[str]]:
    """The files above under root; returns each group's relative paths (for a Sacre Coeur
    photo: the original, then its copies; for a Strecha building: its views)."""
    groups: dict[str, list[str]] = {}
    for stem in SACRE:
        groups[stem] = copy_sacre_group(root, stem, "sacre/")
    exact = f"sacre/again/{SACRE[0]}.jpg"          # the same bytes under another name
    (root / exact).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / groups[SACRE[0]][0], root / exact)
    groups[SACRE[0]].append(exact)
    for folder in sorted((SHARED_DATA / "strecha" / "scenes").iterdir()):
        building = folder.name.split("-P")[0]
        for src in sorted(folder.glob("*.jpg")):
            rel = f"strecha/{folder.name}/{src.name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im.draft("RGB", (384, 384))      # smaller files: the test copies fewer bytes
                im.convert("RGB").save(root / rel, quality=85)
            groups.setdefault(building, []).append(rel)
    (root / NO_MATCH).parent.mkdir(parents=True, exist_ok=True)
    _synthetic().save(root / NO_MATCH)
    groups[NO_MATCH] = [NO_MATCH]
    return groups


def _synthetic() -> Image.Image:
    """Saturated stripes in colours no photo here has much of."""
    _, x = np.mgrid[0:240, 0:320]
    on = (x // 20) % 2 == 0
    a, b = (255, 0, 255), (0, 255, 64)
    pixels = np.where(on[..., None], np.array(a, np.uint8), np.array(b, np.uint8))
    return Image.fromarray(pixels.astype(np.uint8))


def histogram_library(root: Path):
    """A library over `root` (files from `copy_photos`) with histogram vectors."""
    from loupe import Library

    lib = Library.open(root / ".loupe", model=TINY, device="cpu")
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".loupe" not in p.parts):
        data = path.read_bytes()
        with Image.open(path) as im:
            width, height, fmt = im.size[0], im.size[1], im.format
            im.draft("RGB", (128, 128))          # a JPEG decodes at 1/8 scale: fast
            vec = histogram(im)
        rows.append((path.relative_to(root).as_posix(), hashlib.sha256(data).hexdigest(), vec,
                     {"width": width, "height": height, "format": fmt, "size": len(data),
                      "mtime": path.stat().st_mtime}))
    lib.add_embedded(rows)
    lib.save_vectors()
    return lib
