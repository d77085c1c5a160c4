"""MaTIR's second stage over first-stage search results (design.md section 4).

The top N results' images are loaded, a Reranker judges each (operators/rerank), replies are parsed
without trust, and a confirmed candidate's box is matched to the stored region with the highest box
IoU (ties: higher query similarity), which becomes the result's region; the first-stage region stays
beside it as `first_stage_region`. Order: confirmed before rejected, first-stage order within each;
a candidate whose reply was unusable (unparsed, or the backend failed) keeps its first-stage rank.
Every re-ranked result carries `rerank`: {"status", "box", "reason", ...}; nothing here raises for
what the model or its server did.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from maskdex.operators.rerank.base import Reranker, Reply
from maskdex.operators.rerank.matching import best_region, xywh_to_xyxy
from maskdex.operators.rerank.parse import CONFIRMED, REJECTED, UNPARSED, parse_reply

ERROR = "error"  # the backend gave no reply (server down, timeout, image unreadable)
# Kept in the result so a user can see what the model said; longer replies are cut.
_REPLY_CHARS = 300


class ResultReranker:
    """Re-orders search results with a Reranker; `timings` holds the last call's seconds per stage."""

    def __init__(self, reranker: Reranker, store, *, top: int = 20, max_pixels: int | None = None):
        if top < 1:
            raise ValueError(f"the re-rank top must be >= 1, got {top}")
        self.reranker = reranker
        self.store = store
        self.top = top
        self.max_pixels = max_pixels
        self.timings: dict[str, float] = {}

    def rerank(self, text: str, results: list[dict], query: np.ndarray | None = None) -> list[dict]:
        """Results in their new order; results past the top N follow, unchanged. `query` (the unit text
        vector) scores the stored regions for tie-breaks and the returned region's score."""
        timings = defaultdict(float)
        head, tail = results[:self.top], results[self.top:]
        started = time.perf_counter()
        images, load_errors = self._load(head)
        timings["load"] += time.perf_counter() - started

        started = time.perf_counter()
        loaded = [index for index, image in enumerate(images) if image is not None]
        replies: list[Reply | None] = [None] * len(head)
        if loaded:
            try:
                answered = self.reranker.replies(text, [images[i] for i in loaded])
                if len(answered) != len(loaded):
                    raise RuntimeError(f"{len(answered)} replies for {len(loaded)} images")
            except Exception as error:  # a backend bug must not cost the user the first-stage results
                answered = [Reply(None, None, f"re-ranker failed: {type(error).__name__}: {error}")] * len(loaded)
            for index, reply in zip(loaded, answered):
                replies[index] = reply
        timings["generate"] += time.perf_counter() - started

        judged = []
        for rank, (result, image, reply) in enumerate(zip(head, images, replies)):
            started = time.perf_counter()
            if image is None:
                judged.append(_judged(result, rank, ERROR, reason=load_errors[rank]))
                continue
            if reply.error is not None:
                judged.append(_judged(result, rank, ERROR, reason=reply.error))
                continue
            height, width = image.shape[:2]
            verdict = parse_reply(reply.text, reply.frame, width, height)
            timings["parse"] += time.perf_counter() - started
            started = time.perf_counter()
            judged.append(self._apply(result, rank, verdict, reply.text, query, (height, width)))
            timings["match"] += time.perf_counter() - started
        ordered = _order(judged)
        for new_rank, item in enumerate(ordered):
            item["rerank"]["rank"] = new_rank
            item["rerank"]["moved"] = new_rank != item["rerank"]["first_stage_rank"]
        self.timings = dict(timings)
        skipped = [{**result, "rerank": {"status": "skipped", "reason": f"beyond the re-rank top {self.top}",
                                         "first_stage_rank": self.top + i, "rank": self.top + i, "moved": False}}
                   for i, result in enumerate(tail)]
        return ordered + skipped

    def _load(self, results: list[dict]) -> tuple[list[np.ndarray | None], dict[int, str]]:
        from maskdex.pipelines.common.images import load_image

        images, errors = [], {}
        for rank, result in enumerate(results):
            try:
                options = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
                images.append(load_image(result["uri"], **options).rgb)
            except (OSError, ValueError) as error:
                images.append(None)
                errors[rank] = f"cannot load the image: {error}"
        return images, errors

    def _apply(self, result: dict, rank: int, verdict, reply: str | None, query, size) -> dict:
        if verdict.status != CONFIRMED:
            return _judged(result, rank, verdict.status, reason=verdict.reason, reply=reply)
        if not verdict.boxes:
            return _judged(result, rank, CONFIRMED, reason=verdict.reason, reply=reply)
        regions = self.store.regions_of(result["image_id"])
        stored = [region for region in regions if list(region["rle"]["size"]) == list(size)]
        if len(stored) < len(regions):
            return _judged(result, rank, CONFIRMED, boxes=verdict.boxes, reply=reply,
                           reason="the image's size differs from its stored masks (changed since indexing?); "
                                  "first-stage region kept")
        scores = [_region_score(region, query) for region in stored]
        match = best_region(verdict.boxes, [xywh_to_xyxy(region["bbox"]) for region in stored], scores)
        if match is None:
            return _judged(result, rank, CONFIRMED, boxes=verdict.boxes, reply=reply,
                           reason="no stored region overlaps the box; first-stage region kept")
        region = stored[match.region]
        matched = {"region_id": region["region_id"], "bbox": list(region["bbox"]), "rle": region["rle"],
                   "score": scores[match.region]}
        item = _judged(result, rank, CONFIRMED, boxes=verdict.boxes, reply=reply, box_index=match.box)
        item["rerank"]["iou"] = match.iou
        item["rerank"]["region_changed"] = region["region_id"] != result["region"]["region_id"]
        item["region"] = matched
        return item


