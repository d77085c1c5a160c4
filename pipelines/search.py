"""Text search over an index: the query's CLIP text embedding against the stored region embeddings."""

from __future__ import annotations

import numpy as np

from maskdex.operators.registry.presets import alpha_clip_encoder, preset_from_fingerprint
from maskdex.operators.common.prompts import IMAGENET_TEMPLATES
from maskdex.storage.index_store import IndexStore


class TextSearcher:
    """Holds the text encoder of the preset that built the database, so repeated queries pay for it once."""

    def __init__(self, db: str, *, weights: str | None = None, device: str = "auto"):
        self.store = IndexStore.open(db, models=None, embed_dim=None, read_only=True)
        try:
            preset = preset_from_fingerprint(self.store.models)
        except ValueError as error:
            raise ValueError(f"database {db}: {error}") from error
        self.encoder = alpha_clip_encoder(preset, weights=weights, device=device)

    def search(self, text: str, *, k: int = 10, oversample: int = 10, templates: bool = False,
               filters: dict | None = None) -> list[dict]:
        check_query_text(text)
        return self.lookup(self.embed([text], templates=templates)[0], k=k, oversample=oversample, filters=filters)

    def embed(self, texts: list[str], *, templates: bool = False) -> np.ndarray:
        """(len(texts), D) unit query vectors, in one pass of the text encoder (a service batches queries here)."""
        return self.encoder.embed_texts(list(texts), IMAGENET_TEMPLATES if templates else None).float().numpy()

    def lookup(self, query: np.ndarray, *, k: int = 10, oversample: int = 10, filters: dict | None = None) -> list[dict]:
        """The results for one query vector from embed()."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.store.search(query, k=k, oversample=oversample, filters=filters)


def check_query_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the search text is empty")
    return text
