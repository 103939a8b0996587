"""A labelled test set for the text layer: real photos with words rendered onto them.

Each sample is a real photograph (from the project's shared data) with a few words or two-word
phrases drawn in fonts installed from the distribution's packages, at several sizes, angles and
contrasts, plus photos left without any text. Every choice comes from a seeded generator, so the
same arguments give the same images and the same ground truth: the words, and for each word the
tight axis-aligned box of its ink in pixels of the sample image.

    fonts = find_fonts()                       # raises NoFontsError naming the packages to install
    samples = build_testset(photos(root), n_text=40, n_plain=20, seed=0, fonts=fonts)
    write_testset(samples, out_dir)            # JPEGs in folders + truth.json
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The vocabulary: distinct words (no word is a prefix or a part of another), some numbers and
# letter+digit codes, in the case they are drawn in (search is case-insensitive).
WORDS: tuple[str, ...] = (
    "invoice", "bakery", "harbour", "museum", "station", "parking", "garden", "library",
    "pharmacy", "hotel", "market", "coffee", "ticket", "platform", "welcome", "danger",
    "private", "closed", "sale", "menu", "delivery", "receipt", "total", "bridge",
    "river", "castle", "gallery", "theatre", "cinema", "airport", "express", "school",
    "police", "taxi", "bank", "exit", "pizza", "tower", "1998", "2023", "B12", "404",
)
# Two-word phrases, drawn on one line; their words are also searchable one by one.
PHRASES: tuple[str, ...] = (
    "fresh bread", "north gate", "no entry", "open daily", "city hall", "main street",
    "lost cat", "book shop",
)

FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts",
    Path.home() / ".local/share/fonts",
)
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf"
# Buildings without signs: "text-free" must mean it (the UKBench photos show CD covers and book
# spines; the Flickr photos of the Sacre Coeur may show signs).
PHOTO_GLOBS: tuple[str, ...] = ("strecha/scenes/*/*.jpg",)
CONTRASTS = ("high", "medium", "low")


class NoFontsError(RuntimeError):
    pass


@dataclass
class TruthWord:
    text: str                                    # as drawn
    box: tuple[float, float, float, float]       # x0, y0, x1, y1: the ink, in sample pixels
    line: str                                    # the word or phrase it was drawn in
    font: str                                    # font file name
    size: int                                    # font size in pixels
    angle: float                                 # degrees, counter-clockwise
    contrast: str                                # high | medium | low


@dataclass
class Sample:
    name: str                                    # relative path for write_testset: folder/file
    source: str                                  # the photo it was made from
    image: Image.Image = field(repr=False)
    words: list[TruthWord]

    @property
    def has_text(self) -> bool:
        return bool(self.words)

    @property
    def lines(self) -> list[str]:
        return sorted({w.line for w in self.words})


def normalise(text: str) -> str:
    """Case- and accent-insensitive form, letters and digits only: how answers are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum()).casefold()


# --- inputs ---------------------------------------------------------------------------------

