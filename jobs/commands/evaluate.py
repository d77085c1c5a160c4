"""`maskdex eval segmentation` and `maskdex eval retrieval`: benchmarks, written as a report to a directory."""

from __future__ import annotations

import argparse

from maskdex.jobs.arguments import add_db, add_model_options, add_rerank_options, at_least, model_options, rerank_settings

from maskdex.pipelines.evaluation.datasets import DATASETS
from maskdex.pipelines.evaluation.methods import METHODS, parse_methods


def add_parsers(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate few-shot segmentation (mIoU) or retrieval (mAP)")
    kinds = evaluate.add_subparsers(dest="eval_kind", required=True, metavar="KIND")

    seg = kinds.add_parser(
        "segmentation", help="mIoU of RNS and baselines on a data set's val split, supports from its train split",
        description="Supports are sampled from the train split per (shots, seed); the val split is sharded over "
                    "Ray. Writes results.json, report.md, miou_vs_shots.png and confusion.npz to --out.")
    seg.add_argument("--data", required=True, help="the data set directory (see README: Evaluation)")
    seg.add_argument("--dataset", required=True, choices=DATASETS, help="its layout")
    seg.add_argument("--methods", type=_methods, default=("zero-shot", "rns"),
                     help=f"comma-separated, from {', '.join(METHODS)} (default zero-shot,rns)")
    seg.add_argument("--shots", type=_whole_numbers(1), default=(1, 5, 20),
                     help="support images per class, comma-separated (default 1,5,20)")
    seg.add_argument("--seeds", type=_whole_numbers(0), default=(0, 1, 2),
                     help="support sampling seeds, comma-separated (default 0,1,2)")
    seg.add_argument("--out", required=True, help="directory for the report")
    seg.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")
    seg.add_argument("--limit", type=at_least(1), default=None, help="evaluate only the first N val images")
    add_model_options(seg)
    seg.add_argument("--rns-steps", type=at_least(0), default=700, help="RNS training steps (the paper: 700)")
    seg.add_argument("--short-side", type=at_least(1), default=None,
                     help="resize images to this short side, scaling the windows with it (default: the preset's, "
                          "as `maskdex segment` uses: 448 for ViT-B/16; a multiple of 4 patches)")
    seg.add_argument("--support-pool", type=at_least(1), default=None,
                     help="sample supports from a random subset of this many train images (default: all)")
    seg.add_argument("--shard-size", type=at_least(1), default=4, help="val images per shard (default 4)")
    seg.add_argument("--actors", type=at_least(1), default=1,
                     help="most model actors; the pool grows to this as the cluster has room (default 1)")
    seg.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    seg.add_argument("--gpus-per-actor", type=float, default=None,
                     help="GPUs per actor (default: 1 with --device cuda, or auto on a cluster with GPUs; else 0)")
    seg.add_argument("--single-process", action="store_true",
                     help="run everything in this process, without Ray (same numbers, no parallelism)")
    seg.set_defaults(run=run_segmentation)

    ret = kinds.add_parser(
        "retrieval", help="mAP@K, object-level mAP@K@50 and recall@1/5/10 of text queries against an index",
        description="Queries are the category names (or D-cube expressions) of a COCO-format instances file; the "
                    "corpus is its images, indexed beforehand with `maskdex index`. Writes results.json and "
                    "report.md to --out.")
    add_db(ret)
    ret.add_argument("--annotations", required=True, help="COCO-format instances JSON")
    ret.add_argument("--out", required=True, help="directory for the report")
    ret.add_argument("-k", type=at_least(1), default=50, help="results per query, the K of AP@K (default 50)")
    ret.add_argument("--iou", type=float, default=0.5, help="mask IoU for an object-level match (default 0.5)")
    ret.add_argument("--templates", action="store_true", help="average each query over CLIP prompt templates")
    add_model_options(ret, preset=False)
    add_rerank_options(ret)
    ret.set_defaults(run=run_retrieval)


def run_segmentation(args) -> int:
    from maskdex.pipelines.evaluation.datasets import open_dataset
    from maskdex.pipelines.evaluation.report import markdown_table, segmentation_records, write_segmentation_report
    from maskdex.pipelines.evaluation.segmentation import SegmentationEvalSettings, evaluate_segmentation

    dataset = open_dataset(args.dataset, args.data)
    gpus = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if args.device.startswith("cuda") else 0.0)
    settings = SegmentationEvalSettings(
        **model_options(args), methods=args.methods, shots=args.shots, seeds=args.seeds, short_side=args.short_side,
        rns_steps=args.rns_steps, limit=args.limit,
        support_pool=args.support_pool, shard_size=args.shard_size, actors=args.actors,
        num_cpus=args.cpus_per_actor, num_gpus=gpus)
    evaluation = evaluate_segmentation(dataset, settings, address=args.address, single_process=args.single_process)
    paths = write_segmentation_report(evaluation, args.out)
    print(markdown_table(segmentation_records(evaluation), settings.methods))
    for shard in evaluation.failed_shards:
        print(f"shard {shard.shard} failed ({', '.join(shard.sample_ids)}): {shard.error}")
    print(f"report: {paths['report']}  (results.json, miou_vs_shots.png, confusion.npz beside it)")
    return 0


def run_retrieval(args) -> int:
    from maskdex.pipelines.evaluation.report import write_retrieval_report
    from maskdex.pipelines.evaluation.retrieval import evaluate_retrieval

    if not 0.0 < args.iou <= 1.0:
        raise ValueError(f"--iou must be in (0, 1], got {args.iou}")
    evaluation = evaluate_retrieval(args.db, args.annotations, k=args.k, iou_threshold=args.iou,
                                    weights=args.weights_dir, device=args.device, templates=args.templates,
                                    rerank=rerank_settings(args) if args.rerank else None)
    paths = write_retrieval_report(evaluation, args.out)
    after = evaluation.metrics_reranked()
    if after is not None:
        print(f"{'':>12} {'first stage':>11} {'re-ranked':>10}")
    for name, value in evaluation.metrics().items():
        if after is None:
            print(f"{name:>12} {_percent(value)}")
        else:
            print(f"{name:>12} {_percent(value):>11} {_percent(after[name]):>10}")
    print(f"report: {paths['report']}")
    return 0


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _methods(text: str) -> tuple[str, ...]:
    try:
        return parse_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _whole_numbers(minimum: int):
    def parse(text: str) -> tuple[int, ...]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            values = tuple(dict.fromkeys(int(part) for part in parts))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected whole numbers >= {minimum}, got {text!r}")
        return values

    return parse
