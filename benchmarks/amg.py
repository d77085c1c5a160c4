"""Stock against fast automatic mask generation, in one process: images/s, where the time goes, and
how many of the stock generator's masks the fast one gives (benchmarks/operators.py --amg runs it).

Models have seeded random weights with their mask hypernetworks' output scaled (as in
tests/operators/sam2/test_fast_masks.py), so that stability scores spread and thresholds leave
hundreds of masks, as a busy photo does with real weights; box NMS is off (1.0) because random
masks' boxes all span the image.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
from skimage import data

from maskdex.operators.metrics.mask_match import match_regions
from maskdex.operators.registry.presets import SAM2_PRESETS, SAM2Spec, build_sam2_model
from maskdex.operators.sam2.fast_masks import FastSAM2MaskGenerator
from maskdex.operators.sam2.masks import SAM2MaskGenerator

STEPS = ("encoder", "decoder", "filtering", "upsampling", "nms", "rle")
LOGIT_SCALE = 20.0
# per model: (points per side, pred_iou_thresh, stability_score_thresh, photos)
CASES = {
    "tiny": (16, 0.5, 0.3, ("astronaut", "coffee")),
    "sam2.1-hiera-t": (8, 0.49, 0.4, ("coffee",)),
}


def build_model(name: str):
    spec = SAM2_PRESETS[name]
    model = build_sam2_model(SAM2Spec(spec.name, spec.config, spec.image_size, overrides=spec.overrides))
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_SCALE)
            mlp.layers[-1].bias.mul_(LOGIT_SCALE)
    return model


@contextmanager
def stock_timers(timings: dict):
    """Times the stock generator's steps by wrapping the functions its module calls (benchmark only)."""
    import sam2.automatic_mask_generator as amg
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.transforms import SAM2Transforms

    def timed(step, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[step] += time.perf_counter() - started
        return wrapper

    patches = [(amg, "calculate_stability_score", "filtering"), (amg, "batched_mask_to_box", "filtering"),
               (amg, "batched_nms", "nms"), (amg, "mask_to_rle_pytorch", "rle"), (amg, "coco_encode_rle", "rle"),
               (SAM2ImagePredictor, "set_image", "encoder"), (SAM2Transforms, "postprocess_masks", "upsampling")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, step in patches:
        setattr(owner, name, timed(step, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _decoder_timer(model, timings):
    """A forward hook pair on the mask decoder (stock): its time, the prompt encoder's being negligible."""
    starts = []
    pre = model.sam_mask_decoder.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    post = model.sam_mask_decoder.register_forward_hook(
        lambda *_: timings.__setitem__("decoder", timings["decoder"] + time.perf_counter() - starts.pop()))
    return pre, post


def run_case(name: str, repeats: int, device: str, dtype: str | None, compile: bool):
    """One model: (rows of the table, its figures: speeds, the networks' share, matched share)."""
    points, iou_thresh, stability_thresh, photo_names = CASES[name]
    model = build_model(name)
    settings = SAM2_PRESETS["tiny"].mask_settings.replace(
        points_per_side=points, pred_iou_thresh=iou_thresh, stability_score_thresh=stability_thresh,
        box_nms_thresh=1.0, max_masks=100_000, min_area=0)
    images = [np.asarray(getattr(data, photo)()) for photo in photo_names]
    stock = SAM2MaskGenerator(model, settings, device=device, dtype=dtype)
    fast = FastSAM2MaskGenerator(model, settings, device=device, dtype=dtype, compile=compile, timed=True)

    results, seconds, splits = {}, defaultdict(list), defaultdict(list)
    for _ in range(repeats):
        timings = defaultdict(float)
        hooks = _decoder_timer(model, timings)
        with stock_timers(timings):
            started = time.perf_counter()
            results["stock"] = [stock.generate(image) for image in images]
            seconds["stock"].append(time.perf_counter() - started)
        for hook in hooks:
            hook.remove()
        splits["stock"].append(dict(timings))
        fast.timings.clear()
        started = time.perf_counter()
        results["fast"] = fast.generate_batch(images)
        seconds["fast"].append(time.perf_counter() - started)
        splits["fast"].append(dict(fast.timings))

    matches = [match_regions(s, f) for s, f in zip(results["stock"], results["fast"])]
    share = sum(m.matched for m in matches) / max(1, sum(m.expected for m in matches))
    rows, after, networks = [], {}, {}
    for amg in ("stock", "fast"):
        total = statistics.median(seconds[amg])
        split = {step: statistics.median(s.get(step, 0.0) for s in splits[amg]) for step in STEPS}
        other = max(0.0, total - sum(split.values()))
        rows.append((name, amg, len(images) / total, [split[step] / len(images) for step in STEPS], other / len(images),
                     sum(len(r) for r in results[amg]) / len(images)))
        # The encoder and decoder run the same weights on the same inputs in both generators; what
        # comes after them is the part the fast one rearranges.
        networks[amg] = split["encoder"] + split["decoder"]
        after[amg] = max(total - networks[amg], 1e-9)
    figures = {"speed": statistics.median(seconds["stock"]) / statistics.median(seconds["fast"]),
               "after": after["stock"] / after["fast"], "networks": networks["fast"] / statistics.median(seconds["fast"]),
               "share": share, "images": len(images), "points": points}
    return rows, figures


def main(args) -> None:
    print(f"device {args.device}, dtype {args.dtype}, compile {args.compile}, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats}; seconds per image by step")
    header = f"| {'model':16s} | {'amg':5s} | {'images/s':>8s} | " + " | ".join(f"{s:>10s}" for s in STEPS)
    print(header + f" | {'other':>8s} | {'masks/img':>9s} |")
    print("|" + "---|" * (3 + len(STEPS) + 2))
    summary = {}
    for name in args.amg_models:
        rows, summary[name] = run_case(name, args.repeats, args.device, args.dtype, args.compile)
        for model, amg, rate, split, other, masks in rows:
            print(f"| {model:16s} | {amg:5s} | {rate:8.3f} | " + " | ".join(f"{s:10.3f}" for s in split)
                  + f" | {other:8.3f} | {masks:9.1f} |")
    for name, f in summary.items():
        print(f"{name} ({f['images']} photos, {f['points']}x{f['points']} points): fast/stock speed {f['speed']:.2f}, "
              f"matched masks {f['share']:.3f}; after the networks fast/stock {f['after']:.2f}, the networks "
              f"{f['networks']:.0%} of the fast generator's time")
    last = summary["sam2.1-hiera-t" if "sam2.1-hiera-t" in summary else next(iter(summary))]
    print(f"amg fast/stock speed {last['speed']:.2f}, matched masks {last['share']:.3f}")
