"""Segmenting many images with a support set, on Ray Data: a pool of Segmenter actors that write the outputs.

Each actor writes its images' files (fewshot/outputs.py) straight into out_dir, so on a cluster out_dir
must be a folder every node can write (a shared file system). The driver only gathers the summaries.
An image that fails (unreadable, not an image) gets a summary with its error; the others go on.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import ray

from maskdex.pipelines.common.images import load_image
from maskdex.pipelines.common.progress import Progress
from maskdex.pipelines.common.ray_pools import StageResources, actor_pool, device_for_cluster, init_ray
from maskdex.pipelines.fewshot.request import SegmentSpec, check_spec
from maskdex.pipelines.fewshot.segmenter import SegmentSettings, Segmenter
from maskdex.pipelines.fewshot.outputs import write_outputs
from maskdex.pipelines.common.sources import expand_sources


def segment_to_files(segmenter: Segmenter, image: str, out_dir: str, name: str, spec: SegmentSpec) -> dict:
    """Segment one image file and write its outputs; returns its summary, with "error" when it failed."""
    try:
        loaded = load_image(image, max_pixels=segmenter.settings.max_pixels)
        result = segmenter.segment(loaded.rgb, spec.set_name, spec.class_list, mode=spec.mode,
                                   shots_only=spec.shots_only, seed=spec.seed, image_id=loaded.file_id)
        return write_outputs(result, loaded.rgb, out_dir, name, image=image)
    except (ValueError, OSError) as error:  # maskdex's own errors say what went wrong
        return {"image": image, "error": str(error)}
    except Exception as error:  # one bad image must not stop the others
        return {"image": image, "error": f"{type(error).__name__}: {error}"}


def output_names(images: list[str]) -> list[str]:
    """Each image's file stem, made unique with -2, -3, ... where stems repeat."""
    names, used = [], set()
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0] or "image"
        name, number = stem, 1
        while name in used:
            number += 1
            name = f"{stem}-{number}"
        used.add(name)
        names.append(name)
    return names


def segment_many(images: list[str], db: str, out_dir: str, spec: SegmentSpec,
                 settings: SegmentSettings = SegmentSettings(), actors: StageResources = StageResources(),
                 address: str | None = None) -> list[dict]:
    """Segment image files (or folders and globs of them) on an actor pool; summaries in input order."""
    expanded = expand_sources(images)
    if expanded.parquet:
        raise ValueError(f"segment takes image files, not parquet ({expanded.parquet[0]})")
    check_spec(db, settings, spec)
    init_ray(address)
    device, actors = device_for_cluster(settings.device, actors, ray.cluster_resources())
    settings = replace(settings, device=device)
    files = expanded.files
    items = [{"index": index, "image": image, "name": name}
             for index, (image, name) in enumerate(zip(files, output_names(files)))]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // actors.batch_size))
    dataset = dataset.map_batches(
        SegmentStage,
        fn_constructor_kwargs={"db": db, "settings": settings, "spec": spec, "out_dir": os.path.abspath(out_dir),
                               "threads": max(1, int(actors.num_cpus))},
        **actor_pool(actors),
    )
    summaries: dict[int, dict] = {}
    progress = Progress("segment", len(items))
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
        for index, summary in zip(batch["index"], batch["summary"]):
            summaries[int(index)] = json.loads(summary)
            progress.advance()
    return [summaries[index] for index in sorted(summaries)]


class SegmentStage:
    """A Segmenter on an actor."""

    def __init__(self, db: str, settings: SegmentSettings, spec: SegmentSpec, out_dir: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.segmenter = Segmenter(db, settings)
        self.spec = spec
        self.out_dir = out_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [json.dumps(segment_to_files(self.segmenter, str(image), self.out_dir, str(name), self.spec))
                     for image, name in zip(batch["image"], batch["name"])]
        return {"index": np.asarray(batch["index"]), "summary": np.asarray(summaries, dtype=object)}
