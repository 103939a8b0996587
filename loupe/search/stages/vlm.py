"""A vision-language model as the judge: P("yes") to "does this image match?", per candidate.

Pointwise (shared/methods.md, "Learned second stage"): for each candidate the model reads

    "Does this image match the description: <query>? Answer yes or no."

and the score is p(yes) / (p(yes) + p(no)) from the logits of the first token it would
generate; p(yes) sums the answer's single-token spellings ("yes", "Yes", ...) that the tokenizer
has, likewise p(no). Computed as sigmoid(logsumexp(yes logits) - logsumexp(no logits)), which is
the same ratio without underflow. Composed queries ("this image, but ...") put the reference
image and the candidate in one prompt; image-only queries ask whether both show the same thing.

Listwise (`listwise=True`): the first `list_size` (at most 9) candidates are drawn into one grid
image with numbered marks, and the model is asked for the number of the best match; the
candidates are ordered by the probability of their number among the numbers' first-token
logits. One forward pass for the grid; meant for small n only (the marks get small, and long
lists are known to hurt). The rest of the head keeps its order behind them.

Any `transformers` image-text-to-text model with a processor (SmolVLM/Idefics3, Qwen2-VL,
LLaVA, PaliGemma, ...), by hub name or local folder. Optional: needs `transformers` (the
`rerank-learned` extra).
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive
from loupe.search.stages.itm import (
    DTYPES,
    Timings,
    load_images,
    missing_modules,
    phase,
    require,
    rescored,
    torch_dtype,
    weights_unavailable,
)

if TYPE_CHECKING:
    import torch

DEFAULT_VLM_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
YES = ("yes", "Yes", "YES", " yes", " Yes")
NO = ("no", "No", "NO", " no", " No")

PROMPTS = {
    "text": "Does this image match the description: {query}? Answer yes or no.",
    "composed": ("The first image is a reference. Does the second image match the reference "
                 "changed as follows: {query}? Answer yes or no."),
    "image": "Do these two images show the same object or place? Answer yes or no.",
    "list_text": ("The image shows {n} photos, numbered 1 to {n}. Which photo best matches the "
                  "description: {query}? Answer with its number."),
    "list_composed": ("The first image is a reference. The second image shows {n} photos, "
                      "numbered 1 to {n}. Which photo best matches the reference changed as "
                      "follows: {query}? Answer with its number."),
    "list_image": ("The first image is a reference. The second image shows {n} photos, numbered "
                   "1 to {n}. Which photo shows the same object or place? Answer with its number."),
}


def available() -> bool:
    """Whether `vlm` can run here (for `loupe rerankers`)."""
    return not missing_modules(VLM.requires)


def answer_ids(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """Distinct token ids of the spellings that the tokenizer writes as one known token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for word in spellings:
        enc = tokenizer.encode(word, add_special_tokens=False)
        if len(enc) == 1 and enc[0] != unk and enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids


def yes_probability(logits: torch.Tensor, yes: Sequence[int], no: Sequence[int]) -> np.ndarray:
    """p(yes) / (p(yes) + p(no)) for each row of first-token logits."""
    lg = logits.float()
    diff = lg[:, list(yes)].logsumexp(dim=-1) - lg[:, list(no)].logsumexp(dim=-1)
    return diff.sigmoid().cpu().numpy()


