"""The re-embed job: a finished index's masks, embedded by another Alpha-CLIP into a new database.

SAM 2 is about three quarters of an index's cost, and a new Alpha-CLIP checkpoint does not change
the masks: this job reads the images again, takes each image's regions from the source database
instead of running SAM 2, and hands them to the index job's own Alpha-CLIP stage (EmbedStage), which
writes the regions as fragments into the new database for the same committer (IndexWriter). So the
new database holds the same image ids, region ids, masks, boxes and scores, with the new model's
embeddings; it is resumable exactly as an index run is (an image whose images row is committed in the
new database is skipped), and the source database is only read, so it keeps serving until the
new one is complete. The service then switches by its config's `db` (and `preset`).

The masks are stored at the original resolution, but the index embedded them on the image as SAM 2
saw it (downscaled to max_side): each stored mask is brought back to that working size by nearest
neighbour, which undoes the index's nearest-neighbour upscale exactly, so the embeddings equal what
the index job gives with the new Alpha-CLIP. A mask that does not come back exactly (a source indexed
with another max_side) fails its image with that cause rather than embedding another mask.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np
import ray
from PIL import Image

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.registry.presets import embedding_dim, reembed_preset
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, device_for_cluster, init_ray
from maskdex.pipelines.common.sources import read_inputs
from maskdex.pipelines.index.job import (IndexSettings, IndexSummary, at_most_one_per_block, commit_results,
                                        embed_stage, read_blocks)
from maskdex.pipelines.common.decode import to_original_size
from maskdex.pipelines.index.stages import NO_IDENTITY, PENDING, _columns, _prepare, _row
from maskdex.storage.digests import DigestSet, image_keys
from maskdex.storage.index_store import IndexStore
from maskdex.storage.index_writer import CommitPolicy, IndexWriter
from maskdex.storage.schemas import FAILED, OK

# Alpha-CLIP is the whole of a re-embed's model work, so its actors take up to a core each (the index
# job gives them a quarter, beside SAM 2's; plan_clip_actors shares the cores out); on GPU nodes the GPU
# reservation decides placement.
REEMBED_CLIP = StageResources(max_actors=None, num_cpus=1.0, batch_size=16)
# The images columns a re-embed carries over from the source database (the rest it computes).
_CARRIED = ("image_id", "uri", "status", "error", "source_size", "source_mtime_ns", "metadata")


def run_reembed(source_db: str, db: str, settings: IndexSettings = IndexSettings(),
                address: str | None = None) -> IndexSummary:
    """Embed every image of source_db again with settings.models's Alpha-CLIP into db (created on
    first use, resumed after). settings.models names a preset whose SAM 2 is the source's, or
    'keep+ALPHACLIP' (presets.reembed_preset). The SAM 2 settings of `settings` are not used."""
    started = time.perf_counter()
    if _same_location(source_db, db):
        raise ValueError(f"--from and --db both name {db}: a re-embed writes a new database beside the old one")
    source = IndexStore.open(source_db, fingerprint=None, embed_dim=None, read_only=True)
    preset = reembed_preset(settings.models, source.fingerprint)
    settings = IndexSettings(**{**settings.__dict__, "models": preset.name})
    store = IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    writer = IndexWriter(store, CommitPolicy(settings.commit_every, settings.commit_rows, settings.commit_seconds,
                                             settings.compact_every))
    summary = IndexSummary(action="re-embedded")
    todo = _unfinished(source, writer.known, summary)
    if todo:
        init_ray(address)
        cluster = ray.cluster_resources()
        device, clip = device_for_cluster(settings.device, settings.clip, cluster)
        settings = IndexSettings(**{**settings.__dict__, "device": device, "clip": clip})
        dataset = reembed_dataset(source, store, todo, settings, cluster)
        progress = Progress("reembed", len(todo))
        commit_results(dataset, writer, preset.fingerprint, summary, progress)
        summary.startup_seconds = progress.startup_seconds
    writer.close()
    if settings.build_index:
        summary.index = store.upkeep.maybe_build_index()
    summary.seconds = time.perf_counter() - started
    return summary


def reembed_dataset(source: IndexStore, store: IndexStore, todo: list[dict], settings: IndexSettings, cluster: dict):
    """Stored images -> (read again, masks from the source) -> the index job's Alpha-CLIP stage."""
    # Sorted by uri, so members of one tar shard or parquet file share read batches (one pass each).
    todo = sorted(todo, key=lambda row: row["uri"])
    blocks = read_blocks(len(todo), settings)
    dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
        read_stored, fn_kwargs={"source_db": source.uri, "max_pixels": settings.max_pixels,
                                "max_side": settings.max_side},
        num_cpus=settings.read_num_cpus, batch_size=settings.read_batch_size, batch_format="numpy")
    actors, share = plan_clip_actors(cluster, settings, _largest_node_cpus(), blocks)
    return embed_stage(dataset, store, replace(settings, clip=replace(settings.clip, num_cpus=share)), actors)


