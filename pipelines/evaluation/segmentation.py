"""The segmentation evaluation job: supports from the train split, the val split sharded over Ray.

1. For every (shots, seed), sample_supports picks support images from the train split (on the driver,
   which reads only the label files it needs).
2. The prototypes of the support images are computed on an actor pool, each image once however many
   configurations share it; every configuration's memory then goes into the object store once.
3. The val split is cut into fixed shards. An actor pool holding the models evaluates each shard
   against every memory and returns its confusion matrices (sparse); the driver sums them.

A shard that fails is tried again on its actor; if it fails every time, the job goes on without it
and the report names it. Ray restarts actors lost with their node. single_process runs the same
worker in this process without Ray: shards are fixed and every step is seeded, so it gives the same
confusion matrices as the distributed run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import ray
import torch

from maskdex.operators.registry.options import ModelOptions
from maskdex.operators.registry.presets import dense_windows, require_weights
from maskdex.pipelines.evaluation.datasets import DatasetError, Sample, SegmentationDataset
from maskdex.pipelines.evaluation.methods import METHODS
from maskdex.pipelines.evaluation.worker import SegmentationWorker, WorkerSpec, memory_from_prototypes
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, actor_pool, device_for_cluster, init_ray
from maskdex.pipelines.evaluation.sampling import ClassPresence, SupportSet, sample_supports
from maskdex.storage.schemas import FAILED, OK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationEvalSettings(ModelOptions):
    methods: tuple[str, ...] = ("zero-shot", "rns")
    shots: tuple[int, ...] = (1, 5, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    short_side: int | None = None  # rescales the preset's windows (448 for ViT-B/16); a multiple of 4 patches
    rns_steps: int = 700
    limit: int | None = None  # evaluate only the first N val images
    support_pool: int | None = None  # size of the random train subset supports come from (None: all)
    shard_size: int = 4  # val images per shard: the unit of work, of retry and of loss
    actors: int = 1  # model actors, all asked for at once; the work goes on with those the cluster can place
    num_cpus: float = 1.0  # per actor; also its torch threads
    num_gpus: float = 0.0
    attempts: int = 2  # tries per shard before it is reported failed

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"methods must be some of {', '.join(METHODS)}; got {', '.join(self.methods) or 'none'}")
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must be whole numbers >= 1, got {self.shots}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        for name in ("shard_size", "actors", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "support_pool"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ValueError(f"need num_cpus > 0 and num_gpus >= 0, got {self.num_cpus} and {self.num_gpus}")
        if self.rns_steps < 0:
            raise ValueError(f"rns_steps must be >= 0, got {self.rns_steps}")

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))

    def keys(self) -> list[tuple[str, int, int]]:
        """Every (method, shots, seed) evaluated, in report order."""
        return [(m, shots, seed) for m in self.methods for shots in self.shots for seed in self.seeds]


@dataclass
class ShardOutcome:
    shard: int
    sample_ids: tuple[str, ...]
    status: str
    error: str | None
    node: str
    seconds: float
    attempts: int


@dataclass
class SegmentationEvaluation:
    dataset: str
    data: str
    classes: tuple[str, ...]
    settings: SegmentationEvalSettings
    supports: list[SupportSet]
    confusions: dict[tuple[str, int, int], np.ndarray]
    shards: list[ShardOutcome] = field(default_factory=list)
    val_images: int = 0
    seconds: float = 0.0

    @property
    def failed_shards(self) -> list[ShardOutcome]:
        return [s for s in self.shards if s.status != OK]

    @property
    def evaluated_images(self) -> int:
        return sum(len(s.sample_ids) for s in self.shards if s.status == OK)


def evaluate_segmentation(dataset: SegmentationDataset, settings: SegmentationEvalSettings, *,
                          address: str | None = None, single_process: bool = False) -> SegmentationEvaluation:
    started = time.perf_counter()
    _check_models(settings)
    val = dataset.split("val")[: settings.limit]
    train = dataset.split("train")
    presence = ClassPresence(train, dataset.labels)
    supports = [sample_supports([s.id for s in train], presence, len(dataset.classes), shots, seed,
                                settings.support_pool)
                for shots in settings.shots for seed in settings.seeds]
    by_id = {sample.id: sample for sample in train}
    needed = [by_id[i] for i in dict.fromkeys(i for s in supports for i in s.image_ids)]
    spec = WorkerSpec(models=settings.models, weights=settings.weights, device=settings.device, dtype=settings.dtype,
                      short_side=settings.short_side, classes=dataset.classes, labels=dataset.labels,
                      methods=settings.methods, rns_steps=settings.rns_steps)
    runner = _LocalRunner(spec, settings) if single_process else _RayRunner(spec, settings, address)

    prototypes = runner.prototypes(needed)
    memories = {(s.shots, s.seed): memory_from_prototypes([prototypes[i] for i in s.image_ids]) for s in supports}
    keys = settings.keys()
    shards = [tuple(val[start:start + settings.shard_size]) for start in range(0, len(val), settings.shard_size)]
    n = len(dataset.classes)
    total = np.zeros((len(keys), n, n), dtype=np.int64)
    outcomes = []
    progress = Progress("eval segmentation", len(val))
    for outcome, sparse in runner.evaluate(shards, memories, keys):
        outcomes.append(outcome)
        progress.advance(len(outcome.sample_ids))
        np.add.at(total, (sparse[:, 0], sparse[:, 1], sparse[:, 2]), sparse[:, 3])
    for outcome in outcomes:
        if outcome.status != OK:
            log.warning("shard %d (%s) failed: %s", outcome.shard, ", ".join(outcome.sample_ids), outcome.error)
    return SegmentationEvaluation(
        dataset=dataset.name, data=dataset.root, classes=dataset.classes, settings=settings, supports=supports,
        confusions={key: total[index] for index, key in enumerate(keys)},
        shards=sorted(outcomes, key=lambda o: o.shard), val_images=len(val), seconds=time.perf_counter() - started)


def _check_models(settings: SegmentationEvalSettings) -> None:
    """Fail here, with a clear message, rather than in every actor's constructor."""
    dense_windows(settings.models, settings.short_side)  # support windows are a half and strides a quarter
    require_weights(settings.models, settings.weights,
                    ("dense_clip", "sam2") if "rns-region" in settings.methods else ("dense_clip",))


