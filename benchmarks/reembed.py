"""Re-embed against a fresh index of the same images: what skipping SAM 2 saves.

    python -m benchmarks.reembed [--images 32] [--repeats 3] [--models tiny] [--to tiny-seed1]

Each repeat indexes the images into a fresh database with --models (read, SAM 2, Alpha-CLIP,
commit), then re-embeds that database into another fresh one with --to (read, stored masks,
Alpha-CLIP, commit), both on the same Ray instance (started once, before the timed runs), both
with their default actor plans and without the closing vector-index build; a third run re-embeds
with one Alpha-CLIP actor, as whole-core reservations planned it on a 2-core node. Prints the median
time of each, split into start-up (Ray Data's plan, the actors' start and model builds, until the
first result) and the steady part after it, images/s over the steady part, and the ratio re-embed /
index of both the whole and the steady times. The aim is the share of an image's model work that
is Alpha-CLIP's, measured here in process on the same images (SAM 2's masks, then Alpha-CLIP on the
whole image and on every mask): a run of a few dozen images is mostly start-up, which both jobs pay
alike, so the steady ratio is the one to hold against it.
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
from maskdex.operators.registry.presets import alpha_clip_encoder, mask_generator
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
    # The re-embed as planned (an Alpha-CLIP actor per core), and with one actor: what a plan of
    # whole-core reservations gave on a 2-core node (one actor beside the read task).
    runs = {"index": settings, "reembed": replace(settings, models=args.to, clip=REEMBED_CLIP),
            "reembed 1 actor": replace(settings, models=args.to, clip=replace(REEMBED_CLIP, max_actors=1))}
    seconds = {name: [] for name in runs}
    startup = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as scratch:
        files = photo_variants(Path(scratch) / "corpus", args.images)
        for repeat in range(args.repeats):
            old = f"{scratch}/index_{repeat}"
            for name, run_settings in runs.items():
                started = time.perf_counter()
                if name == "index":
                    summary = run_index(files, old, run_settings)
                else:
                    summary = run_reembed(old, f"{scratch}/{name.replace(' ', '_')}_{repeat}", run_settings)
                seconds[name].append(time.perf_counter() - started)
                startup[name].append(summary.startup_seconds or 0.0)
                assert summary.ok == args.images, summary.render()
        ray.shutdown()
        clip_share = _alpha_clip_share(files, args.models, args.device)

    median = statistics.median
    rows = {name: (median(seconds[name]), median(startup[name]),
                   median(w - u for w, u in zip(seconds[name], startup[name]))) for name in runs}
    print(f"{args.images} images, {args.repeats} repeats, index --models {args.models}, reembed --models {args.to}, "
          f"{cpus} Ray CPUs")
    print(f"| {'run':<16} | {'median s':>9} | {'start-up s':>10} | {'steady s':>9} | {'images/s steady':>16} | "
          f"{'steady / index':>14} |")
    print("|---|---|---|---|---|---|")
    for name, (whole, started_in, steady) in rows.items():
        print(f"| {name:<16} | {whole:9.2f} | {started_in:10.2f} | {steady:9.2f} | {args.images / steady:16.2f} | "
              f"{steady / rows['index'][2]:14.2f} |")
    print(f"ratio reembed / index: whole {rows['reembed'][0] / rows['index'][0]:.2f}, "
          f"steady {rows['reembed'][2] / rows['index'][2]:.2f}")
    print(f"aim: Alpha-CLIP's share of the model work per image, in process: {clip_share:.2f}")


def _alpha_clip_share(files: list[str], models: str, device: str) -> float:
    """Alpha-CLIP's seconds (whole image and every mask) over SAM 2's plus Alpha-CLIP's, on the files."""
    import numpy as np
    from PIL import Image

    device = "cpu" if device == "auto" else device
    masks, encoder = mask_generator(models, device=device), alpha_clip_encoder(models, device=device)
    images = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    started = time.perf_counter()
    regions = [masks.generate(image) for image in images]
    sam2 = time.perf_counter() - started
    started = time.perf_counter()
    for image, found in zip(images, regions):
        encoder.embed_image(image)
        if found:
            encoder.embed_regions(image, [r.rle for r in found], [r.bbox for r in found])
    clip = time.perf_counter() - started
    return clip / (sam2 + clip)


if __name__ == "__main__":
    main()
