"""The text layer: words read in images (OCR), a full-text index beside the catalog, and the
fusion of full-text and vector rankings.

    engine = get_engine("rapidocr", threads=2)      # needs the extra: pip install "loupe-search[ocr]"
    words = engine.read(image)                      # [Word(text, box, confidence)]
    fts.ensure_schema(db); fts.put_ocr(db, sha, engine_key, words)
    fts.index_document(db, image_id, path, meta, fts.ocr_text(words))
    hits = fts.search(db, '"invoice 2023" paid', k=50)
    fused = hybrid(vector_ids, hits, k=20)

Nothing here imports an OCR engine until one is asked for.
"""

from loupe.text import fts
from loupe.text.fusion import (
    FusedHit,
    hybrid,
    matching_words,
    parse_text_query,
    rrf,
    text_first_weight,
    why,
)
from loupe.text.ocr import (
    ENGINES,
    OcrEngine,
    OcrUnavailable,
    Word,
    get_engine,
    identity_key,
    register,
)

__all__ = [
    "ENGINES", "FusedHit", "OcrEngine", "OcrUnavailable", "Word", "fts", "get_engine", "hybrid",
    "identity_key", "matching_words", "parse_text_query", "register", "rrf", "text_first_weight",
    "why",
]