# Work shared by both runners


def _prototypes_or_error(worker: SegmentationWorker, sample: Sample) -> tuple[np.ndarray, np.ndarray, str | None]:
    try:
        return (*worker.prototypes(sample), None)
    except Exception as error:  # reported by the driver with the image's name
        return np.zeros(0, np.int64), np.zeros((0, 1), np.float32), f"{type(error).__name__}: {error}"


def _evaluate_shard(worker: SegmentationWorker, shard: int, samples: Sequence[Sample], memories: dict,
                    keys: list[tuple[str, int, int]], attempts: int, node: str) -> tuple[ShardOutcome, np.ndarray]:
    """The shard's outcome and its confusions as rows (key index, truth, prediction, count)."""
    started = time.perf_counter()
    error = None
    for attempt in range(1, attempts + 1):
        try:
            confusions = worker.confusions(samples, memories)
        except Exception as failure:  # one bad shard (an unreadable file, a model error) must not end the job
            error = f"{type(failure).__name__}: {failure}"
            log.warning("shard %d failed on attempt %d of %d: %s", shard, attempt, attempts, error)
            continue
        stacked = np.stack([confusions[key] for key in keys])
        index = np.nonzero(stacked)
        sparse = np.stack([*index, stacked[index]], axis=1).astype(np.int64)
        outcome = ShardOutcome(shard, tuple(s.id for s in samples), OK, None, node, time.perf_counter() - started,
                               attempt)
        return outcome, sparse
    outcome = ShardOutcome(shard, tuple(s.id for s in samples), FAILED, error, node, time.perf_counter() - started,
                           attempts)
    return outcome, np.zeros((0, 4), dtype=np.int64)


def _support_error(sample_id: str, error: str) -> DatasetError:
    return DatasetError(f"support image {sample_id} could not be used: {error}")


