"""The index job: image sources -> SAM 2 masks -> Alpha-CLIP embeddings -> LanceDB, on Ray Data.

Reading, hashing and decoding run as CPU tasks, the two models on actor pools (GPU actors on a GPU
cluster, CPU actors here). The Alpha-CLIP actors write each batch's regions as Lance fragments, for
the images the batch owns (pipelines/index/claims.py: copies of one image in a run have one owner);
what streams back to this driver, the one committer (storage/index_writer.py), is the images rows
and the fragments' metadata, which it commits in batches sized by rows and time: regions first, then
the images rows that mark them done, compacting as it goes. A killed job loses only the uncommitted
batch. The next run skips every input whose source identity (uri, size, mtime) is recorded without
reading it, and anything else whose content hash is already stored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow.parquet as pq
import ray

from maskdex.operators.registry.options import ModelOptions
from maskdex.operators.registry.presets import embedding_dim, get_preset, require_weights
from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS
from maskdex.pipelines.index.claims import start_claims
from maskdex.pipelines.index.sync import SyncPlan
from maskdex.pipelines.index.stages import (
    DUPLICATE,
    NO_IDENTITY,
    OK,
    SKIPPED,
    EmbedStage,
    MaskStage,
    image_row,
    read_files,
    read_parquet_rows,
    read_shards,
)
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, actor_pool, device_for_cluster, init_ray
from maskdex.pipelines.common.sources import PARQUET_BYTES_COLUMNS, SourceError, expand_sources, identify
from maskdex.storage.digests import source_key
from maskdex.storage.index_store import IndexStore
from maskdex.storage.index_writer import CommitPolicy, IndexWriter
from maskdex.storage.region_fragments import RegionFragments

log = logging.getLogger(__name__)

# The parts of a preset an index run builds (no dense CLIP: that is for few-shot segmentation).
INDEX_MODELS = ("sam2", "alpha_clip")


@dataclass(frozen=True)
class IndexSettings(ModelOptions):
    mask_settings: dict = field(default_factory=dict)  # overrides of the preset's MaskSettings
    amg: str = "fast"  # automatic mask generator: fast (batched, same masks) or stock (sam2's)
    context: float | None = 0.5  # Alpha-CLIP crop margin around each region's box
    max_side: int = 1024  # images are downscaled to this before SAM 2 (it works at 1024 anyway)
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Files per block. A block moves through the stages as one unit, so this is also how many images
    # reach the writer at a time: small blocks keep results streaming and make a kill lose less.
    read_batch_size: int = 4
    # CPU reservations follow each stage's share of the work on a CPU-only node (per image, one
    # thread: SAM 2 about 3/4, Alpha-CLIP 1/4, reading ~1%; benchmarks/operators.py), so
    # the planner shares a node's cores out as the work is shared, over single-threaded actors:
    # separate processes scale over cores far better than torch's threads inside one SAM 2 call.
    # On GPU nodes the num_gpus reservations decide placement instead.
    read_num_cpus: float = 0.25
    sam: StageResources = StageResources(max_actors=None, num_cpus=0.75)
    # Alpha-CLIP batches 16 images, not ray_pools' 2: each call writes its regions as one Lance
    # fragment, and 2-image calls piled up hundreds of ~40-row fragments that slowed commits and
    # searches (benchmarks/store_scale.py). Alpha-CLIP also batches better on GPU, and a kill loses
    # only uncommitted work whatever the batch, so the larger batch costs little.
    clip: StageResources = StageResources(max_actors=None, num_cpus=0.25, batch_size=16)
    # Commits are sized by rows and time (storage/index_writer.py): at most commit_every images or
    # commit_rows regions each, and one at least every commit_seconds, which bounds what a kill loses.
    commit_every: int = CommitPolicy.commit_images
    commit_rows: int = CommitPolicy.commit_rows
    commit_seconds: float = CommitPolicy.commit_seconds
    compact_every: int = CommitPolicy.compact_every
    retry_failed: bool = False
    build_index: bool = True
    sync: bool = False  # afterwards, remove what the sources no longer hold (pipelines/index/sync.py)


@dataclass
class IndexSummary:
    inputs: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # already in the database before this run
    unread: int = 0  # of those, skipped by source identity without reading the file
    duplicates: int = 0  # same bytes as another input of this run
    regions: int = 0
    seconds: float = 0.0
    startup_seconds: float | None = None  # from the start to the first result (Ray, actors, models); None: no result
    failures: list[tuple[str, str]] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> images its SAM 2 actors handled
    index: dict | None = None
    action: str = "indexed"  # or "re-embedded" (pipelines/index/reembed.py)
    sync: dict | None = None  # with --sync: added, unchanged, changed, removed, repointed

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_second_after_startup(self) -> float:
        """The rate once the first result arrived: what a longer run of the same kind would approach."""
        if self.startup_seconds is None or self.seconds <= self.startup_seconds:
            return 0.0
        return (self.ok + self.failed) / (self.seconds - self.startup_seconds)

    def too_many_failures(self, max_failed_fraction: float) -> str | None:
        """Why this run did not do its work, or None. It did not when it tried inputs and indexed none,
        or when more than max_failed_fraction of the inputs it tried failed; inputs already indexed
        and duplicates count as done, and each failure stays recorded in the images table either way."""
        tried = self.ok + self.failed
        if tried and not self.ok:
            return f"no input could be indexed: all {tried} failed"
        if tried and self.failed > max_failed_fraction * tried:
            return (f"{self.failed} of {tried} inputs failed ({100 * self.failed / tried:.1f}%), more than "
                    f"--max-failed-fraction {max_failed_fraction:g} allows")
        return None

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "failures"},
                "failures": [{"uri": u, "error": e} for u, e in self.failures],
                "images_per_second": round(self.images_per_second, 3),
                "images_per_second_after_startup": round(self.images_per_second_after_startup, 3)}

    def render(self) -> str:
        timing = f"{self.images_per_second:.2f} images/s"
        if self.startup_seconds is not None:
            timing = (f"start-up {self.startup_seconds:.1f}s, then {self.images_per_second_after_startup:.2f} "
                      f"images/s")
        lines = [
            f"{self.action} {self.inputs} inputs in {self.seconds:.1f}s ({timing})",
            f"  ok {self.ok}, failed {self.failed}, already indexed {self.skipped} ({self.unread} decided without "
            f"reading them), duplicates {self.duplicates}",
            f"  regions written {self.regions}",
        ]
        if len(self.nodes) > 1:
            lines.append("  images per node: " + ", ".join(f"{node[:8]} {n}" for node, n in sorted(self.nodes.items())))
        lines += [f"  failed: {uri}: {error}" for uri, error in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures (status 'failed' in the images table)")
        if self.sync:
            lines.append("  sync: " + ", ".join(f"{name} {count}" for name, count in self.sync.items()))
        if self.index:
            lines.append(f"  vector index: {json.dumps(self.index, default=str)}")
        return "\n".join(lines)


def run_index(sources: list[str], db: str, settings: IndexSettings = IndexSettings(),
              address: str | None = None) -> IndexSummary:
    started = time.perf_counter()
    preset = get_preset(settings.models)
    # Everything that can be checked here is checked before Ray starts or a table is created: first
    # that an existing index was built with this preset (the weights would not matter otherwise).
    existed = _refuse_another_build(db, preset)
    require_weights(preset, settings.weights, INDEX_MODELS)
    expanded = expand_sources(sources)
    parquet_columns = _parquet_columns(expanded.parquet)
    store = IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    try:
        return _run(store, sources, expanded, parquet_columns, preset, settings, address, started)
    except BaseException:
        if not existed:  # a run that failed before its first commit leaves no empty database behind
            store.drop_if_empty()
        raise


def _run(store: IndexStore, sources: list[str], expanded, parquet_columns, preset, settings: IndexSettings,
         address: str | None, started: float) -> IndexSummary:
    if settings.retry_failed:
        store.forget_failed()
        store.forget_finished_shards()
    summary = IndexSummary()
    identities = identify(expanded.files)
    shard_identities = identify(expanded.shards)  # one listing call each, shared by the sync and the resume
    plan = (SyncPlan(sources, expanded.files, identities, dict(zip(expanded.shards, shard_identities)))
            if settings.sync else None)
    files = unfinished(store, expanded.files, summary, identities)
    shards = unfinished_shards(store, expanded.shards, shard_identities, summary)
    if not files and not shards and not expanded.parquet:  # nothing to do: no Ray, no models
        return _finish(summary, store, plan, settings, started)
    init_ray(address)
    cluster = ray.cluster_resources()
    settings = settings_for_cluster(settings, cluster)

    writer = IndexWriter(store, CommitPolicy(settings.commit_every, settings.commit_rows, settings.commit_seconds,
                                             settings.compact_every))
    dataset = index_dataset(store, files, expanded.parquet, writer.known, settings, cluster, parquet_columns,
                            shards=shards)

    # Parquet files and tar shards hold an unknown number of images until read.
    progress = Progress("index", None if expanded.parquet or shards else len(files))
    commit_results(dataset, writer, preset.fingerprint, summary, progress, plan,
                   ShardLedger(store, writer) if shards else None)
    writer.close()
    summary.startup_seconds = progress.startup_seconds
    return _finish(summary, store, plan, settings, started)


def _finish(summary: IndexSummary, store: IndexStore, plan: SyncPlan | None, settings: IndexSettings,
            started: float) -> IndexSummary:
    """After the last commit: the sync's removals, then the vector index over what is left."""
    if plan is not None:
        summary.sync = _finish_sync(plan, store, summary, settings)
    if settings.build_index:
        summary.index = store.upkeep.maybe_build_index()
    summary.seconds = time.perf_counter() - started
    return summary