def _region_score(region: dict, query: np.ndarray | None) -> float:
    if query is None:  # no query vector: the mask's own quality is the best tie-break there is
        return float(region.get("predicted_iou") or 0.0)
    return float(np.dot(np.asarray(region["embedding"], dtype=np.float32), np.asarray(query, dtype=np.float32)))


def _judged(result: dict, rank: int, status: str, *, reason: str | None = None, reply: str | None = None,
            boxes: list | None = None, box_index: int = 0) -> dict:
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (boxes or [])]
    rerank = {"status": status, "box": xywh[box_index] if xywh else None, "boxes": xywh, "reason": reason,
              "first_stage_rank": rank}
    if reply is not None:
        rerank["reply"] = reply[:_REPLY_CHARS]
    return {**result, "first_stage_region": result["region"], "rerank": rerank}


def _order(judged: list[dict]) -> list[dict]:
    """Unusable replies stay at their first-stage rank; the other slots take confirmed, then rejected."""
    movable = sorted((item for item in judged if item["rerank"]["status"] in (CONFIRMED, REJECTED)),
                     key=lambda item: (item["rerank"]["status"] != CONFIRMED, item["rerank"]["first_stage_rank"]))
    fill = iter(movable)
    return [item if item["rerank"]["status"] in (UNPARSED, ERROR) else next(fill) for item in judged]


def search_and_rerank(searcher, reranker: ResultReranker, text: str, *, k: int = 10, oversample: int = 10,
                      templates: bool = False, filters: dict | None = None,
                      query: np.ndarray | None = None) -> list[dict]:
    """First stage for max(k, top) images, the second over its top N, the best k returned. query: the
    first stage's unit vector when it is not the text's alone (text with an example); the text is what
    the re-ranker is asked about either way."""
    from maskdex.pipelines.search import check_query_text

    check_query_text(text)
    if query is None:
        query = searcher.embed([text], templates=templates)[0]
    results = searcher.lookup(query, k=max(k, reranker.top), oversample=oversample, filters=filters)
    return reranker.rerank(text, results, query)[:k]


def not_reranked(results: list[dict], reason: str) -> list[dict]:
    """First-stage results, each marked as not re-ranked because of `reason`."""
    return [{**result, "first_stage_region": result["region"],
             "rerank": {"status": ERROR, "box": None, "boxes": [], "reason": reason, "first_stage_rank": rank,
                        "rank": rank, "moved": False}} for rank, result in enumerate(results)]