def find_fonts(dirs: Sequence[Path] | None = None, limit: int | None = None) -> list[Path]:
    """TrueType/OpenType fonts installed on this machine that draw the whole vocabulary,
    sorted by path. Raises NoFontsError, naming the packages to install, when there are none."""
    dirs = FONT_DIRS if dirs is None else tuple(Path(d) for d in dirs)
    found: list[Path] = []
    for d in dirs:
        if d.is_dir():
            found.extend(p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    usable = [p for p in sorted(set(found)) if _draws_vocabulary(p)]
    if not usable:
        raise NoFontsError(
            f"no usable TrueType fonts found under {', '.join(map(str, dirs))}; install some, "
            f"e.g. `apt-get install {FONT_PACKAGES}`"
        )
    return usable[:limit] if limit else usable


def _draws_vocabulary(path: Path) -> bool:
    """A text font (not symbols): every letter and digit of the vocabulary has its own ink."""
    try:
        font = ImageFont.truetype(str(path), 32)
    except OSError:
        return False
    chars = sorted(set("".join(WORDS + PHRASES).replace(" ", "")))
    masks = set()
    for ch in chars:
        mask = font.getmask(ch)
        if mask.getbbox() is None:
            return False
        masks.add(bytes(mask))
    # Fonts that draw one box for every missing glyph give many identical masks.
    return len(masks) >= len(chars) - 2


def photos(root: Path, globs: Sequence[str] = PHOTO_GLOBS) -> list[Path]:
    """The real photos under the shared data folder, sorted; fails clearly when there are none."""
    root = Path(root)
    found = sorted({p for g in globs for p in root.glob(g)})
    if not found:
        raise FileNotFoundError(f"no photos matching {list(globs)} under {root}")
    return found


# --- drawing --------------------------------------------------------------------------------

def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _fill_for(background: np.ndarray, contrast: str, rng: np.random.Generator) -> tuple:
    """A colour whose luminance differs from the background's by a contrast-dependent amount."""
    lum = _luminance(background)
    delta = {"high": 200.0, "medium": 110.0, "low": 60.0}[contrast]
    target = lum - delta if lum > 127 else lum + delta
    target = float(np.clip(target, 0, 255))
    tint = rng.uniform(-25, 25, 3) if contrast != "high" else np.zeros(3)
    rgb = np.clip(target + tint, 0, 255)
    return (*(int(v) for v in rgb), 255)


def _draw_line(image: Image.Image, line: str, font_path: Path, size: int, angle: float,
               contrast: str, taken: list[tuple], rng: np.random.Generator,
               tries: int = 60) -> list[TruthWord] | None:
    """Draw one line of words somewhere free; returns its words with their ink boxes,
    or None when no free place was found."""
    font = ImageFont.truetype(str(font_path), size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), line, font=font)
    pad = size // 2
    layer_size = (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
    origin = (pad - x0, pad - y0)
    # One mask per word, drawn where it sits in the line, rotated like the line.
    masks, offset = [], 0
    for i, word in enumerate(line.split(" ")):
        prefix = " ".join(line.split(" ")[:i]) + (" " if i else "")
        offset = probe.textlength(prefix, font=font)
        m = Image.new("L", layer_size, 0)
        ImageDraw.Draw(m).text((origin[0] + offset, origin[1]), word, font=font, fill=255)
        masks.append((word, m.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)))
    full = Image.new("L", layer_size, 0)
    ImageDraw.Draw(full).text(origin, line, font=font, fill=255)
    alpha = full.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    ink = alpha.getbbox()
    if ink is None:
        return None
    W, H = image.size
    aw, ah = alpha.size
    if aw >= W - 8 or ah >= H - 8:
        return None
    pixels = np.asarray(image)
    for _ in range(tries):
        px, py = int(rng.integers(4, W - aw - 4)), int(rng.integers(4, H - ah - 4))
        box = (px + ink[0], py + ink[1], px + ink[2], py + ink[3])
        margin = size * 0.6
        if any(_overlaps(box, t, margin) for t in taken):
            continue
        region = pixels[box[1]:box[3], box[0]:box[2]].reshape(-1, 3)
        fill = _fill_for(region.mean(axis=0), contrast, rng)
        layer = Image.new("RGBA", alpha.size, fill)
        layer.putalpha(alpha)
        image.paste(layer, (px, py), layer)
        taken.append(box)
        words = []
        for word, m in masks:
            b = m.getbbox()
            if b is None:
                continue
            words.append(TruthWord(word, (float(px + b[0]), float(py + b[1]), float(px + b[2]),
                                          float(py + b[3])), line, font_path.name, size,
                                   float(angle), contrast))
        return words
    return None


