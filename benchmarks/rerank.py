"""Re-rank cost per query (MaTIR's second stage) for the top N candidates, split into image loading,
generation, reply parsing and box-to-mask matching; candidates batched into one generate call
against one call per candidate, in the same run.

    python -m benchmarks.rerank [--top 20] [--queries 2] [--repeats 1] [--model tiny] [--device cpu]

Writes --top synthetic photos (skimage's, at --side pixels) and an index over them with --regions
random rectangular masks each (no SAM 2 needed: this measures the second stage only), then re-ranks
the same first-stage results per query. The tiny model's replies are noise, so matching never runs
inside its re-rank; the "match" row times parse + match of a well-formed reply for every candidate
(one stored-regions lookup and one IoU pass each), which is what a real model's confirmations cost.
Prints, never asserts. --model qwen2.5-vl-3b (etc.) with weights present measures a real model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

STAGES = ("load", "generate", "parse", "match")


def _corpus(root: Path, n: int, side: int, regions: int, dim: int):
    """n photos on disk and an index over them; returns (store, query vector)."""
    from skimage import data

    from maskdex.operators.common import rle
    from maskdex.storage.index_store import IndexStore

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry", "hubble_deep_field")
    rng = np.random.default_rng(0)
    store = IndexStore.open(str(root / "db"), fingerprint="benchmark", embed_dim=dim)
    images, rows = [], []
    for i in range(n):
        image = Image.fromarray(getattr(data, names[i % len(names)])()).convert("RGB")
        image.thumbnail((side, side))
        if i >= len(names):  # a different file (and image id) for every candidate
            image = Image.fromarray(np.roll(np.asarray(image), 7 * i, axis=1))
        path = root / f"photo{i}.jpg"
        image.save(path, quality=90)
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        width, height = image.size
        images.append({"image_id": image_id, "uri": str(path), "status": "ok", "width": width, "height": height,
                       "embedding": np.ones(dim, np.float32)})
        for n_region in range(regions):
            x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
            x1, y1 = rng.integers(x0 + 8, width), rng.integers(y0 + 8, height)
            mask = np.zeros((height, width), bool)
            mask[y0:y1, x0:x1] = True
            encoded = rle.encode(mask)
            vector = rng.standard_normal(dim).astype(np.float32)
            rows.append({"region_id": f"{image_id}:{n_region}", "image_id": image_id, "rle": encoded,
                         "bbox": rle.bbox(encoded), "area": rle.area(encoded), "predicted_iou": 0.9,
                         "stability_score": 0.9, "embedding": vector / np.linalg.norm(vector)})
    store.commit(images, rows)
    query = rng.standard_normal(dim).astype(np.float32)
    return store, query / np.linalg.norm(query)


def _time_rerank(reranker, text, results, query, repeats):
    per_stage = {stage: [] for stage in STAGES}
    totals = []
    for _ in range(repeats):
        started = time.perf_counter()
        reranker.rerank(text, results, query)
        totals.append(time.perf_counter() - started)
        for stage in STAGES:
            per_stage[stage].append(reranker.timings.get(stage, 0.0))
    return {stage: statistics.median(values) for stage, values in per_stage.items()}, statistics.median(totals)


def _time_matching(reranker, results, query, repeats) -> float:
    """parse + match of a well-formed reply (a box round the first stored region) for every candidate."""
    from maskdex.operators.rerank.base import BoxFrame
    from maskdex.operators.rerank.parse import parse_reply

    replies = []
    for result in results:
        height, width = result["region"]["rle"]["size"]
        x, y, w, h = result["region"]["bbox"]
        replies.append((f'Sure. {{"present": "yes", "boxes": [[{x}, {y}, {x + w}, {y + h}]]}}', width, height))
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for rank, (result, (reply, width, height)) in enumerate(zip(results, replies)):
            verdict = parse_reply(reply, BoxFrame.pixels(width, height), width, height)
            reranker._apply(result, rank, verdict, reply, query, (height, width))
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20, help="candidates re-ranked per query")
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--side", type=int, default=320, help="longest side of the synthetic photos")
    parser.add_argument("--regions", type=int, default=12, help="stored masks per photo")
    parser.add_argument("--model", default="tiny", help="tiny, a Qwen2.5-VL preset or a checkpoint directory")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    from maskdex.operators.registry.rerankers import RerankSettings, build_reranker
    from maskdex.pipelines.rerank import ResultReranker

    texts = ["a cat", "a cup of coffee", "an astronaut", "a rocket", "a camera"][:args.queries]
    with tempfile.TemporaryDirectory() as scratch:
        store, query = _corpus(Path(scratch), args.top, args.side, args.regions, dim=64)
        results = store.search(query, k=args.top, exact=True)
        started = time.perf_counter()
        backend = build_reranker(RerankSettings(model=args.model, device=args.device, batch_size=args.top,
                                                max_new_tokens=args.max_new_tokens), weights=args.weights_dir)
        build_seconds = time.perf_counter() - started
        rows = {}
        for label, batch in (("batched (one generate call)", args.top), ("one by one", 1)):
            backend.batch_size = batch
            reranker = ResultReranker(backend, store, top=args.top)
            reranker.rerank(texts[0], results, query)  # warm-up: first-call allocations, file caches
            stages, totals = zip(*(_time_rerank(reranker, text, results, query, args.repeats) for text in texts))
            rows[label] = ({stage: statistics.median(s[stage] for s in stages) for stage in STAGES},
                           statistics.median(totals))
        matching = _time_matching(ResultReranker(backend, store, top=args.top), results, query, args.repeats)

    device = backend.device
    print(f"re-rank of the top {args.top} candidates per query, model {args.model} ({backend.name}) on {device} "
          f"({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, shared machine), max_new_tokens "
          f"{args.max_new_tokens}, photos <= {args.side} px with {args.regions} stored masks each; median over "
          f"{args.queries} queries of the median of {args.repeats} repeats; model built in {build_seconds:.1f} s")
    header = " | ".join(f"{stage + ' ms':>11s}" for stage in STAGES)
    print(f"| {'candidates':28s} | {header} | {'total ms':>9s} | {'ms/candidate':>12s} | {'vs batched':>10s} |")
    print(f"|{'-' * 30}|" + "|".join("-" * 13 for _ in STAGES) + f"|{'-' * 11}|{'-' * 14}|{'-' * 12}|")
    baseline = rows["batched (one generate call)"][1]
    for label, (stages, total) in rows.items():
        cells = " | ".join(f"{1000 * stages[stage]:11.1f}" for stage in STAGES)
        print(f"| {label:28s} | {cells} | {1000 * total:9.1f} | {1000 * total / args.top:12.1f} | "
              f"{total / baseline:9.2f}x |")
    print(f"parse + match of a well-formed reply for all {args.top} candidates: {1000 * matching:.1f} ms "
          f"({1000 * matching / args.top:.2f} ms per candidate)")


if __name__ == "__main__":
    main()
