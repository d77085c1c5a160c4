"""The re-ranker interface: candidate images and a query in, one raw reply per image out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

# The question each candidate is asked. JSON because every backend's chat model can write it and the
# parser can find it inside prose; the box convention is stated by the backend (BoxFrame), not here.
DEFAULT_PROMPT = (
    'Is there {query} in this image? Answer with JSON only: {{"present": "yes" or "no", '
    '"boxes": [[x1, y1, x2, y2], ...]}} giving a bounding box in pixels for each instance you see; '
    'use an empty list when the answer is no.'
)


@dataclass(frozen=True)
class BoxFrame:
    """The coordinate space a reply's boxes are in.

    kind "pixels": absolute pixels of an image `width` x `height` (Qwen2.5-VL: its resized input);
    kind "normalized": 0..`scale` on both axes, whatever the image size (e.g. Qwen2-VL's 0..1000).
    """

    kind: str
    width: float
    height: float

    @classmethod
    def pixels(cls, width: float, height: float) -> "BoxFrame":
        return cls("pixels", float(width), float(height))

    @classmethod
    def normalized(cls, scale: float) -> "BoxFrame":
        return cls("normalized", float(scale), float(scale))


@dataclass(frozen=True)
class Reply:
    """What a backend answered for one candidate: its text, or why there is none."""

    text: str | None
    frame: BoxFrame | None
    error: str | None = None


class Reranker(ABC):
    """Asks a multimodal LLM about each candidate; never raises for a bad reply (that is a Reply.error)."""

    #: how many candidates one model call takes at once (1: one by one)
    batch_size: int = 1
    #: a short name for reports ("transformers:Qwen2.5-VL-7B-Instruct", "openai:http://...")
    name: str = "reranker"
    #: the question, with {query} where the search text goes
    prompt_template: str = DEFAULT_PROMPT

    @abstractmethod
    def judge(self, queries: list[str], images: list[np.ndarray]) -> list[Reply]:
        """One Reply per (query, H x W x 3 uint8 image) pair, in order; the pairs may come from several
        searches (the service batches candidates of concurrent queries into one call)."""

    def replies(self, query: str, images: list[np.ndarray]) -> list[Reply]:
        """One Reply per image, all for the same query."""
        return self.judge([query] * len(images), images)

    def prompt(self, query: str) -> str:
        return self.prompt_template.replace("{query}", query.strip()).replace("{{", "{").replace("}}", "}")

    def close(self) -> None:
        """Release what the backend holds (a model, a connection pool)."""
