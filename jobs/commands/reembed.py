"""`maskdex reembed`: a finished index's masks, embedded by another Alpha-CLIP into a new database."""

from __future__ import annotations

import json

from maskdex.jobs.arguments import add_db, add_model_options, model_options, positive_int


def add_parser(commands) -> None:
    reembed = commands.add_parser(
        "reembed", help="embed an index's stored masks with another Alpha-CLIP into a new database (no SAM 2)",
        description="Reads DB's images again and embeds their stored masks with PRESET's Alpha-CLIP into NEWDB: "
                    "same image ids, region ids and masks, no SAM 2. PRESET's SAM 2 must be DB's (e.g. tiny-seed1 "
                    "for a tiny index), or write keep+ALPHACLIP (e.g. keep+alpha-clip-l14) to keep DB's. DB is "
                    "only read; a killed run resumes where it stopped.")
    reembed.add_argument("--from", dest="source", required=True, metavar="DB", help="the index whose masks are kept")
    add_db(reembed)
    add_model_options(reembed)
    reembed.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")
    reembed.add_argument("--clip-actors", type=positive_int, default=None,
                         help="most Alpha-CLIP actors (default: as many as the cluster can place)")
    reembed.add_argument("--clip-batch", type=positive_int, default=None,
                         help="images per Alpha-CLIP call, each writing one table fragment (default 16)")
    reembed.add_argument("--gpus-per-actor", type=float, default=None,
                         help="GPUs each Alpha-CLIP actor reserves (default: 1 with --device cuda, else 0)")
    reembed.add_argument("--max-side", type=positive_int, default=None,
                         help="the working size the source was indexed at (default 1024, as `maskdex index`)")
    reembed.add_argument("--commit-every", type=positive_int, default=None, help="most images per database commit")
    reembed.add_argument("--commit-seconds", type=float, default=None,
                         help="commit at least this often, in seconds (default 10)")
    reembed.add_argument("--no-build-index", action="store_true", help="do not build the vector index afterwards")
    reembed.add_argument("--json", action="store_true", help="print the summary as JSON")
    reembed.set_defaults(run=run)


def run(args) -> int:
    from dataclasses import replace

    from maskdex.pipelines.index.job import IndexSettings
    from maskdex.pipelines.index.reembed import REEMBED_CLIP, run_reembed

    gpus = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if args.device.startswith("cuda") else 0.0)
    defaults = IndexSettings()
    settings = IndexSettings(
        **model_options(args),
        clip=replace(REEMBED_CLIP, max_actors=args.clip_actors, num_gpus=gpus,
                     batch_size=args.clip_batch or REEMBED_CLIP.batch_size),
        max_side=args.max_side or defaults.max_side,
        commit_every=args.commit_every or defaults.commit_every,
        commit_seconds=args.commit_seconds or defaults.commit_seconds,
        build_index=not args.no_build_index,
    )
    summary = run_reembed(args.source, args.db, settings, address=args.address)
    print(json.dumps(summary.as_dict(), indent=2, default=str) if args.json else summary.render())
    return 0
