"""Segmenting the images of an index with a support set, on Ray Data, into the `segmentations` table.

The images are those the index holds (all, or the top k of a text search). Actors (on GPUs where
the cluster has them) hold a Segmenter each and segment a batch of images at a time, training the
batch's heads together (Segmenter.segment_many). Results stream back to this driver, the one
writer, which commits them in batches: a killed job loses only the uncommitted batch, and a re-run
of the same key (set, classes, mode, shots-only, seed, models) skips every image already stored.
An image that fails (file gone, changed since it was indexed, unreadable) gets a 'failed' row with
the cause; re-runs leave it alone unless retry_failed.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import ray

from maskdex.operators.registry.presets import get_preset, require_weights
from maskdex.pipelines.common.images import load_image
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, actor_pool, device_for_cluster, init_ray
from maskdex.pipelines.fewshot.outputs import labels_image
from maskdex.pipelines.fewshot.request import SegmentSpec, check_spec
from maskdex.pipelines.fewshot.segmenter import SegmentCall, SegmentResult, SegmentSettings, Segmenter
from maskdex.storage.index_store import IndexStore
from maskdex.storage.schemas import FAILED, OK
from maskdex.storage.segmentation_store import SegmentationKey, SegmentationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Which indexed images: every one (query None), or the top k of a text search."""

    query: str | None = None
    k: int = 100

    def __post_init__(self):
        if self.query is not None and not self.query.strip():
            raise ValueError("the search text is empty")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def describe(self) -> str:
        return "all indexed images" if self.query is None else f"top {self.k} for {self.query!r}"


@dataclass(frozen=True)
class SegmentIndexSettings:
    segment: SegmentSettings = SegmentSettings()
    # batch_size: images per actor call, whose heads train together (more fills a GPU better). On a
    # CPU a batch of 8 is about 0.1 s of work, short enough that Ray Data's cost per task kept the
    # actors waiting: 16 gave the started job 15-20% more images/s (benchmarks/segment_index.py).
    actors: StageResources = StageResources(max_actors=1, num_cpus=1.0, batch_size=16)
    commit_every: int = 16  # rows per commit: fewer commits against less work lost to a kill
    retry_failed: bool = False

    def __post_init__(self):
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {self.commit_every}")


