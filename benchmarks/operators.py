"""Operator speed on this machine: SAM 2 ms per image and Alpha-CLIP region embeddings per second.

    python -m benchmarks.operators [--models tiny] [--repeats 5] [--device auto]
    python -m benchmarks.operators --amg stock,fast [--amg-models tiny,sam2.1-hiera-t] [--compile]

Prints a table of medians over repeats; the baseline row embeds whole images (one crop each) in
the same process, so region throughput reads as a ratio against it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage import data

from maskdex.operators.registry.presets import alpha_clip_encoder, mask_generator

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and lazy initialisation
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="default 5; 1 with --amg")
    parser.add_argument("--amg", default=None,
                        help="stock,fast: compare the automatic mask generators instead (benchmarks/amg.py)")
    parser.add_argument("--amg-models", default="tiny,sam2.1-hiera-t", help="with --amg: SAM 2 models to run")
    parser.add_argument("--dtype", default="bfloat16", help="with --amg: autocast dtype on CUDA")
    parser.add_argument("--compile", action="store_true", help="with --amg: torch.compile the fast generator")
    args = parser.parse_args()
    if args.amg is not None:
        if sorted(args.amg.split(",")) != ["fast", "stock"]:
            parser.error(f"--amg takes stock,fast (both run, in one process), got {args.amg!r}")
        from benchmarks import amg

        args.repeats = args.repeats or 1
        args.amg_models = args.amg_models.split(",")
        unknown = [name for name in args.amg_models if name not in amg.CASES]
        if unknown:
            parser.error(f"--amg-models: unknown {unknown}; choose from {', '.join(amg.CASES)}")
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        amg.main(args)
        return
    args.repeats = args.repeats or 5

    images = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    masks = mask_generator(args.models, weights=args.weights_dir, device=args.device)
    encoder = alpha_clip_encoder(args.models, weights=args.weights_dir, device=args.device)
    regions = [masks.generate(image) for image in images]
    n_regions = sum(len(r) for r in regions)

    sam_seconds = _median_seconds(lambda: [masks.generate(image) for image in images], args.repeats)
    region_seconds = _median_seconds(
        lambda: [encoder.embed_regions(image, [r.rle for r in rs], [r.bbox for r in rs])
                 for image, rs in zip(images, regions)], args.repeats)
    image_seconds = _median_seconds(lambda: [encoder.embed_image(image) for image in images], args.repeats)

    print(f"preset {args.models}, device {masks.device}, torch threads {torch.get_num_threads()}, "
          f"{len(images)} photos, {n_regions} regions, median of {args.repeats}")
    print(f"| {'stage':34s} | {'ms / image':>10s} | {'items / s':>10s} | {'vs whole-image':>14s} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 16}|")
    rows = [
        ("SAM 2 masks", sam_seconds, len(images), None),
        ("Alpha-CLIP whole image (baseline)", image_seconds, len(images), 1.0),
        ("Alpha-CLIP regions", region_seconds, n_regions, (n_regions / region_seconds) / (len(images) / image_seconds)),
    ]
    for label, seconds, items, ratio in rows:
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"| {label:34s} | {1000 * seconds / len(images):10.1f} | {items / seconds:10.1f} | {ratio_text:>14s} |")


if __name__ == "__main__":
    main()
