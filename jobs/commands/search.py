"""`maskdex search`: by text, by example (an indexed region, or an image of your own, whole / box / mask),
or both; optionally re-ranked, and exported as COCO instances."""

from __future__ import annotations

import json
import os

from maskdex.jobs.arguments import add_db, add_model_options, add_rerank_options, positive_int, rerank_settings


def add_parser(commands) -> None:
    search = commands.add_parser(
        "search", help="find images by text or by example; ranked by their best-matching region",
        description="Search by TEXT, by an example (--like an indexed region, or --image a file of your own), "
                    "or by both: the query is normalise((1 - w) * text + w * example) of the two unit vectors, "
                    "w = --weight.")
    search.add_argument("text", metavar="TEXT", nargs="?", default=None,
                        help="what to look for (optional when an example is given)")
    add_db(search)
    search.add_argument("-k", type=positive_int, default=10, help="images to return (default 10)")
    search.add_argument("--templates", action="store_true", help="average the query over CLIP prompt templates")
    example = search.add_argument_group("query by example")
    which = example.add_mutually_exclusive_group()
    which.add_argument("--like", metavar="IMAGE_ID[:N]", default=None,
                       help="an indexed image's region N (or, without :N, the whole image): its stored embedding, "
                            "no model call")
    which.add_argument("--image", metavar="FILE", default=None,
                       help="an image of your own, embedded as the index embeds a region (whole, or see --box/--mask)")
    shape = example.add_mutually_exclusive_group()
    shape.add_argument("--box", metavar="X,Y,W,H", default=None, help="with --image: only this box of it, in its pixels")
    shape.add_argument("--mask", metavar="PNG", default=None,
                       help="with --image: only this mask of it (an image of the same size; non-zero pixels are in)")
    example.add_argument("--weight", type=float, default=None,
                         help="with TEXT and an example: the example's share w in [0, 1] (default 0.5)")
    example.add_argument("--exclude-self", action="store_true",
                         help="leave the example's own image out of the results")
    add_model_options(search, preset=False)
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.add_argument("--export", nargs=2, metavar=("FORMAT", "FILE"), default=None,
                        help="also write the results to FILE; FORMAT: coco (COCO instances: one annotation per "
                             "region, its RLE as the segmentation, the query as the category)")
    add_rerank_options(search)
    search.set_defaults(run=run_search)


def run_search(args) -> int:
    from maskdex.pipelines.search import EXAMPLE_WEIGHT, Example, Query, TextSearcher, parse_box

    if (args.box or args.mask) and not args.image:
        raise ValueError("--box and --mask restrict an --image; give the image too")
    if args.export and args.export[0] != "coco":
        raise ValueError(f"--export writes coco only, not {args.export[0]!r}")
    if args.weight is not None and not (args.text is not None and (args.like or args.image)):
        raise ValueError("--weight mixes TEXT with an example: give both")
    if args.rerank and args.text is None:
        raise ValueError("--rerank asks a multimodal LLM about TEXT: give the text")
    example = None
    if args.image:
        example = Example(_read(args.image, "--image"), box=parse_box(args.box) if args.box else None,
                          mask=_read(args.mask, "--mask") if args.mask else None)
    query = Query(args.text, args.like, example, EXAMPLE_WEIGHT if args.weight is None else args.weight,
                  args.exclude_self, args.templates).check()  # before the model loads: bad input fails fast
    searcher = TextSearcher(args.db, weights=args.weights_dir, device=args.device)
    vector, filters = searcher.query_vector(query)
    if args.rerank:
        from maskdex.operators.registry.rerankers import build_reranker
        from maskdex.pipelines.rerank import ResultReranker, search_and_rerank

        settings = rerank_settings(args)
        reranker = ResultReranker(build_reranker(settings, weights=args.weights_dir), searcher.store,
                                  top=settings.top)
        results = search_and_rerank(searcher, reranker, args.text, k=args.k, filters=filters, query=vector)
    else:
        results = searcher.lookup(vector, k=args.k, filters=filters)
    if args.export:
        from maskdex.pipelines.export import coco_instances, query_label

        label = query_label(args.text, args.like, os.path.basename(args.image) if args.image else None)
        with open(args.export[1], "w") as file:
            json.dump(coco_instances(results, label), file)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    _print_table(results, args.rerank)
    if args.export:
        print(f"wrote {len(results)} result(s) as COCO instances to {args.export[1]}")
    return 0


def _read(path: str, option: str) -> bytes:
    if not os.path.isfile(path):
        raise ValueError(f"{option} {path}: no such file")
    with open(path, "rb") as file:
        return file.read()


def _print_table(results: list[dict], reranked: bool) -> None:
    if not results:
        print("no results (is the database empty?)")
    print(f"{'rank':>4} {'score':>7}  {'region box (x, y, w, h)':>24}  " + ("re-rank  " if reranked else "") + "uri")
    for rank, result in enumerate(results, 1):
        verdict = f"{_rerank_label(result):<8} " if reranked else ""
        print(f"{rank:4d} {result['score']:7.3f}  {str(tuple(result['region']['bbox'])):>24}  {verdict}{result['uri']}")
    if reranked:
        unusable = [result["rerank"] for result in results if result["rerank"]["status"] in ("unparsed", "error")]
        if unusable:
            print(f"{len(unusable)} result(s) kept their first-stage rank: the re-ranker's reply was not usable "
                  f"(first: {unusable[0]['status']}: {unusable[0]['reason']})")


def _rerank_label(result: dict) -> str:
    rerank = result["rerank"]
    moved = rerank["first_stage_rank"] - rerank["rank"]
    arrow = f"+{moved}" if moved > 0 else (str(moved) if moved < 0 else "")
    return f"{rerank['status'][:4]}{arrow}"
