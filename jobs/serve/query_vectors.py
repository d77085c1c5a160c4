"""The ingress's query vectors: an LRU of recent ones, so a repeated query skips the text encoder's hop."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class QueryVectors:
    """(text, templates) -> unit query vector, from the cache or the TextEncoder deployment. The
    replica's event loop is its only user, so no lock; concurrent misses on one text may both ask
    the encoder, which batches them anyway."""

    def __init__(self, encoder, size: int, model_call):
        self._encoder = encoder
        self._size = size
        self._model_call = model_call  # turns a ValueError raised on the request's data into a 400
        self._cache: OrderedDict[tuple[str, bool], np.ndarray] = OrderedDict()

    async def get(self, text: str, templates: bool) -> np.ndarray:
        key = (text, templates)
        vector = self._cache.get(key)
        if vector is not None:
            self._cache.move_to_end(key)
            return vector
        vector = await self._model_call(self._encoder.embed.remote(text, templates))
        if self._size:
            self._cache[key] = vector
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return vector