def _refuse_another_build(db: str, preset) -> bool:
    """Whether the index exists; ModelMismatchError when it was built with another preset."""
    try:
        IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip), read_only=True)
    except FileNotFoundError:
        return False  # a new database, created once every check has passed
    return True


class ShardLedger:
    """Which tar shards have all their samples committed, so the next run skips them unopened. Every
    sample of a shard reaches the driver as a row (skipped, failed and duplicate ones too), and the
    shard's last rows say how many it held; once all have been handed to the writer, the writer
    commits and the shard is recorded, in that order (a kill between re-reads the shard, whose
    committed samples are then skipped by key)."""

    def __init__(self, store: IndexStore, writer: IndexWriter):
        self.store, self.writer = store, writer
        self._seen: dict[str, set[str]] = {}
        self._samples: dict[str, int] = {}
        self._identity: dict[str, tuple[int, int]] = {}

    def saw(self, rows: list[dict]) -> None:
        finished = []
        for row in rows:
            shard = str(row.get("shard") or "")
            if not shard:
                continue
            self._seen.setdefault(shard, set()).add(str(row["uri"]))  # a retried read task repeats rows
            self._identity[shard] = (int(row["source_size"]), int(row["source_mtime_ns"]))
            if int(row["shard_samples"]) >= 0:
                self._samples[shard] = int(row["shard_samples"])
            if shard in self._samples and len(self._seen[shard]) >= self._samples[shard]:
                finished.append(shard)
        finished = [shard for shard in dict.fromkeys(finished) if shard in self._seen]
        if not finished:
            return
        self.writer.flush()
        self.store.record_finished_shards([(shard, *self._identity[shard], self._samples[shard]) for shard in finished
                                           if self._identity[shard][0] != NO_IDENTITY])
        for shard in finished:
            del self._seen[shard]


