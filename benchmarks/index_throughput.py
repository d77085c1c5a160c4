"""Index throughput: the Ray Data job against the same stages called in a plain loop in one process.

    python -m benchmarks.index_throughput [--images 64] [--repeats 3] [--models tiny]

Both sides do the same work on the same images: read, hash, decode, SAM 2, Alpha-CLIP, commit
to a fresh LanceDB directory; both include building the models (the pipeline's actors also
import torch and the model libraries: the loop has them imported already). Ray itself is started
once, before the timed runs. The loop gives torch every core; the pipeline runs its default plan
(maskdex.pipelines.index.job.plan_actors). Prints medians and the ratio pipeline / loop (images per second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from benchmarks.photo_corpus import photo_variants
from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.index.claims import start_claims
from maskdex.pipelines.index.job import IndexSettings, plan_actors, run_index
from maskdex.pipelines.index.stages import SKIPPED, EmbedStage, MaskStage, image_row, read_files
from maskdex.storage.digests import DigestSet
from maskdex.storage.index_store import IndexStore
from maskdex.storage.region_fragments import RegionFragments


def _loop(files: list[str], db: str, settings: IndexSettings) -> float:
    started = time.perf_counter()
    preset = get_preset(settings.models)
    store = IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    masks = MaskStage(settings.models, None, settings.device, settings.dtype, {}, threads=os.cpu_count() or 1)
    embed = EmbedStage(settings.models, None, settings.device, settings.dtype, settings.context, 64,
                       threads=os.cpu_count() or 1, regions_uri=store.regions_dataset_uri, fingerprint=store.fingerprint,
                       claims=start_claims())
    none = DigestSet(32)
    for start in range(0, len(files), settings.read_batch_size):
        uris = np.asarray(files[start : start + settings.read_batch_size], dtype=object)
        batch = embed(masks(read_files({"uri": uris}, known=none, max_pixels=settings.max_pixels,
                                       max_side=settings.max_side)))
        rows = [{k: v[i] for k, v in batch.items()} for i in range(len(uris))]
        store.commit_written([image_row(row, preset.fingerprint) for row in rows if row["status"] != SKIPPED],
                             RegionFragments.from_json(rows[0]["fragments"]))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    settings = IndexSettings(models=args.models, device=args.device, build_index=False)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        files = photo_variants(Path(scratch) / "corpus", args.images)
        loop_s, pipeline_s = [], []
        for repeat in range(args.repeats):
            loop_s.append(_loop(files, f"{scratch}/loop{repeat}", settings))
            started = time.perf_counter()
            summary = run_index(files, f"{scratch}/pipeline{repeat}", settings)
            pipeline_s.append(time.perf_counter() - started)
            assert summary.ok == len(files), summary.render()
    loop, pipeline = statistics.median(loop_s), statistics.median(pipeline_s)
    sam_actors, clip_actors = plan_actors(ray.cluster_resources(), settings)
    print(f"preset {args.models}, {len(files)} images, {os.cpu_count()} CPUs, median of {args.repeats}; "
          f"pipeline actors: {sam_actors} SAM 2, {clip_actors} Alpha-CLIP")
    print(f"| {'run':22s} | {'seconds':>8s} | {'images / s':>10s} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 12}|")
    print(f"| {'plain loop (baseline)':22s} | {loop:8.1f} | {len(files) / loop:10.2f} |")
    print(f"| {'Ray Data pipeline':22s} | {pipeline:8.1f} | {len(files) / pipeline:10.2f} |")
    print(f"ratio pipeline / loop (images per second): {loop / pipeline:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
