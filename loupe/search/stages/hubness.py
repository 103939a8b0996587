"""Hubness correction: inverted softmax (DBNorm / QB-Norm) against a bank of typical queries.

Some gallery items ("hubs") are near to very many queries and crowd every
result list. With a bank B of typical queries,

    s'(q, g) = exp(s(q, g) / T) / sum over b in B of exp(s(b, g) / T)

divides each result's score by how strongly typical queries already pull it.
A text query is normalised with a bank of generic captions (`CAPTIONS`,
encoded by the library's text tower: `text_bank`), an image query with a
fixed random sample of the gallery (`image_bank`). A bank item that is the
result itself (an image bank samples the gallery) is left out of its sum.

Modes:
- `full`: every result of the head is normalised.
- `dynamic` (Bogolin et al., CVPR 2022, QB-Norm's dynamic inverted softmax):
  the activation set A holds the gallery items that are the top-1 of some bank
  query; the query is normalised only when its own top-1 is in A, otherwise
  the plain cosine order stands.
- `dynamic-item` (shared/methods.md, read literally): only results in A are
  normalised, the others keep their cosine; normalised results are scored in
  cosine units, s - T * log(mean over B of exp(s(b, g) / T)), so that the two
  kinds compare.

Scores: `full` and a normalised `dynamic` query score each result by
T * log s'(q, g) = s(q, g) - T * logsumexp_b(s(b, g) / T), the same order as s'
and in cosine units (s' itself overflows float32 at small T).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from loupe.core.files import atomic_write
from loupe.core.types import Candidates, Query
from loupe.search.stages.base import Reranker, Store, check_positive
from loupe.search.stages.cutoff import gallery_ids, sample_ids, take

MODES = ("full", "dynamic", "dynamic-item")
MODALITIES = ("auto", "text", "image")


@dataclass
class QueryBank:
    """Typical queries: unit rows, the gallery id of each (-1 when not a gallery item), and
    the activation set (sorted ids of gallery items that are some bank query's top-1)."""

    vectors: np.ndarray
    ids: np.ndarray
    hubs: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if len(self.ids) != len(self.vectors):
            raise ValueError("a query bank needs one id per vector (-1 for non-gallery queries)")
        if self.hubs is not None:
            self.hubs = np.unique(np.asarray(self.hubs, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass
class Hubness(Reranker):
    """Inverted softmax over a query bank (text: generic captions, image: a gallery sample)."""

    name: ClassVar[str] = "hubness"
    depth: int = 100
    temperature: float = 0.05
    mode: str = "dynamic"
    bank_size: int = 1000         # gallery sample for image queries
    seed: int = 0
    modality: str = "auto"        # auto: text when the query has text and no image
    text_bank: QueryBank | None = field(default=None, repr=False)
    image_bank: QueryBank | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_positive(self, depth=self.depth, temperature=self.temperature,
                       bank_size=self.bank_size)
        if self.mode not in MODES:
            raise ValueError(f"Hubness: mode must be one of {MODES}, got {self.mode!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"Hubness: modality must be one of {MODALITIES}, got {self.modality!r}")

    def rerank(self, query: Query, candidates: Candidates, store: Store) -> Candidates:
        if not len(candidates):
            return candidates
        bank = self.bank_for(query, store)
        vecs = store.vectors(candidates.ids)
        s = vecs @ np.asarray(query.vector, np.float32).reshape(-1)
        scores = corrected_scores(s, candidates.ids, vecs, bank, self.temperature, self.mode)
        order = np.argsort(-scores, kind="stable")
        out = take(candidates, order)
        out.scores = scores[order].astype(np.float32)
        return out

    def bank_for(self, query: Query, store: Store) -> QueryBank:
        text = self.modality == "text" or (self.modality == "auto" and is_text_query(query))
        if text:
            if self.text_bank is None:
                raise ValueError(
                    "hubness: a text query needs a text query bank, made once per model: "
                    "Hubness(text_bank=text_bank(encoder.encode_text, store))")
            return self.text_bank
        if self.image_bank is not None:
            return self.image_bank
        return image_bank(store, self.bank_size, self.seed, hubs=self.mode != "full")


def is_text_query(query: Query) -> bool:
    """A query made from text alone: text, no pixels, not an indexed image (`like`)."""
    return query.text is not None and query.image is None and not query.exclude_ids


def corrected_scores(s: np.ndarray, ids: np.ndarray, vectors: np.ndarray, bank: QueryBank,
                     temperature: float, mode: str = "full") -> np.ndarray:
    """Hubness-corrected scores of results (ids, vectors, cosine s to the query), float64."""
    s = np.asarray(s, np.float64)
    ids = np.asarray(ids, np.int64)
    if mode != "full" and bank.hubs is None:
        raise ValueError(f"hubness mode {mode!r} needs the bank's activation set (hubs)")
    lse = bank_logsumexp(ids, vectors, bank, temperature)
    normalised = s - temperature * lse                        # T * log s'(q, g)
    if mode == "full":
        return normalised
    is_hub = np.isin(ids, bank.hubs)
    if mode == "dynamic":
        top1 = int(np.argmax(s))
        return normalised if is_hub[top1] else s
    # dynamic-item: T * log of s' with the mean over B in place of the sum (cosine units)
    present = _present(ids, bank)
    mean_form = normalised + temperature * np.log(np.maximum(present, 1))
    return np.where(is_hub, mean_form, s)


def bank_logsumexp(ids: np.ndarray, vectors: np.ndarray, bank: QueryBank,
                   temperature: float) -> np.ndarray:
    """log sum over bank items b (other than g itself) of exp(s(b, g) / T), per result g."""
    sims = (np.asarray(vectors, np.float32) @ bank.vectors.T).astype(np.float64) / temperature
    sims[np.asarray(ids, np.int64)[:, None] == bank.ids[None, :]] = -np.inf
    top = sims.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return (top + np.log(np.exp(sims - top).sum(axis=1, keepdims=True))).ravel()


def inverted_softmax(s: np.ndarray, bank_sims: np.ndarray, temperature: float) -> np.ndarray:
    """s'(q, g) = exp(s / T) / sum_b exp(s(b, g) / T), literally; bank_sims is [n_bank, n_results].
    For checking and small T-free uses; it overflows where T is small."""
    s = np.asarray(s, np.float64)
    return np.exp(s / temperature) / np.exp(np.asarray(bank_sims, np.float64) / temperature).sum(0)


def _present(ids: np.ndarray, bank: QueryBank) -> np.ndarray:
    """How many bank items enter each result's sum (the bank minus the result itself)."""
    return len(bank) - (ids[:, None] == bank.ids[None, :]).sum(axis=1)


# --- banks ----------------------------------------------------------------------------------

_SUBJECTS = (
    "a dog", "a cat", "a person", "a group of people", "a car", "a bicycle", "a building",
    "a street", "a beach", "a mountain", "a forest", "a plate of food", "a cup of coffee",
    "a bird", "a flower", "a tree", "a city skyline", "a river", "a bridge", "a boat", "a train",
    "an airplane", "a child", "a horse", "a field", "a living room", "a kitchen", "a bedroom",
    "a computer", "a book", "a phone", "a sign", "a painting", "a statue", "a church", "a castle",
    "a fountain", "a garden", "a park", "a road", "a lake", "the sea", "the sky", "snow",
    "a sunset", "a crowd", "a market", "a shop", "a table", "a chair", "a window", "a door",
    "a toy", "a bottle", "a bag", "a pair of shoes", "a shirt", "a dress", "a face", "hands",
    "a baby", "an old man", "a woman", "a man", "a football game", "a concert", "a wedding",
    "a birthday cake", "fruit", "vegetables", "a pizza", "a sandwich", "a cow", "a sheep",
    "a fish", "an insect", "a butterfly", "a desert", "a waterfall", "a cave", "a bus",
    "a truck", "a motorcycle", "a tent", "a house", "an apartment building", "a tower",
    "a monument", "a museum", "a classroom", "an office", "a laptop", "a keyboard", "a guitar",
    "a piano", "a camera", "a clock", "a lamp", "a mountain road", "a harbour",
)
_TEMPLATES = (
    "a photo of {}", "a close-up photo of {}", "{} outdoors", "{} indoors",
    "a blurry photo of {}", "a black and white photo of {}", "{} at night",
    "{} in bright sunlight", "a picture of {} from far away", "a snapshot of {}",
)
CAPTIONS: tuple[str, ...] = tuple(t.format(s) for s in _SUBJECTS for t in _TEMPLATES)


def text_bank(encode_text: Callable[[list[str]], np.ndarray], store: Store | None = None,
              captions: Sequence[str] = CAPTIONS, batch: int = 256) -> QueryBank:
    """The generic-caption bank of a text tower; with a store, its activation set too."""
    captions = list(captions)
    vecs = np.concatenate([np.asarray(encode_text(captions[i:i + batch]), np.float32)
                           for i in range(0, len(captions), batch)])
    bank = QueryBank(vecs, np.full(len(vecs), -1, np.int64))
    if store is not None:
        bank.hubs = activation_set(store, bank)
    return bank


_BANKS: OrderedDict[tuple, QueryBank] = OrderedDict()
_BANKS_LOCK = threading.Lock()
_BANKS_KEPT = 8


def image_bank(store: Store, n: int = 1000, seed: int = 0, hubs: bool = True) -> QueryBank:
    """A fixed random sample of the gallery as the bank of image queries (and its activation
    set). Kept per gallery (a digest of its ids and of the sample's vectors) in memory and,
    with its activation set, in `store.cache_dir("hubness")`: the n top-1 searches that set
    costs (seconds at 100k images) are paid once per gallery, not per query or process."""
    ids = sample_ids(store, n, seed)
    vecs = store.vectors(ids)
    digest = hashlib.sha256(np.ascontiguousarray(gallery_ids(store)).tobytes())
    digest.update(np.ascontiguousarray(vecs, dtype=np.float32).tobytes())
    key = (digest.hexdigest(), n, seed, hubs)      # the digest names the gallery
    with _BANKS_LOCK:
        if key in _BANKS:
            _BANKS.move_to_end(key)
            return _BANKS[key]
    bank = QueryBank(vecs, ids)
    if hubs:
        saved = None
        try:    # a read-only library has no cache folder: the set is computed, not kept
            saved = store.cache_dir("hubness") / f"image-bank-{digest.hexdigest()[:24]}-{n}-{seed}.npy"
            bank.hubs = np.load(saved)
        except (OSError, ValueError):
            bank.hubs = activation_set(store, bank)
            if saved is not None:
                try:
                    atomic_write(saved, lambda fh: np.save(fh, bank.hubs))
                except OSError:
                    pass
    with _BANKS_LOCK:
        _BANKS[key] = bank
        while len(_BANKS) > _BANKS_KEPT:
            _BANKS.popitem(last=False)
    return bank


def activation_set(store: Store, bank: QueryBank) -> np.ndarray:
    """Sorted ids of the gallery items that are the top-1 of some bank query (a bank query
    taken from the gallery does not count itself)."""
    top1 = []
    for vec, own in zip(bank.vectors, bank.ids, strict=True):
        found = store.search_vector(vec, 1, exclude=(int(own),) if own >= 0 else ())
        if len(found):
            top1.append(int(found.ids[0]))
    return np.unique(np.asarray(top1, np.int64))
