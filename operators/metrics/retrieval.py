"""Text-to-image retrieval metrics (design.md section 5), over one query's ranked results.

The MaTIR paper's exact definitions were not available; these are ours:
- AP@K = (1 / min(|R_q|, K)) * sum over ranks i <= K of precision@i * rel_i, where R_q are the
  query's relevant images. Image level: rank i is relevant when its image shows the query.
  Object level (AP@K@t): only when, in addition, the returned mask has IoU >= t with one of the
  query's ground-truth instances in that image.
- recall@k: 1 when a relevant result is among the top k, else 0 (averaged over queries, the
  fraction of queries answered within k results).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskdex.operators.common import rle as rle_codec


def average_precision_at_k(relevant: Sequence[bool], n_relevant: int, k: int) -> float:
    """AP@K of a ranking given as relevance flags, best first, for a query with n_relevant relevant items."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_relevant < 1:
        raise ValueError("AP is undefined for a query without relevant items")
    flags = np.asarray(relevant, dtype=bool)[:k]
    if flags.sum() > n_relevant:
        raise ValueError(f"{int(flags.sum())} relevant results for a query with {n_relevant} relevant items")
    precision = np.cumsum(flags) / np.arange(1, len(flags) + 1)
    return float((precision * flags).sum() / min(n_relevant, k))


def recall_at_k(relevant: Sequence[bool], k: int) -> float:
    """1.0 when any of the top k results is relevant, else 0.0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.asarray(relevant, dtype=bool)[:k].any())


def matches_an_instance(mask: dict, instances: Sequence[dict], threshold: float = 0.5) -> bool:
    """Whether a returned mask (COCO RLE) has IoU >= threshold with any ground-truth instance (COCO RLEs)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {threshold}")
    return bool(instances) and float(rle_codec.iou(mask, list(instances)).max()) >= threshold
