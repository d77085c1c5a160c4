"""The model deployments: the text encoder (batched across concurrent queries) and the segmenter.

Both take their GPUs, replicas and autoscaling from the service config; the code is the same on CPU.
Bad input raises ValueError here (as the pipelines do); the ingress turns it into a 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
from ray import serve

from maskdex.jobs.serve.config import MaskdexConfig


@serve.deployment(name="TextEncoder")
class TextEncoder:
    """Query texts, and example images (whole, a box or a mask), to unit query vectors, in batches across
    concurrent requests: Alpha-CLIP embeds both. The search itself
    (and the cache of recent query vectors) is the ingress's: this replica holds the model, and a
    LanceDB lookup here would take a GPU replica's time and add a hop to every cached query."""

    def __init__(self, config: dict):
        from maskdex.pipelines.search import TextSearcher

        settings = MaskdexConfig.model_validate(config)
        self.searcher = TextSearcher(settings.db, weights=settings.weights, device=settings.device)
        self.max_pixels = settings.limits.max_pixels
        self.passes = {"text": 0, "example": 0}  # model passes, by kind (GET-able through passes_so_far)
        for batched in (self._embed, self._embed_examples):
            batched.set_max_batch_size(settings.batching.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batching.batch_wait_timeout_s)

    def ready(self) -> bool:
        """Answered once the constructor has loaded the model (the ingress's readiness check)."""
        return True

    async def embed(self, text: str, templates: bool) -> np.ndarray:
        from maskdex.pipelines.search import check_query_text

        check_query_text(text)
        return await self._embed((text, templates))

    async def embed_example(self, image: bytes, box: tuple[int, int, int, int] | None, mask: bytes | None) -> np.ndarray:
        """An example image's unit vector, embedded as the index embeds a region; ValueError on bad input.
        Decoding and cropping run per request, so one bad image never fails the others of its batch."""
        from maskdex.pipelines.search import Example

        prepared = await asyncio.to_thread(self.searcher.example_input, Example(image, box, mask),
                                           max_pixels=self.max_pixels)
        return await self._embed_examples(prepared)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed_examples(self, inputs: list) -> list[np.ndarray]:
        self.passes["example"] += 1
        return list(await asyncio.to_thread(self.searcher.embed_inputs, inputs))

    def passes_so_far(self) -> dict[str, int]:
        """How many encoder passes this replica has made, by kind: what says a `like` query used none."""
        return dict(self.passes)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, queries: list[tuple[str, bool]]) -> list[np.ndarray]:
        vectors: list = [None] * len(queries)
        self.passes["text"] += 1
        # Template averaging changes the encoder's input, so each kind gets its own pass.
        for templates in (False, True):
            picked = [index for index, (_, wants) in enumerate(queries) if wants == templates]
            if picked:
                embedded = await asyncio.to_thread(self.searcher.embed, [queries[i][0] for i in picked],
                                                   templates=templates)
                for row, index in enumerate(picked):
                    vectors[index] = embedded[row]
        return vectors


@serve.deployment(name="Segmenter")
class SegmenterModel:
    """One maskdex.pipelines.fewshot.segmenter.Segmenter per replica; it re-reads the support memory's version at every
    call, so an example added through any replica is used by the next segmentation on all of them."""

    def __init__(self, config: dict):
        from maskdex.operators.rns.method import RNSSettings
        from maskdex.pipelines.fewshot.segmenter import SegmentSettings, Segmenter

        settings = MaskdexConfig.model_validate(config)
        self.segmenter = Segmenter(settings.db, SegmentSettings(
            models=settings.preset, weights=settings.weights, device=settings.device, dtype=settings.dtype,
            rns=RNSSettings(steps=settings.rns_steps), max_pixels=settings.limits.max_pixels), create=True)
        # The Segmenter's caches are not thread-safe; listing the sets need not wait for a segmentation.
        self._lock = threading.Lock()
        self._segment_batch.set_max_batch_size(settings.segment_batching.max_batch_size)
        self._segment_batch.set_batch_wait_timeout_s(settings.segment_batching.batch_wait_timeout_s)

    def ready(self) -> bool:
        return True

    async def segment(self, image: bytes, set_name: str, classes: list[str] | None, mode: str, shots_only: bool,
                      seed: int, image_id: str | None) -> dict:
        from maskdex.pipelines.fewshot.segmenter import SegmentCall

        outcome = await self._segment_batch(SegmentCall(image, set_name, classes, mode, shots_only, seed, image_id))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _segment_batch(self, calls: list) -> list:
        """Concurrent requests on one support set (same classes and mode) train their heads together;
        each gets the result it would get alone, or its own error."""
        return await asyncio.to_thread(self._segment_calls, calls)

    def _segment_calls(self, calls: list) -> list:
        from maskdex.operators.common import rle
        from maskdex.pipelines.fewshot.outputs import colours, labels_image

        with self._lock:
            results = self.segmenter.segment_many(calls)
        responses = []
        for call, result in zip(calls, results):
            if isinstance(result, Exception):
                responses.append(result)
                continue
            png = io.BytesIO()
            labels_image(result.labels, len(result.class_names)).save(png, format="PNG")
            masks = {name: rle.encode(result.labels == index) for index, name in enumerate(result.class_names)}
            responses.append({**result.summary(), "set": call.set_name, "colours": colours(len(result.class_names)).tolist(),
                              "labels_png": base64.b64encode(png.getvalue()).decode("ascii"), "masks": masks})
        return responses

    def add_example(self, set_name: str, image: bytes, label_png: bytes, class_names: list[str]) -> dict:
        from maskdex.pipelines.fewshot.labels import read_label_map

        labels = read_label_map(label_png)
        with self._lock:
            return self.segmenter.add_example(set_name, image, labels, class_names)

    def list_sets(self) -> dict[str, dict[str, int]]:
        return self.segmenter.store.list_sets()

    def remove(self, set_name: str, class_name: str | None) -> dict:
        """Delete a set, or one class of it; ValueError naming what does not exist."""
        with self._lock:
            store = self.segmenter.store
            removed = store.remove_set(set_name) if class_name is None else store.remove_class(set_name, class_name)
        return {"set": set_name, "class": class_name, "removed_examples": removed}
