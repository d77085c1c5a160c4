"""segment-index throughput: the Ray Data job against the same calls in a plain loop in one process.

    python -m benchmarks.segment_index [--images 24] [--repeats 3] [--models tiny] [--batch-size 16] [--actors N]
                                       [--runs loop,single,job]

The corpus (the sample photos, turned, mirrored and trimmed so that no two share bytes) is indexed once,
untimed, with a support set of synthetic scenes beside it. In patch mode, which reads nothing of the
index but its images rows, those rows are recorded directly, without the models (--index-with-models
runs the index job instead). Then, after an untimed warm-up loop over a few batches, every repeat segments all
of it up to three ways (--runs), each into its own key of the segmentations table (another seed), so
none skips work:
- plain loop: one Segmenter in this process; batches of --batch-size images through the job's own
  per-batch call (load, check, RNS with the heads trained together, PNG), committed as the job does;
- plain loop, one image at a time: Segmenter.segment per image (what `maskdex segment` does), for
  what batching the heads is worth;
- Ray Data job: run_segment_index with --actors actors of one thread each. Its start-up (until the
  first results reach the writer: starting the actor processes, whose imports of torch, open_clip and
  LanceDB take about 10 s on a small CPU) is printed apart, with its rate after it.
All include building the models. The loops give torch every core. Prints medians and the ratio
job / loop (images per second): the start-up is a fixed cost, so the ratio grows with --images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from benchmarks.photo_corpus import photo_variants
from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.common.images import load_image
from maskdex.pipelines.fewshot.segment_index import (
    SegmentIndexSettings,
    Selection,
    ok_row,
    run_segment_index,
    segment_rows,
    segmentation_key,
)
from maskdex.pipelines.fewshot.request import MODES, SegmentSpec
from maskdex.pipelines.fewshot.segmenter import SegmentSettings, Segmenter
from maskdex.pipelines.index.job import IndexSettings, run_index
from maskdex.storage.index_store import IndexStore
from maskdex.storage.segmentation_store import SegmentationStore
from tests.support.synthetic import add_scenes


def _register(files: list[str], db: str, models: str) -> None:
    """Record the files in the index as the index job would, minus SAM 2 and Alpha-CLIP (no regions, a
    random whole-image embedding): patch mode reads only the images rows, and putting a few thousand
    images through SAM 2 would take most of an hour on a small CPU machine."""
    preset = get_preset(models)
    dim = embedding_dim(preset.alpha_clip)
    store = IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=dim)
    rng = np.random.default_rng(0)
    rows = []
    for path in files:
        image = load_image(path)  # its file_id is the image_id the index job would give it
        height, width = image.rgb.shape[:2]
        rows.append({"image_id": image.file_id, "uri": path, "width": width, "height": height,
                     "status": "ok", "error": None, "embedding": rng.standard_normal(dim).astype(np.float32)})
    store.commit(rows, [])


def _loop(db: str, spec: SegmentSpec, settings: SegmentIndexSettings, *, batched: bool,
          limit: int | None = None) -> float:
    started = time.perf_counter()
    torch_threads(os.cpu_count() or 1)
    key = segmentation_key(db, spec, settings.segment)
    spec = replace(spec, classes=key.classes)
    items = [{"image_id": image_id, "uri": uri}
             for image_id, uri in sorted(IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
                                         .image_uris().items())][:limit]
    store = SegmentationStore.open(db)
    segmenter = Segmenter(db, settings.segment)
    rows = []
    size = settings.actors.batch_size if batched else 1
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        if batched:
            rows += segment_rows(segmenter, chunk, spec)
        else:
            item = chunk[0]
            rows.append(ok_row(item, segmenter.segment(item["uri"], spec.set_name, spec.class_list,
                                                       mode=spec.mode, seed=spec.seed,
                                                       image_id=item["image_id"])))
        if len(rows) >= settings.commit_every:
            store.commit(key, rows)
            rows = []
    if rows:
        store.commit(key, rows)
    assert store.count(key) == len(items)
    return time.perf_counter() - started


def torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default=MODES[0], choices=MODES)
    parser.add_argument("--batch-size", type=int, default=SegmentIndexSettings().actors.batch_size)
    parser.add_argument("--runs", type=_runs, default=RUNS,
                        help=f"which of {','.join(RUNS)} to time (the ratios need loop and job, or loop and single)")
    parser.add_argument("--actors", type=int, default=None, help="job actors (default: one per CPU, or per GPU)")
    parser.add_argument("--index-with-models", action="store_true",
                        help="patch mode: index the corpus with the index job instead of recording its images rows")
    args = parser.parse_args()

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = args.actors or gpus or (os.cpu_count() or 1)
    segment = SegmentSettings(models=args.models, device=args.device)
    if args.device == "auto":
        segment = replace(segment, device="cuda" if gpus else "cpu")
    settings = SegmentIndexSettings(segment=segment, actors=replace(
        SegmentIndexSettings().actors, max_actors=actors, batch_size=args.batch_size,
        num_gpus=1.0 if gpus else 0.0))
    with tempfile.TemporaryDirectory() as scratch:
        files = photo_variants(Path(scratch) / "corpus", args.images, max_side=320)
        db = f"{scratch}/db"
        if args.mode == "patch" and not args.index_with_models:
            _register(files, db, args.models)
        else:
            indexed = run_index(files, db, IndexSettings(models=args.models, device=segment.device, build_index=False))
            assert indexed.ok == len(files), indexed.render()
        add_scenes(Segmenter(db, segment, create=True), "scenes", per_class=2, seed=0)
        # Untimed: the first segmentation in a process pays one-time costs (lazy imports, allocator
        # growth, the page cache) that measured up to 10x a warm loop and would land on whichever run came first.
        _loop(db, SegmentSpec("scenes", mode=args.mode, seed=10_000), settings, batched=True,
              limit=4 * args.batch_size)
        times: dict[str, list[float]] = {run: [] for run in args.runs}
        startup_s = []
        for repeat in range(args.repeats):
            def spec(run: int) -> SegmentSpec:
                return SegmentSpec("scenes", mode=args.mode, seed=3 * repeat + run)

            if "loop" in times:
                times["loop"].append(_loop(db, spec(0), settings, batched=True))
            if "single" in times:
                times["single"].append(_loop(db, spec(1), settings, batched=False))
            if "job" in times:
                started = time.perf_counter()
                summary = run_segment_index(db, spec(2), Selection(), settings)
                times["job"].append(time.perf_counter() - started)
                startup_s.append(summary.startup_seconds)
                assert summary.ok == len(files), summary.render()
    median = {run: statistics.median(seconds) for run, seconds in times.items()}
    device = f"{gpus} GPUs" if gpus else f"{os.cpu_count()} CPUs"
    print(f"preset {get_preset(args.models).name}, {len(files)} images, {args.mode} mode, {device}, median of "
          f"{args.repeats}; heads trained {args.batch_size} at a time; job actors: {actors}")
    print(f"| {'run':38s} | {'seconds':>8s} | {'images / s':>10s} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 12}|")
    names = {"loop": "plain loop, batched (baseline)", "single": "plain loop, one image at a time",
             "job": "Ray Data job"}
    for run, seconds in median.items():
        print(f"| {names[run]:38s} | {seconds:8.1f} | {len(files) / seconds:10.2f} |")
        if run == "job":
            startup = statistics.median(startup_s)
            print(f"| {'  of which start-up (to first results)':38s} | {startup:8.1f} | {'':10s} |")
            print(f"| {'  after the start-up':38s} | {seconds - startup:8.1f} | {len(files) / (seconds - startup):10.2f} |")
    if "loop" in median and "job" in median:
        print(f"ratio job / loop (images per second): {median['loop'] / median['job']:.2f}; after the job's "
              f"start-up: {median['loop'] / (median['job'] - statistics.median(startup_s)):.2f}")
    if "loop" in median and "single" in median:
        print(f"ratio batched / one at a time (loop): {median['single'] / median['loop']:.2f}")
    ray.shutdown()


RUNS = ("loop", "single", "job")


def _runs(text: str) -> tuple[str, ...]:
    runs = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in runs if name not in RUNS]
    if unknown or not runs:
        raise argparse.ArgumentTypeError(f"--runs takes some of {','.join(RUNS)}, got {text!r}")
    return runs


if __name__ == "__main__":
    main()
