"""Adding labelled examples to a support set: one in process (add_example), or a whole folder on Ray Data.

An example becomes one row per class it labels: that class's prototype in the image (design.md
section 3, support memory). Adding an image that its set already holds replaces its rows.

A folder is all or nothing: every pair is checked before any model runs, the features are computed
on an actor pool, and the driver writes only once every image has its rows; an image that still
fails there (pixels past a readable header are corrupt, a model error) refuses the add, naming it.
The rows wait in the driver's memory until then: about 4 x D bytes per (image, class), 2 KB at D = 512.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from maskdex.operators.registry.options import ModelOptions
from maskdex.operators.registry.presets import require_weights
from maskdex.operators.dense.features import DenseCLIPFeatures
from maskdex.operators.rns.memory import pool_patches
from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS
from maskdex.pipelines.fewshot.dense import build_extractor, open_support_store
from maskdex.pipelines.common.images import load_image
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, actor_pool, device_for_cluster, init_ray
from maskdex.pipelines.common.sources import read_bytes
from maskdex.pipelines.fewshot.folder import read_labelled_folder
from maskdex.pipelines.common.class_names import check_class_names
from maskdex.pipelines.fewshot.labels import (
    check_set_name,
    class_pixel_counts,
    label_array,
    label_problems,
    read_label_map,
)
from maskdex.storage.support_store import SupportStore


@dataclass(frozen=True)
class SupportSettings(ModelOptions):
    max_pixels: int = DEFAULT_MAX_PIXELS
    actors: StageResources = StageResources(num_cpus=1.0)
    write_rows: int = 1024  # rows per commit (an image's rows always share one)


@dataclass
class IngestSummary:
    set_name: str
    images: int = 0
    rows: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class -> images of it added
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        lines = [f"added {self.images} images ({self.rows} class prototypes) to support set {self.set_name!r} "
                 f"in {self.seconds:.1f}s"]
        lines += [f"  {name}: {count} images" for name, count in self.classes.items()]
        return "\n".join(lines)


def example_rows(extractor: DenseCLIPFeatures, set_name: str, rgb: np.ndarray, labels: np.ndarray,
                 class_names: list[str], image_id: str, uri: str | None) -> list[dict]:
    """One row per class labelled in a checked example: its prototype, pooled from the support features."""
    dense = extractor.support_features(rgb)
    # The labels go through the image's resize (nearest) and padding (255, ignored), as the authors' do.
    present, pooled = pool_patches(dense.features, dense.label_grid(labels))
    counts = class_pixel_counts(labels, len(class_names))
    return [{"set_name": set_name, "class_name": class_names[int(c)], "image_id": image_id,
             "prototype": pooled[index].numpy(), "n_pixels": int(counts[int(c)]), "uri": uri}
            for index, c in enumerate(present.tolist())]


def add_example(store: SupportStore, set_name: str, image, label_map, class_names: list[str], *,
                extractor: DenseCLIPFeatures, uri: str | None = None) -> dict:
    """Add one labelled image to a set at once, in process; the next segmentation uses it.

    image: a path, file bytes, an array or a PIL image. label_map: H x W class indices into
    class_names (255 = ignore). Every class named must label at least one pixel: the caller names
    the classes this image shows. The store must belong to the extractor's preset (see
    dense.open_support_store). Raises ValueError, writing nothing, on a bad example.
    Returns {"set", "image_id", "classes": {class: labelled pixels}}.
    """
    check_set_name(set_name)
    names = check_class_names(class_names)
    if extractor.embed_dim != store.embed_dim:
        raise ValueError(f"the extractor makes {extractor.embed_dim}-dimensional features, the support sets at "
                         f"{store.uri} hold {store.embed_dim} (dense model {store.dense_model!r})")
    loaded = load_image(image)
    labels = label_array(label_map)
    problems = label_problems(labels, loaded.rgb.shape[:2], len(names))
    if not problems:
        counts = class_pixel_counts(labels, len(names))
        empty = [name for name, count in zip(names, counts) if count == 0]
        if empty:
            problems.append(f"class(es) {', '.join(map(repr, empty))} named for this image cover no pixel of it")
    if problems:
        raise ValueError(f"cannot add the example to support set {set_name!r}: {'; '.join(problems)}")
    rows = example_rows(extractor, set_name, loaded.rgb, labels, names, loaded.image_id, uri or loaded.uri)
    store.add(rows)
    return {"set": set_name, "image_id": loaded.image_id,
            "classes": {row["class_name"]: row["n_pixels"] for row in rows}}


def ingest_folder(images_dir: str, labels_dir: str, classes_file: str, db: str, set_name: str,
                  settings: SupportSettings = SupportSettings(), address: str | None = None) -> IngestSummary:
    """Add a labelled folder (see fewshot/folder.py) to a set, computing features on a Ray Data actor pool."""
    started = time.perf_counter()
    check_set_name(set_name)
    folder = read_labelled_folder(images_dir, labels_dir, classes_file, max_pixels=settings.max_pixels)
    require_weights(settings.models, settings.weights, ("dense_clip",))  # before a table or Ray
    store = open_support_store(db, settings.models, create=True)
    init_ray(address)
    device, actors = device_for_cluster(settings.device, settings.actors, ray.cluster_resources())

    items = [{"image": pair.image, "labels": pair.labels, "image_id": pair.image_id} for pair in folder.pairs]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // actors.batch_size))
    dataset = dataset.map_batches(
        SupportStage,
        fn_constructor_kwargs={"models": settings.models, "weights": settings.weights, "device": device,
                               "dtype": settings.dtype, "set_name": set_name, "class_names": folder.classes,
                               "max_pixels": settings.max_pixels, "threads": max(1, int(actors.num_cpus))},
        **actor_pool(actors),
    )
    per_image: list[list[dict]] = []
    failures: list[str] = []
    progress = Progress("supports add", len(items))
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
        for image, error, rows in zip(batch["image"], batch["error"], batch["rows"]):
            progress.advance()
            if error:
                failures.append(f"{image}: {error}")
            else:
                per_image.append(_decode_rows(rows))
    if failures:
        raise ValueError(f"{len(failures)} image(s) failed; nothing was added:\n  " + "\n  ".join(sorted(failures)))

    summary = IngestSummary(set_name, images=len(per_image))
    pending: list[dict] = []
    for rows in per_image:
        pending += rows
        if len(pending) >= settings.write_rows:
            summary.rows += store.add(pending)
            pending = []
    if pending:
        summary.rows += store.add(pending)
    store.optimize()
    counts = Counter(row["class_name"] for rows in per_image for row in rows)
    summary.classes = {name: counts[name] for name in folder.classes if counts[name]}
    summary.seconds = time.perf_counter() - started
    return summary


class SupportStage:
    """The dense CLIP on an actor: decodes each pair and turns it into rows (JSON, prototypes as lists)."""

    def __init__(self, models: str, weights: str | None, device: str, dtype: str | None, set_name: str,
                 class_names: list[str], max_pixels: int, threads: int):
        torch.set_num_threads(threads)
        self.extractor = build_extractor(models, weights=weights, device=device, dtype=dtype)
        self.set_name = set_name
        self.class_names = class_names
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors, rows = [], []
        for image, labels_path, image_id in zip(batch["image"], batch["labels"], batch["image_id"]):
            try:
                rgb = load_image(str(image), max_pixels=self.max_pixels).rgb
                labels = read_label_map(read_bytes(str(labels_path)))
                problems = label_problems(labels, rgb.shape[:2], len(self.class_names))
                if problems:  # the files changed since they were checked
                    raise ValueError("; ".join(problems))
                found = example_rows(self.extractor, self.set_name, rgb, labels, self.class_names, str(image_id),
                                     str(image))
                errors.append("")
                rows.append(json.dumps([{**row, "prototype": row["prototype"].tolist()} for row in found]))
            except Exception as error:  # reported per image by the driver, which then writes nothing
                errors.append(f"{type(error).__name__}: {error}")
                rows.append("[]")
        return {"image": np.asarray(batch["image"]), "error": np.asarray(errors, dtype=object),
                "rows": np.asarray(rows, dtype=object)}


def _decode_rows(rows_json: str) -> list[dict]:
    return [{**row, "prototype": np.asarray(row["prototype"], dtype=np.float32)} for row in json.loads(rows_json)]