def _overlaps(a: tuple, b: tuple, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _angle(rng: np.random.Generator) -> float:
    r = rng.random()
    if r < 0.5:
        return 0.0
    if r < 0.85:
        return float(rng.choice([-1, 1]) * rng.uniform(3, 12))
    return float(rng.choice([-1, 1]) * rng.uniform(20, 40))


def _case(word: str, rng: np.random.Generator) -> str:
    r = rng.random()
    return word.upper() if r < 0.3 else word.title() if r < 0.6 else word


def load_photo(path: Path, max_side: int) -> Image.Image:
    im = Image.open(path)
    im = im.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def make_sample(photo: Path, seed: int, fonts: Sequence[Path], *, n_lines: int = 3,
                max_side: int = 1024, sizes: tuple[int, int] = (14, 64),
                contrasts: Sequence[str] = CONTRASTS, upright: bool = False,
                name: str | None = None) -> Sample:
    """One photo with `n_lines` words or phrases drawn onto it (0 for a text-free sample).
    `contrasts` limits the contrasts drawn; `upright` draws every line horizontally."""
    rng = np.random.default_rng(seed)
    weights = np.array([{"high": 0.5, "medium": 0.3, "low": 0.2}[c] for c in contrasts])
    image = load_photo(photo, max_side)
    words: list[TruthWord] = []
    taken: list[tuple] = []
    used: set[str] = set()
    attempts = 0
    while len({w.line for w in words}) < n_lines and attempts < 10 * n_lines + 10:
        attempts += 1
        if rng.random() < 0.25:
            line = str(rng.choice(PHRASES))
        else:
            line = str(rng.choice(WORDS))
        if line in used:
            continue
        line = _case(line, rng)
        size = int(round(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1])))))
        angle = 0.0 if upright else _angle(rng)
        contrast = str(rng.choice(list(contrasts), p=weights / weights.sum()))
        drawn = _draw_line(image, line, fonts[int(rng.integers(len(fonts)))], size, angle,
                           contrast, taken, rng)
        if drawn:
            used.add(line.lower())
            words.extend(drawn)
    folder = photo.parent.name
    return Sample(name or f"{folder}/{photo.stem}_{seed}.jpg", str(photo), image, words)


def build_testset(photo_paths: Sequence[Path], *, n_text: int, n_plain: int, seed: int = 0,
                  fonts: Sequence[Path] | None = None, n_lines: tuple[int, int] = (1, 4),
                  max_side: int = 1024, sizes: tuple[int, int] = (14, 64)) -> list[Sample]:
    """`n_text` photos with text drawn on them and `n_plain` other photos without any; the
    photos are drawn without replacement (a photo is in one sample at most when there are
    enough of them)."""
    fonts = list(fonts) if fonts is not None else find_fonts()
    if not fonts:
        raise NoFontsError(f"no fonts given; install some, e.g. `apt-get install {FONT_PACKAGES}`")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photo_paths))
    need = n_text + n_plain
    picks = [photo_paths[order[i % len(order)]] for i in range(need)]
    samples = []
    for i, photo in enumerate(picks):
        has_text = i < n_text
        lines = int(rng.integers(n_lines[0], n_lines[1] + 1)) if has_text else 0
        samples.append(make_sample(Path(photo), seed * 100_003 + i, fonts, n_lines=lines,
                                   max_side=max_side, sizes=sizes,
                                   name=f"{Path(photo).parent.name}/{'t' if has_text else 'p'}"
                                        f"{i:03d}_{Path(photo).stem}.jpg"))
    return samples


def write_testset(samples: Sequence[Sample], out_dir: Path, quality: int = 92) -> Path:
    """Write the images (JPEG, in their folders) and truth.json; returns the truth file."""
    out_dir = Path(out_dir)
    truth = []
    for s in samples:
        path = out_dir / s.name
        path.parent.mkdir(parents=True, exist_ok=True)
        s.image.save(path, quality=quality)
        truth.append({"name": s.name, "source": s.source, "words": [asdict(w) for w in s.words]})
    out = out_dir / "truth.json"
    out.write_text(json.dumps(truth, indent=1))
    return out


def queries(samples: Sequence[Sample]) -> dict[str, set[int]]:
    """Text-in-image queries and their relevant samples (by index): every drawn word (normalised)
    and every drawn phrase (quoted, so that search requires it)."""
    out: dict[str, set[int]] = {}
    for i, s in enumerate(samples):
        for w in s.words:
            out.setdefault(normalise(w.text), set()).add(i)
        for line in s.lines:
            if " " in line:
                out.setdefault('"' + line.lower() + '"', set()).add(i)
    return out