def commit_results(dataset, writer: IndexWriter, models: str, summary: IndexSummary, progress: Progress,
                   plan: SyncPlan | None = None, shards: ShardLedger | None = None) -> None:
    """Hand what the Alpha-CLIP stage (EmbedStage) streams back to the committer, counting every input.
    The one driver loop of the index and re-embed jobs."""
    # batch_size=None: each block as it arrives, so the writer's clock, not a batch size, decides commits.
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        writes: dict[str, list[dict]] = {}  # one worker write (an Alpha-CLIP batch) -> its images
        rows_ = list(_rows(batch))
        for row in rows_:
            summary.inputs += 1
            progress.advance()
            if row["status"] == SKIPPED:
                summary.skipped += 1
                if plan is not None:
                    plan.saw(str(row["uri"]), str(row["image_id"]))
            elif row["status"] == DUPLICATE:
                summary.duplicates += 1
            else:
                writes.setdefault(row["fragments"], []).append(row)
        for write, rows in writes.items():
            taken = writer.add([image_row(row, models) for row in rows], RegionFragments.from_json(write))
            for row, took in zip(rows, taken):
                if not took:
                    summary.duplicates += 1
                    continue
                summary.nodes[row["node"]] = summary.nodes.get(row["node"], 0) + 1
                if row["status"] == OK:
                    summary.ok += 1
                    summary.regions += int(row["n_regions"])
                else:
                    summary.failed += 1
                    summary.failures.append((row["uri"], row["error"]))
        if shards is not None:
            shards.saw(rows_)


