"""Matching a re-ranker's box to the stored region it points at: highest box IoU, ties by region score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    region: int  # index into the regions given
    box: int  # index into the boxes given
    iou: float


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(len(boxes), len(others)) IoU of x1, y1, x2, y2 boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(boxes)[:, None] + area(others)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def xywh_to_xyxy(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def best_region(boxes: list[list[float]], region_boxes: list[list[float]], region_scores: list[float]) -> Match | None:
    """The region whose box (x1, y1, x2, y2) overlaps any of `boxes` most; equal IoU goes to the higher
    region score, then the earlier region. None when no region overlaps any box at all."""
    if not boxes or not region_boxes:
        return None
    ious = box_iou(np.asarray(boxes), np.asarray(region_boxes))  # boxes x regions
    per_region = ious.max(axis=0)
    scores = np.asarray(region_scores, dtype=np.float64)
    # lexsort: last key is primary. Highest IoU, then highest score, then lowest index.
    order = np.lexsort((np.arange(len(per_region)), -scores, -per_region))
    chosen = int(order[0])
    if per_region[chosen] <= 0:
        return None
    return Match(region=chosen, box=int(ious[:, chosen].argmax()), iou=float(per_region[chosen]))
