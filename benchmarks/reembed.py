"""Re-embed against a fresh index of the same images: what skipping SAM 2 saves.

    python -m benchmarks.reembed [--images 32] [--repeats 3] [--models tiny] [--to tiny-seed1]

Each repeat indexes the images into a fresh database with --models (read, SAM 2, Alpha-CLIP,
commit), then re-embeds that database into another fresh one with --to (read, stored masks,
Alpha-CLIP, commit), both on the same Ray instance (started once, before the timed runs), both
with their default actor plans and without the closing vector-index build. Prints the median
images/s of each and the ratio of their times, re-embed / index: the share of an index run that
is not SAM 2 (the aim: about the share Alpha-CLIP takes, ~0.25).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ray

from benchmarks.photo_corpus import photo_variants
from maskdex.pipelines.index.job import IndexSettings, run_index
from maskdex.pipelines.index.reembed import REEMBED_CLIP, run_reembed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--to", default="tiny-seed1", help="the re-embed's preset (default tiny-seed1)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    settings = IndexSettings(models=args.models, device=args.device, build_index=False)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    index_s, reembed_s = [], []
    with tempfile.TemporaryDirectory() as scratch:
        files = photo_variants(Path(scratch) / "corpus", args.images)
        for repeat in range(args.repeats):
            old, new = f"{scratch}/index_{repeat}", f"{scratch}/reembed_{repeat}"
            started = time.perf_counter()
            indexed = run_index(files, old, settings)
            index_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            reembedded = run_reembed(old, new, replace(settings, models=args.to, clip=REEMBED_CLIP))
            reembed_s.append(time.perf_counter() - started)
            assert indexed.ok == reembedded.ok == args.images, (indexed.render(), reembedded.render())
    ray.shutdown()

    index_median, reembed_median = statistics.median(index_s), statistics.median(reembed_s)
    print(f"{args.images} images, {args.repeats} repeats, index --models {args.models}, reembed --models {args.to}, "
          f"{cpus} Ray CPUs")
    print(f"{'run':<10} {'median s':>9} {'images/s':>9}")
    print(f"{'index':<10} {index_median:9.2f} {args.images / index_median:9.2f}")
    print(f"{'reembed':<10} {reembed_median:9.2f} {args.images / reembed_median:9.2f}")
    print(f"ratio reembed / index (time): {reembed_median / index_median:.2f}")


if __name__ == "__main__":
    main()