def index_dataset(store: IndexStore, files: list[tuple[str, int, int]], parquet: list[str], known, settings: IndexSettings,
                  cluster: dict, parquet_columns: tuple[str, str | None] | None = None, *,
                  shards: list[tuple[str, int, int]] = ()):
    """The job's Ray Data pipeline, up to what reaches the driver: one row per input, with the
    images row's fields, n_regions and the worker write holding its regions (never the regions)."""
    # Files are read in blocks of known size; the samples of shards and the rows of parquet files
    # are not counted before the job.
    blocks = read_blocks(len(files), settings) if not (parquet or shards) else None
    sam_actors, clip_actors = plan_actors(cluster, settings, blocks)
    if parquet and parquet_columns is None:
        parquet_columns = _parquet_columns(parquet)
    sources = ray.put(store.known_sources()) if shards else None
    dataset = _read_stage(files, parquet, ray.put(known), settings, parquet_columns, shards=shards, sources=sources)
    dataset = dataset.map_batches(
        MaskStage,
        fn_constructor_kwargs={"preset": settings.models, "weights": settings.weights, "device": settings.device,
                               "dtype": settings.dtype, "settings": settings.mask_settings,
                               "threads": max(1, int(settings.sam.num_cpus)), "amg": settings.amg},
        **actor_pool(settings.sam, sam_actors),
    )
    return embed_stage(dataset, store, settings, clip_actors)


def embed_stage(dataset, store: IndexStore, settings: IndexSettings, actors: int):
    """Alpha-CLIP on `actors` actors, writing regions into store (the index and re-embed jobs' last stage)."""
    return dataset.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"preset": settings.models, "weights": settings.weights, "device": settings.device,
                               "dtype": settings.dtype, "context": settings.context, "batch_size": 64,
                               "threads": max(1, int(settings.clip.num_cpus)),
                               "regions_uri": store.regions_dataset_uri, "fingerprint": store.fingerprint,
                               "claims": start_claims()},
        **actor_pool(settings.clip, actors),
    )


def settings_for_cluster(settings: IndexSettings, cluster: dict) -> IndexSettings:
    """The settings with device "auto" decided for the cluster and both model stages' resources sized to
    it (see device_for_cluster)."""
    device, sam = device_for_cluster(settings.device, settings.sam, cluster)
    _, clip = device_for_cluster(settings.device, settings.clip, cluster)
    return replace(settings, device=device, sam=sam, clip=clip)


