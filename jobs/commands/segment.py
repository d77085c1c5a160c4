"""`maskdex supports add|list|remove`, `maskdex segment` and `maskdex segment-index`."""

from __future__ import annotations

import glob
import json
import os

from maskdex.jobs.arguments import add_db, add_model_options, model_options, positive_int
from maskdex.pipelines.fewshot.request import MODES, SegmentSpec


def add_parsers(commands) -> None:
    supports = commands.add_parser("supports", help="manage support sets: labelled examples for few-shot segmentation")
    actions = supports.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add a labelled folder to a support set (all of it, or nothing)")
    add_db(add)
    add.add_argument("--set", required=True, dest="set_name", help="support set name (created on first add)")
    add.add_argument("--images", required=True, help="folder of images")
    add.add_argument("--labels", required=True,
                     help="folder of PNG label maps, one per image with the same stem (class indices, 255 = ignore)")
    add.add_argument("--classes", required=True,
                     help="file with one class per line, line n naming label n; '@name' marks an example-only class")
    _models_and_cluster(add)
    add.add_argument("--actors", type=positive_int, default=1, help="most feature actors (default 1)")
    add.add_argument("--json", action="store_true", help="print the summary as JSON")
    add.set_defaults(run=run_add)

    listing = actions.add_parser("list", help="the support sets, their classes and example counts")
    add_db(listing)
    listing.add_argument("--json", action="store_true", help="print {set: {class: images}} as JSON")
    listing.set_defaults(run=run_list)

    remove = actions.add_parser("remove", help="remove a support set, or one class of it")
    add_db(remove)
    remove.add_argument("--set", required=True, dest="set_name")
    remove.add_argument("--class", dest="class_name", default=None, help="remove only this class")
    remove.set_defaults(run=run_remove)

    segment = commands.add_parser("segment", help="segment images with a support set (RNS)")
    segment.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders, globs)")
    add_db(segment)
    segment.add_argument("--set", required=True, dest="set_name", help="support set to segment with")
    segment.add_argument("--classes", type=_class_list, default=None,
                         help="comma-separated classes, in label-id order (default: all of the set's, sorted)")
    segment.add_argument("--mode", choices=MODES, default=MODES[0],
                         help="classify patches, or SAM 2 regions (the index's, for indexed images)")
    segment.add_argument("--shots-only", action="store_true", help="use the examples only, not the class names")
    segment.add_argument("--out", required=True, help="folder for NAME.labels.png, NAME.overlay.png, NAME.json")
    segment.add_argument("--seed", type=int, default=0, help="seed of the per-image classifier's initialisation")
    _models_and_cluster(segment)
    segment.add_argument("--actors", type=positive_int, default=1,
                         help="most segmenter actors when there are several images (default 1)")
    segment.add_argument("--json", action="store_true", help="print the summaries as JSON")
    segment.set_defaults(run=run_segment)

    corpus = commands.add_parser("segment-index", help="segment the indexed images (all, or a search's top k) "
                                 "with a support set, into the database's segmentations table")
    add_db(corpus)
    corpus.add_argument("--set", required=True, dest="set_name", help="support set to segment with")
    corpus.add_argument("--classes", type=_class_list, default=None,
                        help="comma-separated classes, in label-id order (default: all of the set's, sorted)")
    which = corpus.add_mutually_exclusive_group(required=True)
    which.add_argument("--query", default=None, help="segment the top k images of this text search")
    which.add_argument("--all", action="store_true", help="segment every image of the index")
    corpus.add_argument("-k", type=positive_int, default=None, help="how many search results with --query (default 100)")
    corpus.add_argument("--mode", choices=MODES, default=MODES[0],
                        help="classify patches, or the index's SAM 2 regions")
    corpus.add_argument("--shots-only", action="store_true", help="use the examples only, not the class names")
    corpus.add_argument("--seed", type=int, default=0, help="seed of the per-image classifiers' initialisation")
    _models_and_cluster(corpus)
    corpus.add_argument("--actors", type=positive_int, default=1, help="most segmenter actors (default 1)")
    corpus.add_argument("--batch-size", type=positive_int, default=16,
                        help="images per actor call, whose classifiers train together (default 16)")
    corpus.add_argument("--commit-every", type=positive_int, default=16, help="results per commit (default 16)")
    corpus.add_argument("--retry-failed", action="store_true", help="segment again the images that failed before")
    corpus.add_argument("--json", action="store_true", help="print the summary as JSON")
    corpus.set_defaults(run=run_segment_index)