class _LocalRunner:
    """Everything in this process, with the thread count an actor would use (so the numbers match)."""

    def __init__(self, spec: WorkerSpec, settings: SegmentationEvalSettings):
        self.spec = spec
        self.settings = settings
        self._worker = None

    @contextlib.contextmanager
    def _threads(self):
        before = torch.get_num_threads()
        torch.set_num_threads(self.settings.threads)
        try:
            if self._worker is None:
                self._worker = SegmentationWorker(self.spec)
            yield self._worker
        finally:
            torch.set_num_threads(before)

    def prototypes(self, samples: Sequence[Sample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        with self._threads() as worker:
            for sample in samples:
                classes, prototypes, error = _prototypes_or_error(worker, sample)
                if error is not None:
                    raise _support_error(sample.id, error)
                out[sample.id] = (classes, prototypes)
        return out

    def evaluate(self, shards: Sequence[Sequence[Sample]], memories: dict, keys: list) -> list:
        with self._threads() as worker:
            return [_evaluate_shard(worker, index, shard, memories, keys, self.settings.attempts, "local")
                    for index, shard in enumerate(shards)]


class _RayRunner:
    def __init__(self, spec: WorkerSpec, settings: SegmentationEvalSettings, address: str | None):
        init_ray(address)
        device, self.resources = device_for_cluster(
            spec.device, StageResources(max_actors=settings.actors, num_cpus=settings.num_cpus,
                                        num_gpus=settings.num_gpus), ray.cluster_resources())
        self.spec = replace(spec, device=device)
        self.settings = settings

    def _pool(self, batch_size: int) -> dict:
        # One batch in flight per actor: a batch is seconds to minutes of model work and its input a
        # few bytes, so queueing several on one actor would only leave the others idle.
        return actor_pool(replace(self.resources, batch_size=batch_size), in_flight=1)

    def prototypes(self, samples: Sequence[Sample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        batch = 4
        items = ray.data.from_items([{"id": s.id, "image": s.image, "labels": s.labels} for s in samples],
                                    override_num_blocks=max(1, -(-len(samples) // batch)))
        stage = items.map_batches(_SupportStage, fn_constructor_kwargs={"spec": self.spec,
                                                                        "threads": self.settings.threads},
                                  **self._pool(batch))
        out = {}
        for rows in stage.iter_batches(batch_size=None, batch_format="numpy"):
            for sample_id, classes, prototypes, error in zip(rows["id"], rows["classes"], rows["prototypes"],
                                                             rows["error"]):
                if error:
                    raise _support_error(str(sample_id), str(error))
                out[str(sample_id)] = (np.asarray(classes), np.asarray(prototypes))
        return out

    def evaluate(self, shards: Sequence[Sequence[Sample]], memories: dict, keys: list):
        items = ray.data.from_items(
            [{"shard": index, "samples": json.dumps([[s.id, s.image, s.labels] for s in shard])}
             for index, shard in enumerate(shards)], override_num_blocks=len(shards))
        stage = items.map_batches(_ShardStage, fn_constructor_kwargs={
            "spec": self.spec, "threads": self.settings.threads, "memories": ray.put(memories), "keys": keys,
            "attempts": self.settings.attempts}, **self._pool(1))
        for rows in stage.iter_batches(batch_size=None, batch_format="numpy"):
            for index in range(len(rows["shard"])):
                outcome = ShardOutcome(int(rows["shard"][index]), tuple(json.loads(rows["sample_ids"][index])),
                                       str(rows["status"][index]), str(rows["error"][index]) or None,
                                       str(rows["node"][index]), float(rows["seconds"][index]),
                                       int(rows["attempts"][index]))
                yield outcome, np.asarray(rows["confusion"][index], dtype=np.int64).reshape(-1, 4)


class _SupportStage:
    """A Ray Data actor: support images -> their classes and prototypes."""

    def __init__(self, spec: WorkerSpec, threads: int):
        torch.set_num_threads(threads)
        self.worker = SegmentationWorker(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [_prototypes_or_error(self.worker, Sample(str(i), str(image), str(labels)))
                   for i, image, labels in zip(batch["id"], batch["image"], batch["labels"])]
        return {"id": np.asarray([str(i) for i in batch["id"]]),
                "classes": _objects([r[0] for r in results]), "prototypes": _objects([r[1] for r in results]),
                "error": np.asarray([r[2] or "" for r in results])}


class _ShardStage:
    """A Ray Data actor holding the models and every support memory: a shard -> its confusion matrices."""

    def __init__(self, spec: WorkerSpec, threads: int, memories, keys: list, attempts: int):
        torch.set_num_threads(threads)
        self.worker = SegmentationWorker(spec)
        self.memories = ray.get(memories) if isinstance(memories, ray.ObjectRef) else memories
        self.keys = [tuple(key) for key in keys]
        self.attempts = attempts
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes, confusions = [], []
        for shard, encoded in zip(batch["shard"], batch["samples"]):
            samples = [Sample(*fields) for fields in json.loads(str(encoded))]
            outcome, sparse = _evaluate_shard(self.worker, int(shard), samples, self.memories, self.keys,
                                              self.attempts, self.node)
            outcomes.append(outcome)
            confusions.append(sparse.ravel())
        return {"shard": np.asarray([o.shard for o in outcomes]),
                "sample_ids": np.asarray([json.dumps(list(o.sample_ids)) for o in outcomes]),
                "status": np.asarray([o.status for o in outcomes]),
                "error": np.asarray([o.error or "" for o in outcomes]),
                "node": np.asarray([o.node for o in outcomes]),
                "seconds": np.asarray([o.seconds for o in outcomes]),
                "attempts": np.asarray([o.attempts for o in outcomes]),
                "confusion": _objects(confusions)}


def _objects(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column