@dataclass
class SegmentIndexSummary:
    key: SegmentationKey
    selection: str
    selected: int = 0
    skipped: int = 0  # already in the table for this key
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first results reached the writer: the actors' start, mostly imports
    failures: list[tuple[str, str]] = field(default_factory=list)  # (uri, error)

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"set": self.key.set_name, "classes": list(self.key.classes), "mode": self.key.mode,
                "models": self.key.fingerprint, "shots_only": self.key.shots_only, "seed": self.key.seed,
                "selection": self.selection, "selected": self.selected, "skipped": self.skipped, "ok": self.ok,
                "failed": self.failed, "seconds": round(self.seconds, 3),
                "startup_seconds": round(self.startup_seconds, 3),
                "images_per_second": round(self.images_per_second, 3),
                "failures": [{"uri": uri, "error": error} for uri, error in self.failures]}

    def render(self) -> str:
        started = f"; first results after {self.startup_seconds:.1f}s" if self.startup_seconds else ""
        lines = [f"segmented {self.ok + self.failed} of {self.selected} images ({self.selection}) with set "
                 f"{self.key.set_name!r} in {self.seconds:.1f}s ({self.images_per_second:.2f} images/s)",
                 f"  ok {self.ok}, failed {self.failed}, already segmented {self.skipped}{started}",
                 f"  classes {', '.join(self.key.classes)}; mode {self.key.mode}; seed {self.key.seed}"]
        lines += [f"  failed: {uri}: {error}" for uri, error in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more (status 'failed' in the segmentations table)")
        return "\n".join(lines)


def segmentation_key(db: str, spec: SegmentSpec, settings: SegmentSettings) -> SegmentationKey:
    """The spec's key, its classes resolved (all of the set's, sorted, when none are named).
    Raises what check_spec raises for a spec that cannot run."""
    supports = check_spec(db, settings, spec)
    classes = spec.classes if spec.classes is not None else supports.classes
    return SegmentationKey(spec.set_name, tuple(classes), spec.mode, get_preset(settings.models).fingerprint,
                           bool(spec.shots_only), int(spec.seed))


def select_images(db: str, selection: Selection, settings: SegmentSettings) -> list[tuple[str, str]]:
    """(image_id, uri) of the selected images that indexed ok: by image_id, or best first for a search."""
    if selection.query is None:
        index = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
        return sorted(index.image_uris().items())
    from maskdex.pipelines.search import TextSearcher

    searcher = TextSearcher(db, weights=settings.weights, device=settings.device)
    return [(hit["image_id"], hit["uri"]) for hit in searcher.search(selection.query, k=selection.k)]


def run_segment_index(db: str, spec: SegmentSpec, selection: Selection = Selection(),
                      settings: SegmentIndexSettings = SegmentIndexSettings(),
                      address: str | None = None) -> SegmentIndexSummary:
    """Segment the selected images of the index at db into its segmentations table; see the module doc."""
    started = time.perf_counter()
    require_weights(settings.segment.models, settings.segment.weights, ("dense_clip",))  # before Ray or a table
    key = segmentation_key(db, spec, settings.segment)
    spec = replace(spec, classes=key.classes)  # every actor labels with the same class order
    images = select_images(db, selection, settings.segment)
    store = SegmentationStore.open(db)
    if settings.retry_failed:
        store.forget_failed(key)
    done = store.done_image_ids(key)
    todo = [{"image_id": image_id, "uri": uri} for image_id, uri in images if image_id not in done]
    summary = SegmentIndexSummary(key, selection.describe(), selected=len(images), skipped=len(images) - len(todo))
    if todo:
        init_ray(address)
        device, actors = device_for_cluster(settings.segment.device, settings.actors, ray.cluster_resources())
        blocks = -(-len(todo) // actors.batch_size)
        dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
            SegmentIndexStage,
            fn_constructor_kwargs={"db": db, "settings": replace(settings.segment, device=device), "spec": spec,
                                   "threads": max(1, int(actors.num_cpus))},
            **actor_pool(actors),
        )
        progress = Progress("segment-index", len(todo))
        for batch in dataset.iter_batches(batch_size=settings.commit_every, batch_format="numpy"):
            if not summary.startup_seconds:
                summary.startup_seconds = time.perf_counter() - started
            rows = [table_row(batch, index) for index in range(len(batch["image_id"]))]
            store.commit(key, rows)
            for row in rows:
                if row["status"] == OK:
                    summary.ok += 1
                else:
                    summary.failed += 1
                    summary.failures.append((row["uri"], row["error"]))
            progress.advance(len(rows))
        store.tidy()
    summary.seconds = time.perf_counter() - started
    return summary


def segment_rows(segmenter: Segmenter, items: list[dict], spec: SegmentSpec) -> list[dict]:
    """Table rows (without the key's columns) for {image_id, uri} items: load each file, check it is
    the file that was indexed, segment the loaded ones together."""
    rows: list[dict | None] = []
    loaded: list[tuple[int, SegmentCall]] = []
    for item in items:
        try:
            image = load_image(item["uri"], max_pixels=segmenter.settings.max_pixels)
            if image.file_id != item["image_id"]:
                raise ValueError(f"the file at {item['uri']} changed since it was indexed (its sha256 is now "
                                 f"{image.file_id})")
            loaded.append((len(rows), SegmentCall(image.rgb, spec.set_name, spec.class_list, spec.mode,
                                                  spec.shots_only, spec.seed, item["image_id"])))
            rows.append(None)
        except Exception as error:  # noqa: BLE001 - one bad image must not stop the others
            rows.append(failed_row(item, error))
    results = _segment_loaded(segmenter, [call for _, call in loaded]) if loaded else []
    for (position, _), result in zip(loaded, results):
        item = items[position]
        rows[position] = failed_row(item, result) if isinstance(result, Exception) else ok_row(item, result)
    return rows


def _segment_loaded(segmenter: Segmenter, calls: list[SegmentCall]) -> list:
    """Segmenter.segment_many over one spec's images (their heads train together)."""
    results = segmenter.segment_many(calls)
    shared = results[0]
    # segment_many gives every call of the batch the one error that stopped them all together.
    if isinstance(shared, Exception) and all(result is shared for result in results):
        if isinstance(shared, ValueError):  # the spec itself no longer holds (the set was removed): stop
            raise shared
        if len(calls) > 1:  # e.g. the stack did not fit the GPU: one at a time instead
            log.warning("a batch of %d images failed together (%s); segmenting them one at a time", len(calls),
                        shared)
            return [result for call in calls for result in _segment_loaded(segmenter, [call])]
    return results


def ok_row(item: dict, result: SegmentResult) -> dict:
    height, width = result.labels.shape
    png = io.BytesIO()
    labels_image(result.labels, len(result.class_names)).save(png, format="PNG")
    return {"image_id": item["image_id"], "uri": item["uri"], "status": OK, "error": None, "width": width,
            "height": height, "labels_png": png.getvalue(),
            "pixel_fractions": [result.pixel_fractions[name] for name in result.class_names],
            "visual_support": list(result.visual_support), "text_support": list(result.text_support),
            "used_fallback": result.used_fallback, "regions": result.regions}


def failed_row(item: dict, error: Exception) -> dict:
    # maskdex's own errors (ValueError, OSError) say what went wrong; others get their type.
    message = str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"
    return {"image_id": item["image_id"], "uri": item["uri"], "status": FAILED, "error": message or type(error).__name__}


# Rows cross from the actors to the driver as three columns: the ids, the PNG, the rest as JSON.
def _pack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {"image_id": np.asarray([row["image_id"] for row in rows], dtype=object),
            "labels_png": np.asarray([row.get("labels_png") or b"" for row in rows], dtype=object),
            "fields": np.asarray([json.dumps({k: v for k, v in row.items() if k not in ("image_id", "labels_png")})
                                  for row in rows], dtype=object)}


def table_row(batch: dict[str, np.ndarray], index: int) -> dict:
    row = {"image_id": str(batch["image_id"][index]), **json.loads(batch["fields"][index])}
    if row["status"] == OK:
        row["labels_png"] = bytes(batch["labels_png"][index])
    return row


class SegmentIndexStage:
    """A Segmenter on an actor: a batch of {image_id, uri} in, its table rows out."""

    def __init__(self, db: str, settings: SegmentSettings, spec: SegmentSpec, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.segmenter = Segmenter(db, settings)
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [{"image_id": str(image_id), "uri": str(uri)} for image_id, uri in zip(batch["image_id"], batch["uri"])]
        return _pack(segment_rows(self.segmenter, items, self.spec))
