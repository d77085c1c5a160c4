"""Text-to-image retrieval over region embeddings (design.md section 4).

Search regions for k x oversample rows, group them by image (image score = its best region's
score), keep the top k images. Scores are cosine similarities: higher is better.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from maskdex.storage import vector_index
from maskdex.storage.tables import sql_string, sql_strings  # noqa: F401 (sql_string: callers import it here)

FILTER_KEYS = ("min_area", "max_area", "image_ids")
_REGION_COLUMNS = ["region_id", "image_id", "rle", "bbox", "_distance"]
# How much to widen the candidate rows when they cover fewer than k images.
_WIDEN = 4


def where_clause(filters: dict | None) -> str | None:
    """SQL for the optional scalar filters; raises ValueError on an unknown key."""
    if not filters:
        return None
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"unknown search filter(s) {unknown}; known: {list(FILTER_KEYS)}")
    clauses = []
    if filters.get("min_area") is not None:
        clauses.append(f"area >= {int(filters['min_area'])}")
    if filters.get("max_area") is not None:
        clauses.append(f"area <= {int(filters['max_area'])}")
    if filters.get("image_ids") is not None:
        clauses.append(f"image_id IN {sql_strings(filters['image_ids'])}")
    return " AND ".join(clauses) or None


def search_images(regions, images, query: np.ndarray, *, k: int, oversample: int, where: str | None,
                  nprobes: int | None) -> list[dict]:
    """Top k images for a unit query vector. nprobes=None searches exactly (no vector index)."""
    limit = k * oversample
    while True:
        # Probe adaptively when a filter or a widened limit may need rows beyond nprobes partitions.
        adaptive = where is not None or limit > k * oversample
        hits = _nearest_regions(regions, query, limit, where, nprobes, adaptive)
        best = list(_best_region_per_image(hits).items())
        results = []
        # Look the uris up k images at a time: a region whose image has no images row (left by a
        # crashed commit) is skipped, and those are rare, so one lookup nearly always does.
        for start in range(0, len(best), k):
            candidates = best[start:start + k]
            uris = _uris(images, [image_id for image_id, _ in candidates])
            results += [_result(image_id, uris[image_id], hit) for image_id, hit in candidates if image_id in uris]
            if len(results) >= k:
                return results[:k]
        if hits.num_rows < limit:
            return results
        limit *= _WIDEN


def _nearest_regions(regions, query: np.ndarray, limit: int, where: str | None, nprobes: int | None,
                     adaptive: bool) -> pa.Table:
    builder = (regions.search(query, vector_column_name=vector_index.VECTOR_COLUMN)
               .distance_type(vector_index.METRIC).select(_REGION_COLUMNS).limit(limit))
    if where:
        builder = builder.where(where, prefilter=True)
    if nprobes is None:
        return builder.bypass_vector_index().to_arrow()
    builder = builder.refine_factor(vector_index.REFINE_FACTOR)
    if adaptive:
        # No cap on probes: Lance searches further partitions until it has `limit` rows, so
        # fewer rows means there are no more. Not the default: with refine_factor set, Lance
        # then probes every partition.
        return builder.minimum_nprobes(nprobes).maximum_nprobes(0).to_arrow()
    return builder.nprobes(nprobes).to_arrow()


def _best_region_per_image(hits: pa.Table) -> dict[str, dict]:
    """image_id -> its best hit, in best-first order (hits come sorted by distance)."""
    best: dict[str, dict] = {}
    for hit in hits.to_pylist():
        best.setdefault(hit["image_id"], hit)
    return best


def _uris(images, image_ids: list[str]) -> dict[str, str]:
    if not image_ids:
        return {}
    rows = (images.search().where(f"image_id IN {sql_strings(image_ids)}")
            .select(["image_id", "uri"]).limit(None).to_arrow())
    return dict(zip(rows["image_id"].to_pylist(), rows["uri"].to_pylist()))


def _result(image_id: str, uri: str, hit: dict) -> dict:
    score = 1.0 - float(hit["_distance"])
    region = {"region_id": hit["region_id"], "bbox": list(hit["bbox"]), "rle": hit["rle"], "score": score}
    return {"image_id": image_id, "uri": uri, "score": score, "region": region}