def plan_clip_actors(cluster: dict, settings: IndexSettings, largest_node_cpus: float | None = None,
                     blocks: int | None = None) -> tuple[int, float]:
    """Alpha-CLIP actors beside one read task, and the CPUs each reserves: the whole job, as no SAM 2 runs.

    On CPUs: a single-threaded actor per core, each reserving at most clip.num_cpus and an equal share
    of what the read task leaves on a node (2 cores: 2 actors of 0.875). Whole-core reservations
    would place one actor on 2 cores and leave the other core to reads that need a tenth of it.
    largest_node_cpus (default: the cluster's CPUs, one node) sizes the share. With GPUs, the GPU
    reservation decides the count and clip.num_cpus is kept. Never more actors than read blocks
    (at_most_one_per_block)."""
    clip = settings.clip
    cpus = float(cluster.get("CPU", 0.0))
    if clip.num_gpus > 0:
        budget = {"CPU": cpus - settings.read_num_cpus, "GPU": float(cluster.get("GPU", 0.0))}
        counts = [int(budget[key] // need + 1e-9) for key, need in (("CPU", clip.num_cpus), ("GPU", clip.num_gpus))
                  if need > 0]
        fits, share = min(counts), clip.num_cpus
    else:
        node_left = (largest_node_cpus or cpus) - settings.read_num_cpus
        share = min(clip.num_cpus, node_left / max(1, round(node_left))) if node_left > 0 else clip.num_cpus
        fits = int((cpus - settings.read_num_cpus) / share + 1e-9)
    actors = max(1, fits if clip.max_actors is None else min(clip.max_actors, fits))
    return at_most_one_per_block(actors, blocks), share


def _largest_node_cpus() -> float | None:
    cpus = [float(node["Resources"].get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")]
    return max(cpus) if cpus else None


def read_stored(batch: dict[str, np.ndarray], *, source_db: str, max_pixels: int, max_side: int) -> dict[str, np.ndarray]:
    """Read a batch of stored images again and attach their stored masks at the working resolution,
    as MaskStage would have found them (a CPU task). An image whose bytes no longer hash to its id,
    or that cannot be read, fails with the cause; a failed source row stays failed, unread."""
    node = ray.get_runtime_context().get_node_id()
    columns = {name: [_plain(value) for value in batch[name]] for name in _CARRIED}
    rows = [dict(zip(_CARRIED, values)) for values in zip(*columns.values())]
    ok = [row for row in rows if row["status"] == OK]
    masks = _source(source_db).masks_of([row["image_id"] for row in ok]) if ok else {}
    read = dict(zip((row["uri"] for row in ok), read_inputs([row["uri"] for row in ok])))
    out = []
    for row in rows:
        identity = tuple(NO_IDENTITY if row[name] is None else int(row[name]) for name in ("source_size", "source_mtime_ns"))
        if row["status"] != OK:
            out.append({**_row(row["uri"], row["image_id"], FAILED, row["error"] or "failed", identity=identity),
                        "regions": "[]", "metadata": row["metadata"] or ""})
            continue
        data, read_error = read[row["uri"]]
        prepared = _prepare(row["uri"], data, read_error, DigestSet(32), max_pixels, max_side, identity)
        if prepared["status"] == PENDING and prepared["image_id"] != row["image_id"]:
            prepared = _row(row["uri"], row["image_id"], FAILED,
                            f"the source changed since it was indexed: its bytes hash to {prepared['image_id']}, "
                            f"not {row['image_id']}; index it again instead", identity=identity)
        prepared["image_id"] = row["image_id"]  # a failed read keeps the id the source database knows it by
        prepared["metadata"] = row["metadata"] or ""
        prepared["regions"] = "[]"
        if prepared["status"] == PENDING:
            working, error = working_masks(masks[row["image_id"]], prepared["image"].shape[:2],
                                           (prepared["height"], prepared["width"]))
            if error is not None:
                prepared.update(status=FAILED, error=error)
            else:
                prepared["regions"] = _json(working)
        out.append(prepared)
    columns_out = _columns(out) if out else {}
    columns_out["node"] = np.asarray([node] * len(out), dtype=object)
    return columns_out


def working_masks(stored: list[dict], working: tuple[int, int], full: tuple[int, int]) -> tuple[list[dict], str | None]:
    """The stored regions (original resolution) as the index's SAM 2 stage handed them to Alpha-CLIP,
    at the working resolution; or an error when a mask does not map back exactly."""
    regions = []
    for region in stored:
        if list(region["rle"]["size"]) != list(full):
            return [], (f"region {region['region_id']} is {tuple(region['rle']['size'])}, the image "
                        f"{full}: the source database does not hold this image's masks")
        fields = {name: region[name] for name in ("rle", "bbox", "area", "predicted_iou", "stability_score")}
        if tuple(working) != tuple(full):
            mask = rle_codec.decode(region["rle"])
            small = np.asarray(Image.fromarray(mask).resize((working[1], working[0]), Image.Resampling.NEAREST))
            rle = rle_codec.encode(small)
            fields = {**fields, "rle": rle, "bbox": rle_codec.bbox(rle), "area": rle_codec.area(rle)}
            if to_original_size(fields, full)["rle"]["counts"] != region["rle"]["counts"]:
                return [], (f"region {region['region_id']} was not made at a working size of {working[1]}x{working[0]} "
                            f"(max_side): re-embed with the max_side the source was indexed with")
        regions.append(fields)
    return regions, None


def _unfinished(source: IndexStore, done: DigestSet, summary: IndexSummary) -> list[dict]:
    """The source's images rows not yet committed in the new database (done: its stored ids)."""
    todo = []
    for rows in source.image_rows(list(_CARRIED)):
        finished = done.contains_many(image_keys([row["image_id"] for row in rows])) if len(done) else [False] * len(rows)
        for row, skip in zip(rows, finished):
            summary.inputs += int(skip)
            summary.skipped += int(skip)
            if not skip:
                todo.append({**row, "error": row["error"] or "", "metadata": row["metadata"] or ""})
    return todo


_SOURCES: dict[str, IndexStore] = {}


def _source(uri: str) -> IndexStore:
    # One read-only store per worker process: opening connects and reads both schemas.
    if uri not in _SOURCES:
        _SOURCES[uri] = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)
    return _SOURCES[uri]


def _same_location(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json(regions: list[dict]) -> str:
    return json.dumps([{**r, "bbox": [int(v) for v in r["bbox"]], "area": int(r["area"]),
                        "predicted_iou": float(r["predicted_iou"]), "stability_score": float(r["stability_score"])}
                       for r in regions])
