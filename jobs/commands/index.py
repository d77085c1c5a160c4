"""`maskdex index`, `build-index` and `stats` (`search` is in search.py)."""

from __future__ import annotations

import argparse
import json

from maskdex.jobs.arguments import add_db, add_model_options, model_options, positive_int
from maskdex.jobs.console import terminal


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value:g}")
    return value


DEFAULT_MAX_FAILED_FRACTION = 0.1


def add_parsers(commands) -> None:
    index = commands.add_parser(
        "index", help="index images (files, folders, globs, s3:// or gs:// URIs, parquet)",
        description="Exit status: 0 when the run did its work; 1 when it tried inputs and indexed none, or when "
                    "more than --max-failed-fraction of the inputs it tried failed (each failure is recorded in "
                    "the images table and listed either way; inputs already indexed count as done); 2 for bad "
                    "input found before anything starts: a SOURCE that does not exist, a missing weight file, "
                    "a database built by another preset.")
    index.add_argument("sources", nargs="+", metavar="SOURCE")
    add_db(index)
    add_model_options(index)
    index.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")
    index.add_argument("--sam-actors", type=positive_int, default=None,
                       help="most SAM 2 actors (default: as many as the cluster can place)")
    index.add_argument("--clip-actors", type=positive_int, default=None,
                       help="most Alpha-CLIP actors (default: one, plus as many as fit beside SAM 2's)")
    index.add_argument("--clip-batch", type=positive_int, default=None,
                       help="images per Alpha-CLIP call, each call writing its regions as one table fragment "
                            "(default 16; smaller holds less GPU memory and commits in finer steps)")
    index.add_argument("--gpus-per-actor", type=float, default=None,
                       help="GPUs each model actor reserves (default: 1 with --device cuda, or auto on a "
                            "cluster with GPUs; else 0)")
    index.add_argument("--amg", choices=("fast", "stock"), default="fast",
                       help="automatic mask generator: fast (batched, on the device; default) or stock (sam2's "
                            "own, one image at a time): the same masks")
    index.add_argument("--points-per-side", type=positive_int, default=None, help="SAM 2 point grid side")
    index.add_argument("--max-masks", type=positive_int, default=None, help="cap on masks per image")
    index.add_argument("--min-area", type=int, default=None, help="smallest mask kept, in pixels")
    index.add_argument("--commit-every", type=positive_int, default=None,
                       help="most images per database commit (default 4096; commits are also sized by "
                            "regions and time)")
    index.add_argument("--commit-seconds", type=float, default=None,
                       help="commit at least this often, in seconds: the most work a killed run loses (default 10)")
    index.add_argument("--retry-failed", action="store_true", help="index again the images that failed before")
    index.add_argument("--no-build-index", action="store_true", help="do not build the vector index afterwards")
    index.add_argument("--max-failed-fraction", type=fraction, default=DEFAULT_MAX_FAILED_FRACTION,
                       help="most failed inputs, as a fraction of those the run tried, for it to succeed (exit 0); "
                            f"bad files are recorded and listed either way (default {DEFAULT_MAX_FAILED_FRACTION:g})")
    index.add_argument("--sync", action="store_true",
                       help="afterwards, remove the images whose source under SOURCES is gone or changed (a changed "
                            "file is indexed again); decided from the listing, without reading finished files")
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    index.set_defaults(run=run_index)

    build = commands.add_parser("build-index", help="build, refresh or (when the table has outgrown it) retrain the vector and scalar indexes")
    add_db(build)
    build.add_argument("--force", action="store_true", help="build the vector index even on a small table")
    build.set_defaults(run=run_build_index)

    stats = commands.add_parser("stats", help="what a database holds")
    add_db(stats)
    stats.set_defaults(run=run_stats)


def run_index(args) -> int:
    from dataclasses import replace

    from maskdex.pipelines.index.job import IndexSettings
    from maskdex.pipelines.index.job import run_index as index

    on_gpu = args.device.startswith("cuda")
    gpus = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if on_gpu else 0.0)
    mask_settings = {name: value for name, value in (("points_per_side", args.points_per_side),
                                                      ("max_masks", args.max_masks),
                                                      ("min_area", args.min_area)) if value is not None}
    defaults = IndexSettings()
    settings = IndexSettings(
        **model_options(args), mask_settings=mask_settings, amg=args.amg,
        sam=replace(defaults.sam, max_actors=args.sam_actors, num_gpus=gpus),
        clip=replace(defaults.clip, max_actors=args.clip_actors, num_gpus=gpus,
                     batch_size=args.clip_batch or defaults.clip.batch_size),
        commit_every=args.commit_every or defaults.commit_every,
        commit_seconds=args.commit_seconds or defaults.commit_seconds, retry_failed=args.retry_failed,
        build_index=not args.no_build_index, sync=args.sync,
    )
    summary = index(args.sources, args.db, settings, address=args.address)
    print(json.dumps(summary.as_dict(), indent=2, default=str) if args.json else summary.render(), flush=True)
    failed = summary.too_many_failures(args.max_failed_fraction)
    if failed:
        print(f"maskdex index: error: {failed} (status 'failed' in the images table)", file=terminal())
        return 1
    return 0


def run_build_index(args) -> int:
    from maskdex.storage.index_store import IndexStore

    built = IndexStore.open(args.db, fingerprint=None, embed_dim=None, create=False).upkeep.build_index(force=args.force)
    print(json.dumps(built, indent=2, default=str))
    return 0


def run_stats(args) -> int:
    from maskdex.storage.index_store import IndexStore

    print(json.dumps(IndexStore.open(args.db, fingerprint=None, embed_dim=None, read_only=True).stats(), indent=2,
                     default=str))
    return 0