def plan_actors(cluster: dict, settings: IndexSettings, blocks: int | None = None) -> tuple[int, int]:
    """How many SAM 2 and Alpha-CLIP actors to start so that all of them, and one read task, fit.

    One Alpha-CLIP actor and one read task are set aside first, the rest goes to SAM 2 (the slow
    stage), then what remains to more Alpha-CLIP actors. Each stage gets at least one actor, and at
    most its max_actors (None: no cap) and one per read block (at_most_one_per_block).
    """
    for stage in (settings.sam, settings.clip):
        if stage.max_actors is not None and stage.max_actors < 1:
            raise ValueError(f"max_actors must be >= 1 or None, got {stage.max_actors}")
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    sam, clip = settings.sam, settings.clip
    free = {"CPU": cpus - settings.read_num_cpus - clip.num_cpus, "GPU": gpus - clip.num_gpus}

    def fits(stage: StageResources, budget: dict) -> int:
        counts = [int(budget[key] // need + 1e-9) for key, need in (("CPU", stage.num_cpus), ("GPU", stage.num_gpus))
                  if need > 0]
        return min(counts) if counts else (stage.max_actors or 1)

    def capped(stage: StageResources, count: int) -> int:
        return max(1, count if stage.max_actors is None else min(stage.max_actors, count))

    sam_actors = capped(sam, fits(sam, free))
    free = {"CPU": free["CPU"] - sam_actors * sam.num_cpus, "GPU": free["GPU"] - sam_actors * sam.num_gpus}
    clip_actors = capped(clip, 1 + fits(clip, free))
    return at_most_one_per_block(sam_actors, blocks), at_most_one_per_block(clip_actors, blocks)


def read_blocks(files: int, settings: IndexSettings) -> int:
    """The read stage's blocks for this many files: its parallelism, and every later stage's."""
    return -(-files // settings.read_batch_size)


def at_most_one_per_block(actors: int, blocks: int | None) -> int:
    """A stage's planned actors, but no more than the input's read blocks (None: not known) and at
    least one: an actor that no block reaches only loads its models, and on a small cluster those
    loads take the cores the working actors need."""
    return actors if blocks is None else max(1, min(actors, blocks))


def unfinished(store: IndexStore, files: list[str], summary: IndexSummary,
               identities: list[tuple[int, int] | None] | None = None) -> list[tuple[str, int, int]]:
    """(uri, size, mtime_ns) of each file whose identity is not recorded yet (-1s when it has
    none); the others are counted as skipped, decided from metadata alone. identities: the files'
    (identify), when the caller has them."""
    identities = identify(files) if identities is None else identities
    recorded = store.known_sources()
    keys = [source_key(uri, *identity) if identity else b"" for uri, identity in zip(files, identities)]
    done = recorded.contains_many(keys) if len(recorded) else [False] * len(files)
    todo = []
    for uri, identity, finished in zip(files, identities, done):
        if finished and identity:
            summary.inputs += 1
            summary.skipped += 1
            summary.unread += 1
        else:
            todo.append((uri, *(identity or (NO_IDENTITY, NO_IDENTITY))))
    return todo


def _finish_sync(plan: SyncPlan, store: IndexStore, summary: IndexSummary, settings: IndexSettings) -> dict:
    # The closing upkeep (maybe_build_index) tidies after the removal; without it, the removal does.
    return plan.finish(store, added=summary.ok + summary.failed, unchanged=summary.unread,
                       tidy=not settings.build_index)


def _parquet_columns(parquet: list[str]) -> tuple[str, str | None] | None:
    """(image-bytes column, key column or None) of the parquet sources, read from the first one's
    schema (object-store files: img2dataset's names are assumed); None without parquet sources."""
    if not parquet:
        return None
    schema = pq.read_schema(parquet[0]) if "://" not in parquet[0] else None
    names = set(schema.names) if schema is not None else set(PARQUET_BYTES_COLUMNS)
    bytes_column = next((c for c in PARQUET_BYTES_COLUMNS if c in names), None)
    if bytes_column is None:
        raise SourceError(f"parquet file {parquet[0]} has no image-bytes column "
                          f"(looked for {', '.join(PARQUET_BYTES_COLUMNS)}; it has {', '.join(sorted(names))})")
    return bytes_column, next((c for c in ("key", "url") if c in names), None)


def unfinished_shards(store: IndexStore, shards: list[str], identities: list[tuple[int, int] | None],
                      summary: IndexSummary) -> list[tuple[str, int, int]]:
    """(uri, size, mtime_ns) of each tar shard not recorded as finished under its identity (-1s when
    it has none); the samples of the others are counted as skipped, decided without opening them."""
    if not shards:
        return []
    finished = store.finished_shards()
    todo = []
    for uri, identity in zip(shards, identities):
        samples = finished.get(source_key(uri, *identity)) if identity else None
        if samples is None:
            todo.append((uri, *(identity or (NO_IDENTITY, NO_IDENTITY))))
            continue
        summary.inputs += samples
        summary.skipped += samples
        summary.unread += samples
    return todo


def _read_stage(files: list[tuple[str, int, int]], parquet: list[str], known, settings: IndexSettings,
                parquet_columns: tuple[str, str | None] | None, *, shards: list[tuple[str, int, int]] = (),
                sources=None):
    common = {"known": known, "max_pixels": settings.max_pixels, "max_side": settings.max_side}
    parts = []
    if shards:
        items = ray.data.from_items([{"uri": uri, "source_size": size, "source_mtime_ns": mtime}
                                     for uri, size, mtime in shards], override_num_blocks=len(shards))
        # One shard per task, streamed out in read batches: a shard is one pass over a tar stream.
        parts.append(items.map_batches(read_shards, fn_kwargs={**common, "sources": sources,
                                                               "batch_size": settings.read_batch_size},
                                       num_cpus=settings.read_num_cpus, batch_size=1, batch_format="numpy"))
    if files:
        blocks = read_blocks(len(files), settings)
        items = ray.data.from_items([{"uri": uri, "source_size": size, "source_mtime_ns": mtime}
                                     for uri, size, mtime in files], override_num_blocks=blocks)
        parts.append(items.map_batches(read_files, fn_kwargs=common, num_cpus=settings.read_num_cpus,
                                       batch_size=settings.read_batch_size, batch_format="numpy"))
    if parquet:
        bytes_column, key_column = parquet_columns
        columns = [bytes_column] + ([key_column] if key_column else [])
        rows = ray.data.read_parquet(parquet, columns=columns, include_paths=True)
        parts.append(rows.map_batches(read_parquet_rows,
                                      fn_kwargs={**common, "bytes_column": bytes_column, "key_column": key_column},
                                      num_cpus=settings.read_num_cpus, batch_size=settings.read_batch_size,
                                      batch_format="numpy"))
    if not parts:
        raise SourceError("the sources name no image file")
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _rows(batch: dict[str, np.ndarray]):
    for index in range(len(batch["uri"])):
        yield {key: values[index] for key, values in batch.items()}