def _models_and_cluster(parser) -> None:
    add_model_options(parser)
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")


def _class_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _resources(args):
    from maskdex.pipelines.common.ray_pools import StageResources

    return StageResources(max_actors=args.actors, num_cpus=1.0, num_gpus=1.0 if args.device.startswith("cuda") else 0.0)


def run_add(args) -> int:
    from maskdex.pipelines.fewshot.supports import SupportSettings, ingest_folder

    settings = SupportSettings(**model_options(args), actors=_resources(args))
    summary = ingest_folder(args.images, args.labels, args.classes, args.db, args.set_name, settings,
                            address=args.address)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.render())
    return 0


def run_list(args) -> int:
    from maskdex.storage.support_store import SupportStore

    sets = SupportStore.open(args.db, dense_model=None, embed_dim=None, create=False).list_sets()
    if args.json:
        print(json.dumps(sets, indent=2))
        return 0
    if not sets:
        print("no support sets")
    for set_name, classes in sets.items():
        print(f"{set_name}: {len(classes)} classes")
        for class_name, images in classes.items():
            print(f"  {class_name}: {images} images")
    return 0


def run_remove(args) -> int:
    from maskdex.storage.support_store import SupportStore

    store = SupportStore.open(args.db, dense_model=None, embed_dim=None, create=False)
    if args.class_name is None:
        rows = store.remove_set(args.set_name)
        print(f"removed support set {args.set_name!r} ({rows} class prototypes)")
    else:
        rows = store.remove_class(args.set_name, args.class_name)
        print(f"removed class {args.class_name!r} from support set {args.set_name!r} ({rows} class prototypes)")
    return 0


def run_segment(args) -> int:
    from maskdex.pipelines.fewshot.segmenter import SegmentSettings, Segmenter
    from maskdex.pipelines.fewshot.request import check_spec
    from maskdex.pipelines.fewshot.segment_job import output_names, segment_many, segment_to_files

    settings = SegmentSettings(**model_options(args))
    spec = _spec(args)
    if len(args.images) == 1 and not _expands(args.images[0]):
        # One image is quicker in this process than on a Ray job; errors about it are errors of the command.
        check_spec(args.db, settings, spec)
        image = args.images[0]
        summaries = [segment_to_files(Segmenter(args.db, settings), image, args.out, output_names([image])[0], spec)]
        if "error" in summaries[0]:
            raise ValueError(summaries[0]["error"])
    else:
        summaries = segment_many(args.images, args.db, args.out, spec, settings, _resources(args),
                                 address=args.address)
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        for summary in summaries:
            print(_render(summary))
    return 1 if any("error" in summary for summary in summaries) else 0


def _spec(args) -> SegmentSpec:
    return SegmentSpec(args.set_name, None if args.classes is None else tuple(args.classes), args.mode,
                       args.shots_only, args.seed)


def _expands(image: str) -> bool:
    return os.path.isdir(image) or glob.has_magic(image)


def _render(summary: dict) -> str:
    if "error" in summary:
        return f"{summary['image']}: failed: {summary['error']}"
    shares = ", ".join(f"{name} {100 * summary['pixel_fractions'][name]:.1f}%" for name in summary["found"])
    note = "  (zero-shot: no class had examples)" if summary["used_fallback"] else ""
    return f"{summary['image']}: {shares}{note}\n  -> {summary['outputs']['overlay']}"


def run_segment_index(args) -> int:
    from dataclasses import replace

    from maskdex.pipelines.fewshot.segment_index import SegmentIndexSettings, Selection, run_segment_index as run
    from maskdex.pipelines.fewshot.segmenter import SegmentSettings

    if args.k is not None and args.query is None:
        raise ValueError("-k goes with --query (--all segments every indexed image)")
    selection = Selection(args.query, args.k or 100) if args.query is not None else Selection()
    spec = _spec(args)
    settings = SegmentIndexSettings(
        segment=SegmentSettings(**model_options(args)),
        actors=replace(_resources(args), batch_size=args.batch_size), commit_every=args.commit_every,
        retry_failed=args.retry_failed)
    summary = run(args.db, spec, selection, settings, address=args.address)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.render())
    return 0
