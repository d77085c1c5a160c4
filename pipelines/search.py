"""Search over an index: by text, by example, or both (design.md section 4).

A query is one unit vector matched against the stored region embeddings:
- text: the query's CLIP text embedding;
- an indexed example (`like`: "IMAGE_ID:N" for region N, "IMAGE_ID" for the whole image): its stored
  embedding, no model call;
- an image of the user's own, whole or restricted to a box or a mask: embedded by Alpha-CLIP exactly as
  the index embeds a region (the same decode, downscale, crop window, context and alpha); the whole image
  is the region whose mask is every pixel;
- text and an example together: q = normalise((1 - w) * t + w * e) for the unit text vector t, the unit
  example vector e and the example's weight w (default 0.5: both count the same).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from maskdex.operators.common.prompts import IMAGENET_TEMPLATES
from maskdex.operators.registry.presets import alpha_clip_encoder, preset_from_fingerprint
from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, resize_longest_side
from maskdex.pipelines.index.job import IndexSettings
from maskdex.storage.index_store import IndexStore
from maskdex.storage.search import combine_queries, without_image

EXAMPLE_WEIGHT = 0.5
# What the index job embeds with unless told otherwise; a query by image must be embedded the same way.
_INDEXED = IndexSettings()


@dataclass(frozen=True)
class Example:
    """A user's image as a query: whole, or restricted to a box (x, y, w, h in its pixels) or to a mask
    (an image of the same size whose non-zero pixels are the region)."""

    image: bytes
    box: tuple[int, int, int, int] | None = None
    mask: bytes | None = None

    @property
    def image_id(self) -> str:
        """The id the index gives these bytes (so a query can leave its own image out)."""
        return hashlib.sha256(self.image).hexdigest()


@dataclass(frozen=True)
class Query:
    """What a search is asked with; at least one of text, like and example, and not both examples."""

    text: str | None = None
    like: str | None = None
    example: Example | None = None
    weight: float = EXAMPLE_WEIGHT
    exclude_self: bool = False  # leave the example's own image out of the results
    templates: bool = False

    def check(self) -> Query:
        if self.text is not None:
            check_query_text(self.text)
        if self.like is not None and self.example is not None:
            raise ValueError("give one example: an indexed region (like) or an image, not both")
        if self.text is None and self.like is None and self.example is None:
            raise ValueError("nothing to search with: give a text, an indexed region (like) or an image")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"the example's weight must be between 0 and 1, got {self.weight}")
        return self


class TextSearcher:
    """Holds the Alpha-CLIP encoder of the preset that built the database, so repeated queries pay for it
    once. Searches by text, by example or both (see the module's docstring)."""

    def __init__(self, db: str, *, weights: str | None = None, device: str = "auto"):
        self.store = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
        try:
            preset = preset_from_fingerprint(self.store.fingerprint)
        except ValueError as error:
            raise ValueError(f"database {db}: {error}") from error
        self.encoder = alpha_clip_encoder(preset, weights=weights, device=device, dtype=_INDEXED.dtype,
                                          context=_INDEXED.context)

    def search(self, text: str | None = None, *, k: int = 10, oversample: int = 10, templates: bool = False,
               filters: dict | None = None, like: str | None = None, example: Example | None = None,
               weight: float = EXAMPLE_WEIGHT, exclude_self: bool = False) -> list[dict]:
        query = Query(text, like, example, weight, exclude_self, templates).check()
        vector, filters = self.query_vector(query, filters)
        return self.lookup(vector, k=k, oversample=oversample, filters=filters)

    def query_vector(self, query: Query, filters: dict | None = None) -> tuple[np.ndarray, dict | None]:
        """The unit query vector, and the filters with the example's own image left out if asked."""
        query.check()
        text = self.embed([query.text], templates=query.templates)[0] if query.text is not None else None
        example, own = None, None
        if query.like is not None:
            example, own = self.store.stored_vector(query.like)
        elif query.example is not None:
            example, own = self.embed_inputs([self.example_input(query.example)])[0], query.example.image_id
        return combine_queries(text, example, query.weight), without_image(filters, own if query.exclude_self else None)

    def embed(self, texts: list[str], *, templates: bool = False) -> np.ndarray:
        """(len(texts), D) unit query vectors, in one pass of the text encoder (a service batches queries here)."""
        return self.encoder.embed_texts(list(texts), IMAGENET_TEMPLATES if templates else None).float().numpy()

    def example_input(self, example: Example, *, max_pixels: int = _INDEXED.max_pixels) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input for an example; a ValueError names what is wrong with it."""
        rgb, mask = example_pixels(example, max_pixels=max_pixels, max_side=_INDEXED.max_side)
        return self.encoder.region_input(rgb, mask)

    def embed_inputs(self, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """(len(inputs), D) unit vectors for example_input's outputs, in one pass (a service batches here)."""
        pixels, alphas = zip(*inputs)
        return self.encoder.encode(pixels, alphas).float().numpy()

    def lookup(self, query: np.ndarray, *, k: int = 10, oversample: int = 10, filters: dict | None = None) -> list[dict]:
        """The results for one query vector from embed()."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.store.search(query, k=k, oversample=oversample, filters=filters)


def example_pixels(example: Example, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_side: int = _INDEXED.max_side) -> tuple[np.ndarray, np.ndarray]:
    """The example's RGB pixels and its region's mask (every pixel for the whole image), downscaled as the
    index downscales an image before finding and embedding its regions. Box and mask are in the original
    pixels."""
    if example.box is not None and example.mask is not None:
        raise ValueError("give a box or a mask, not both")
    try:
        rgb = decode_image(example.image, max_pixels)
    except DecodeError as error:
        raise ValueError(f"the example is not a usable image: {error}") from None
    height, width = rgb.shape[:2]
    if example.box is not None:
        mask = _box_mask(example.box, height, width)
    elif example.mask is not None:
        mask = _mask_from_png(example.mask, height, width)
    else:
        mask = np.ones((height, width), dtype=bool)
    working = resize_longest_side(rgb, max_side)
    if working.shape[:2] != (height, width):
        mask = np.asarray(Image.fromarray(mask).resize((working.shape[1], working.shape[0]),
                                                       Image.Resampling.NEAREST))
        if not mask.any():
            raise ValueError(f"the region is too small to survive the downscale to {max_side} pixels a side")
    return working, mask


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' in whole pixels."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        box = tuple(int(part) for part in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"a box is x,y,w,h in whole pixels, got {str(text)[:60]!r}")
    return box


def _box_mask(box, height: int, width: int) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"the box x={x}, y={y}, w={w}, h={h} is not inside the {width}x{height} image")
    mask = np.zeros((height, width), dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _mask_from_png(data: bytes, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mask = np.asarray(image.convert("L")) > 0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"the mask is not a readable image: {error}") from None
    if mask.shape != (height, width):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
    if not mask.any():
        raise ValueError("the mask is empty: no pixel of it is set")
    return mask


def check_query_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the search text is empty")
    return text

