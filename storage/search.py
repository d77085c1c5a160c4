"""Text-to-image retrieval over region embeddings (design.md section 4).

Search regions for k x oversample rows, group them by image (image score = its best region's
score), keep the top k images. Scores are cosine similarities: higher is better.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from maskdex.storage import vector_index
from maskdex.storage.tables import sql_strings

FILTER_KEYS = ("min_area", "max_area", "image_ids", "exclude_image_ids")
_REGION_COLUMNS = ["region_id", "image_id", "rle", "bbox", "_distance"]  # Lance warns unless _distance is named
# How much to widen the candidate rows when they cover fewer than k images.
_WIDEN = 4


def combine_queries(text: np.ndarray | None, example: np.ndarray | None, weight: float = 0.5) -> np.ndarray:
    """One query from a text and an example vector (both unit): normalise((1 - weight) * text + weight *
    example), so weight is the example's share (0: the text alone, 1: the example alone); either vector
    alone when the other is None. Raises ValueError when they cancel out."""
    if text is None or example is None:
        only = text if example is None else example
        if only is None:
            raise ValueError("nothing to search with: give a text, an indexed region (like) or an image")
        return np.asarray(only, dtype=np.float32)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the example's weight must be between 0 and 1, got {weight}")
    if weight in (0.0, 1.0):  # one of the two alone, as it is: the same ranking and scores to the bit
        return np.asarray(example if weight else text, dtype=np.float32)
    mixed = (1.0 - weight) * np.asarray(text, np.float32) + weight * np.asarray(example, np.float32)
    norm = float(np.linalg.norm(mixed))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("the text and the example cancel out at this weight: change the weight")
    return (mixed / norm).astype(np.float32)


def without_image(filters: dict | None, image_id: str | None) -> dict | None:
    """The filters with image_id left out of the results (a query by example's own image); None: unchanged."""
    if image_id is None:
        return filters
    filters = dict(filters or {})
    filters["exclude_image_ids"] = [*(filters.get("exclude_image_ids") or []), image_id]
    return filters


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
    if filters.get("exclude_image_ids"):  # a query by example leaves out its own image when asked
        clauses.append(f"image_id NOT IN {sql_strings(filters['exclude_image_ids'])}")
    return " AND ".join(clauses) or None


class UriCache:
    """image_id -> uri of committed images, the most recently used first out of a bounded map.

    A hit saves the images-table lookup, the second query of a search; a miss (an image not
    committed) is never cached. An images row may be deleted (storage/removal.py: its regions go
    after it) or re-pointed to a moved file (a sync), so the cache holds for one version of the
    images table and is dropped when the table moves on: asking for the version costs a fraction of
    a millisecond, and a reader's table looks for a new one at most every READER_CONSISTENCY.
    """

    def __init__(self, size: int = 100_000):
        self.size = size
        self._uris: OrderedDict[str, str] = OrderedDict()
        self._version: int | None = None
        self._lock = threading.Lock()

    def lookup(self, images, image_ids: list[str]) -> dict[str, str]:
        version = images.version
        with self._lock:
            if version != self._version:
                self._uris.clear()
                self._version = version
            found = {image_id: self._uris[image_id] for image_id in image_ids if image_id in self._uris}
            for image_id in found:
                self._uris.move_to_end(image_id)
        missing = [image_id for image_id in image_ids if image_id not in found]
        if missing:
            fetched = _uris(images, missing)
            with self._lock:
                if version == self._version:  # else fetched from a version already left behind
                    self._uris.update(fetched)
                    while len(self._uris) > self.size:
                        self._uris.popitem(last=False)
            found.update(fetched)
        return found


def search_images(regions, images, query: np.ndarray, *, k: int, oversample: int, where: str | None,
                  settings: vector_index.SearchSettings | None, uris: UriCache | None = None,
                  version: int | None = None) -> list[dict]:
    """Top k images for a unit query vector. settings=None searches exactly (no vector index).
    version: the regions table's version where the caller has just asked for it (one round trip
    fewer); by default the table is asked."""
    uris = uris or UriCache(0)
    dataset = _SNAPSHOTS.of(regions, regions.version if version is None else version)
    limit = k * oversample
    while True:
        # Probe adaptively when a filter or a widened limit may need rows beyond nprobes partitions.
        adaptive = where is not None or limit > k * oversample
        hits = _nearest_regions(dataset, query, limit, where, settings, adaptive)
        best = list(_best_region_per_image(hits).items())
        results = []
        # Look the uris up k images at a time: a region whose image has no images row (left by a
        # crashed commit) is skipped, and those are rare, so one lookup nearly always does.
        for start in range(0, len(best), k):
            candidates = best[start:start + k]
            uris_of = uris.lookup(images, [image_id for image_id, _ in candidates])
            results += [_result(image_id, uris_of[image_id], hit) for image_id, hit in candidates
                        if image_id in uris_of]
            if len(results) >= k:
                return results[:k]
        if hits.num_rows < limit:
            return results
        limit *= _WIDEN


def _nearest_regions(dataset, query: np.ndarray, limit: int, where: str | None,
                     settings: vector_index.SearchSettings | None, adaptive: bool) -> pa.Table:
    nearest = {"column": vector_index.VECTOR_COLUMN, "q": query, "k": limit, "metric": vector_index.METRIC}
    if settings is None:
        nearest["use_index"] = False
    else:
        if settings.refine_factor:
            nearest["refine_factor"] = settings.refine_factor
        if settings.ef:
            # Lance refuses a beam narrower than the candidates it is to return.
            nearest["ef"] = max(settings.ef, limit * (settings.refine_factor or 1))
        if adaptive:
            # Lance searches further partitions, from nprobes up to every one, until it has
            # `limit` rows that pass the filter, so fewer rows means there are no more. Not the
            # default: with refine_factor set, it then probes every partition.
            nearest["minimum_nprobes"] = settings.nprobes
            nearest["search_effort"] = 0.0  # start at the minimum (Lance's default starts half way to all)
        else:
            nearest["nprobes"] = settings.nprobes
    return dataset.to_table(columns=_REGION_COLUMNS, nearest=nearest, filter=where, prefilter=where is not None)


class _Snapshots:
    """Each table's Lance dataset at the table's current version (LanceDB decides when to look for a
    newer one: storage/tables.py). A nearest query through it is one call into Lance, where LanceDB's
    query builder makes about seven round trips through its event loop (schema, blob checks, version,
    the query): most of a small query's time in the query service's profile. A new version is
    checked out from the previous one, so the vector index stays in the session's cache."""

    def __init__(self):
        self._datasets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def of(self, table, version: int):
        with self._lock:
            dataset = self._datasets.get(table)
        if dataset is None:
            dataset = table.to_lance()
        elif dataset.version != version:
            dataset = dataset.checkout_version(version)
        else:
            return dataset
        with self._lock:
            self._datasets[table] = dataset
        return dataset


_SNAPSHOTS = _Snapshots()


def _best_region_per_image(hits: pa.Table) -> dict[str, dict]:
    """image_id -> its best hit, in best-first order (hits come sorted by distance). Only each
    image's first row is converted to Python: the rest are never looked at."""
    image_ids = hits["image_id"].to_pylist()
    first: dict[str, int] = {}
    for row, image_id in enumerate(image_ids):
        first.setdefault(image_id, row)
    picked = hits.take(pa.array(list(first.values()), type=pa.int64())).to_pylist()
    return dict(zip(first, picked))


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
