"""Greedy one-to-one matching of two mask generators' regions by mask IoU (how the fast generator is held to
the stock one: tests/operators/sam2/test_fast_masks.py, benchmarks/amg.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskdex.operators.common import rle as rle_codec


@dataclass
class Match:
    expected: int  # regions of the reference generator
    got: int  # regions of the generator under test
    matched: int  # reference regions paired with a test region at IoU >= min_iou
    worst_score_gap: float  # largest |predicted_iou| or |stability_score| difference over matched pairs

    @property
    def share(self) -> float:
        return self.matched / max(self.expected, 1)


def match_regions(expected, got, min_iou: float = 0.98) -> Match:
    """Each reference region, best quality first, takes the unmatched test region of highest mask IoU.
    Regions are anything with .rle, .predicted_iou and .stability_score, or dicts with those keys."""
    expected, got = [_fields(r) for r in expected], [_fields(r) for r in got]
    free = list(range(len(got)))
    matched, gap = 0, 0.0
    for rle, iou, stability in expected:
        if not free:
            break
        ious = rle_codec.iou(rle, [got[j][0] for j in free])
        best = int(np.argmax(ious))
        if ious[best] >= min_iou:
            j = free.pop(best)
            matched += 1
            gap = max(gap, abs(iou - got[j][1]), abs(stability - got[j][2]))
    return Match(len(expected), len(got), matched, gap)


def _fields(region):
    if isinstance(region, dict):
        return region["rle"], region["predicted_iou"], region["stability_score"]
    return region.rle, region.predicted_iou, region.stability_score
