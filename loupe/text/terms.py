"""Words as the full-text index sees them: tokens, their normal form, the parts of glued tokens."""

from __future__ import annotations

import re
import unicodedata

# A token: a run of letters and digits (what FTS5's unicode61 tokenizer keeps; "_" separates).
TOKEN = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
# Somewhere in the text a token would split (the fast way to say "nothing to do").
_GLUED = re.compile(r"[a-z][A-Z]|[A-Z][A-Z][a-z]|[^\W\d_]\d|\d[^\W\d_]")


def normalise_term(text: str) -> str:
    """What the tokenizer makes of a word: case folded, accents removed."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(text: str) -> list[str]:
    return [normalise_term(t) for t in TOKEN.findall(text)]


def split_parts(text: str) -> list[str]:
    """The parts of glued tokens: camelCase and letter/digit boundaries. Only tokens that split
    are returned ("InvoiceScan2023" -> ["Invoice", "Scan", "2023"]; "invoice" -> [])."""
    if not _GLUED.search(text):
        return []
    parts: list[str] = []
    for token in TOKEN.findall(text):
        pieces = [p for chunk in _CAMEL.split(token) for p in _LETTER_DIGIT.split(chunk) if p]
        if len(pieces) > 1:
            parts.extend(pieces)
    return parts


def with_parts(text: str) -> str:
    """`text` followed by the parts of its glued tokens (what documents store)."""
    parts = split_parts(text)
    return text + (" " + " ".join(parts) if parts else "")
