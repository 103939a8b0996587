"""Text for the text towers without torch: CLIP's byte-level BPE, and a cache of query vectors.

`ClipTokenizer` reads the BPE merges file that open_clip ships (`bpe_simple_vocab_16e6.txt.gz`,
copied next to an exported model) and gives the same token ids as open_clip's tokenizer with
its default cleaning (ftfy's fix_text when installed, HTML unescaping, whitespace, lower case),
without importing torch or open_clip. `regex` is needed for the Unicode classes of CLIP's
pre-tokenisation pattern.

`TextCache` remembers the vectors of recent texts: a search box sends the same query again
and again (paging, re-ranking, a changed filter).
"""

from __future__ import annotations

import gzip
import html
import marshal
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Number of merges open_clip keeps from the file (its vocabulary: 512 byte symbols, the merges,
# then the two special tokens = 49408).
N_MERGES = 49152 - 256 - 2
SOT, EOT = "<start_of_text>", "<end_of_text>"


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """Each byte -> a printable character: printable Latin-1 bytes stand for themselves, the
    rest are moved above U+00FF in byte order (the reversible map GPT-2 and CLIP use). The
    order of the entries is the vocabulary's: the printable bytes first, then the others."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# Printable ASCII without "&": text that ftfy's fix_text returns unchanged (checked against
# ftfy in tests/test_models_text.py). Most queries are such text, and importing ftfy costs
# about 0.1 s of a cold query.
_PLAIN = re.compile(r"[ -%'-~]*")


def _fix_text(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text
    try:
        import ftfy
    except ImportError:  # ftfy only repairs mojibake; ordinary text is unchanged without it
        return text
    return ftfy.fix_text(text)


def clean(text: str) -> str:
    """open_clip's `lower` cleaning: repair, unescape HTML twice, collapse spaces, lower-case."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def merge_lines(vocab_path: Path, cache: Path | None = None) -> list[str]:
    """The BPE merges of a vocabulary file, one "a b" string each, in rank order.

    A merge is a line "a b" (one space; no symbol holds a space: byte 0x20 maps to U+0120);
    lines with other whitespace are normalised the way open_clip splits them. Unzipping and
    splitting the file costs a cold query about 0.06 s; with `cache` the list is read back
    from a marshal file (5 ms), kept under a key of the vocabulary's size and mtime and of
    the Python version (marshal's format is Python's own)."""
    key = None
    if cache is not None:
        st = vocab_path.stat()
        key = f"{sys.version_info[0]}.{sys.version_info[1]}:{marshal.version}:{N_MERGES}:" \
              f"{st.st_size}:{st.st_mtime_ns}"
        try:
            with open(cache, "rb") as fh:
                head, lines = marshal.load(fh)
            if head == key and isinstance(lines, list) and len(lines) == N_MERGES:
                return lines
        except (OSError, EOFError, ValueError, TypeError):
            pass  # absent or damaged: parsed again and rewritten
    with open(vocab_path, "rb") as fh:
        lines = gzip.decompress(fh.read()).decode("utf-8").split("\n")[1:N_MERGES + 1]
    lines = [ln if ln.count(" ") == 1 else " ".join(ln.split()) for ln in lines]
    if cache is not None:
        from loupe.core.files import atomic_write

        blob = marshal.dumps((key, lines))
        try:
            atomic_write(cache, lambda fh: fh.write(blob))
        except OSError:
            pass  # a read-only cache costs the parse next time, nothing else
    return lines


class ClipTokenizer:
    """CLIP's BPE tokeniser: texts -> [sot, ..., eot] id lists (not padded)."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77,
                 cache: str | Path | None = None):
        """cache: a file where the parsed merges are kept (marshal) for the next process; an
        export keeps it beside its vocabulary (`loupe.models.onnx.load_tokenizer`)."""
        import regex

        lines = merge_lines(Path(vocab_path), Path(cache) if cache else None)
        symbols = list(_byte_symbols().values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *(ln.replace(" ", "") for ln in lines),
                 SOT, EOT]
        self.ids = dict(zip(vocab, range(len(vocab)), strict=True))  # a later duplicate wins, as before
        self.ranks = dict(zip(lines, range(len(lines)), strict=True))
        self.sot_id, self.eot_id = self.ids[SOT], self.ids[EOT]
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self._bytes = _byte_symbols()
        self._words: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._split = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE)

    def _merge(self, word: str) -> list[int]:
        """One pre-token (already mapped to byte symbols) -> its BPE ids."""
        if word in (SOT, EOT):
            return [self.ids[word]]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best, best_rank = -1, len(self.ranks)
            for i in range(len(parts) - 1):
                rank = self.ranks.get(f"{parts[i]} {parts[i + 1]}", best_rank)
                if rank < best_rank:
                    best, best_rank = i, rank
            if best < 0:
                break
            a, b = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        """The ids of a text, without start/end tokens."""
        out: list[int] = []
        for piece in self._split.findall(clean(text)):
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids = self._words.get(word)
            if ids is None:
                ids = self._merge(word)
                with self._lock:
                    if len(self._words) > 50_000:
                        self._words.clear()
                    self._words[word] = ids
            out.extend(ids)
        return out

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts -> [sot, ids..., eot], cut to the context length (the last id stays eot)."""
        rows = []
        for text in texts:
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            rows.append(ids)
        return rows


def pad(rows: Sequence[Sequence[int]], length: int, pad_id: int = 0,
        dtype: type = np.int64) -> np.ndarray:
    """Id lists -> a [n, length] array, padded with `pad_id` (rows longer are an error)."""
    out = np.full((len(rows), length), pad_id, dtype=dtype)
    for i, ids in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"{len(ids)} tokens do not fit a context of {length}")
        out[i, :len(ids)] = ids
    return out


class TextCache:
    """A small LRU of text -> vector, shared by an encoder's threads.

    `lookup(texts, compute)` returns the vectors of `texts`, calling `compute` once with only
    the texts it has not seen recently."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, texts: Sequence[str],
               compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        if self.size <= 0:
            return compute(list(texts))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in texts:
                vec = self._items.get(t)
                if vec is not None:
                    self._items.move_to_end(t)
                    found[t] = vec
            self.hits += sum(t in found for t in texts)
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        if todo:
            vecs = compute(todo)
            with self._lock:
                self.misses += len(todo)
                for t, v in zip(todo, vecs, strict=True):
                    v = np.array(v, dtype=np.float32)
                    v.flags.writeable = False
                    found[t] = self._items[t] = v
                    self._items.move_to_end(t)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=True)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