def grid_image(images: Sequence[Image.Image], tile: int = 256) -> Image.Image:
    """The candidates in a near-square grid, each letterboxed into a tile and numbered from 1
    by a large mark in its top-left corner (white digits on black)."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    from PIL import ImageDraw, ImageFont  # only here: a cold query does not draw

    draw = ImageDraw.Draw(grid)
    size = max(12, tile // 6)
    font = ImageFont.load_default(size=size)
    for i, im in enumerate(images):
        x0, y0 = (i % cols) * tile, (i // cols) * tile
        thumb = im.convert("RGB")
        thumb.thumbnail((tile - 4, tile - 4), Image.Resampling.BILINEAR)
        grid.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        pad = size // 4
        draw.rectangle((x0, y0, x0 + size + 2 * pad, y0 + size + 2 * pad), fill=(0, 0, 0))
        draw.text((x0 + pad + size // 4, y0 + pad // 2), str(i + 1), fill=(255, 255, 255), font=font)
    return grid


class Judge:
    """A loaded image-text-to-text model with its processor: prompts in, first-token logits out."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"   # the next-token position is the last one
        self.device = next(model.parameters()).device
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.yes = answer_ids(self.tokenizer, YES)
        self.no = answer_ids(self.tokenizer, NO)
        if not self.yes or not self.no:
            raise ValueError("vlm: the model's tokenizer has no single token for 'yes' or 'no'")

    def prompt(self, text: str, n_images: int) -> str:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": text})
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
        marker = getattr(self.processor, "image_token", None) or "<image>"
        return marker * n_images + text

    def last_logits(self, prompts: Sequence[str],
                    images: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
        """Logits of the first generated token for each (prompt, its images)."""
        import torch

        batch = self.processor(text=list(prompts), images=[list(ims) for ims in images],
                               padding=True, return_tensors="pt")
        batch = {k: (v.to(self.device, self.model.dtype) if torch.is_floating_point(v)
                     else v.to(self.device)) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        if self._keep_last:
            batch["logits_to_keep"] = 1   # the vocabulary projection for the last position only
        with torch.inference_mode():
            return self.model(**batch).logits[:, -1, :]

    def number_ids(self, n: int) -> list[int]:
        ids = []
        for i in range(1, n + 1):
            found = answer_ids(self.tokenizer, (str(i), f" {i}"))
            if not found:
                raise ValueError(f"vlm: the model's tokenizer has no single token for {i}")
            ids.append(found[0])
        return ids


_LOADED: dict[tuple[str, str, str], Judge] = {}
_LOAD_LOCK = threading.Lock()


def load_judge(source: str, device: str = "auto", dtype: str = "float32") -> Judge:
    """An image-text-to-text model and its processor by hub name or local folder (once per process)."""
    require("vlm", VLM.requires)
    from loupe.models.device import resolve_device

    dev = resolve_device(device)
    key = (source, str(dev), dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            import transformers
            from transformers import AutoProcessor

            auto = getattr(transformers, "AutoModelForImageTextToText", None) or \
                getattr(transformers, "AutoModelForVision2Seq")  # noqa: B009 - older releases
            try:
                model = auto.from_pretrained(source, dtype=torch_dtype(dtype)).to(dev)
                processor = AutoProcessor.from_pretrained(source)
            except (OSError, ValueError) as exc:
                raise weights_unavailable("vlm", source, exc) from exc
            _LOADED[key] = Judge(model, processor)
        return _LOADED[key]


@dataclass
class VLM(Reranker):
    """Vision-language model judge: P("yes") that a candidate matches the query (pointwise)."""

    name: ClassVar[str] = "vlm"
    needs_pixels: ClassVar[bool] = True      # composed and image queries show it the query image
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    prompts: ClassVar[dict[str, str]] = PROMPTS
    depth: int = 20
    model: str = DEFAULT_VLM_MODEL   # hub name or local folder
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 4              # prompts per forward pass
    max_side: int = 768              # candidate pixels are downscaled to this before the processor
    listwise: bool = False
    list_size: int = 4               # listwise: candidates in the one grid (at most 9)
    tile: int = 256                  # listwise: pixels per grid cell
    workers: int = 4

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, batch_size=self.batch_size, max_side=self.max_side,
                       list_size=self.list_size, tile=self.tile, workers=self.workers)
        if self.dtype not in DTYPES:
            raise ValueError(f"VLM: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.list_size > 9:
            raise ValueError(f"VLM: list_size must be at most 9, got {self.list_size!r}")
        self._judge: Judge | None = None
        self.timings: Timings = Timings(0).finish()

    @classmethod
    def from_model(cls, model: Any, processor: Any, **params: Any) -> VLM:
        """A VLM reranker over an already loaded model and processor (tests, notebooks)."""
        vlm = cls(**params)
        vlm._judge = Judge(model, processor)
        return vlm

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = load_judge(self.model, self.device, self.dtype)
        return self._judge

    def kind(self, query: Query) -> str | None:
        if query.text and query.image is not None:
            return "composed"
        if query.text:
            return "text"
        return "image" if query.image is not None else None

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        """Pointwise: all candidates by P(yes). Listwise: the first list_size by P(their number)."""
        kind = self.kind(query)
        if kind is None or not len(candidates):
            return candidates
        if self.listwise:
            return self._listwise(query, kind, candidates, store)
        timings = Timings(len(candidates))
        with phase(timings, "load_model"):
            judge = self.judge
        text = self.prompts[kind].format(query=query.text or "")
        reference = [self._shrink(query.image)] if query.image is not None else []
        prompt = judge.prompt(text, len(reference) + 1)
        ids = [int(i) for i in candidates.ids]
        scores = np.zeros(len(ids), np.float32)
        for start in range(0, len(ids), self.batch_size):
            part = list(range(start, min(start + self.batch_size, len(ids))))
            with phase(timings, "decode"):
                images = load_images(store, [ids[j] for j in part], self.workers)
            good = [(j, self._shrink(im)) for j, im in zip(part, images, strict=True)
                    if im is not None]
            if not good:
                continue
            with phase(timings, "model"):
                logits = judge.last_logits([prompt] * len(good),
                                           [[*reference, im] for _, im in good])
                scores[[j for j, _ in good]] = yes_probability(logits, judge.yes, judge.no)
        self.timings = timings.finish()
        return rescored(candidates, scores)

    def _listwise(self, query: Query, kind: str, candidates: Candidates, store: Store) -> Candidates:
        n = min(self.list_size, len(candidates))
        timings = Timings(n)
        with phase(timings, "load_model"):
            judge = self.judge
        ids = [int(i) for i in candidates.ids[:n]]
        with phase(timings, "decode"):
            images = load_images(store, ids, self.workers)
        blank = Image.new("RGB", (self.tile, self.tile), (127, 127, 127))
        grid = grid_image([im if im is not None else blank for im in images], self.tile)
        reference = [self._shrink(query.image)] if query.image is not None else []
        text = self.prompts[f"list_{kind}"].format(query=query.text or "", n=n)
        with phase(timings, "model"):
            logits = judge.last_logits([judge.prompt(text, len(reference) + 1)], [[*reference, grid]])
            marks = logits[0, judge.number_ids(n)].float().softmax(dim=-1).cpu().numpy()
        marks[[i for i, im in enumerate(images) if im is None]] = 0.0
        head = rescored(candidates.head(n), marks.astype(np.float32))
        rest = candidates.take(np.arange(n, len(candidates)))
        self.timings = timings.finish()
        return Candidates(np.concatenate([head.ids, rest.ids]),
                          np.concatenate([head.scores, rest.scores]),
                          list(head.boxes) + list(rest.boxes))

    def _shrink(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        return image


__all__ = ["PROMPTS", "VLM", "Judge", "answer_ids", "available", "grid_image", "load_judge",
           "yes_probability"]
