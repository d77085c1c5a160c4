"""The `maskdex` command line."""

from __future__ import annotations

import argparse
import sys

from maskdex.jobs.commands import demo, evaluate, index, samples, search, segment, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdex",
        description="Object-level image search and few-shot segmentation at scale, on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    index.add_parsers(commands)
    search.add_parser(commands)
    segment.add_parsers(commands)
    serve.add_parser(commands)
    samples.add_parser(commands)
    demo.add_parser(commands)
    evaluate.add_parsers(commands)
    presets = commands.add_parser("presets", help="list the model presets and the weight files they need")
    presets.set_defaults(run=_list_presets)
    return parser


def _list_presets(args) -> int:
    from maskdex.operators.registry.presets import PRESETS
    from maskdex.operators.registry.weights import weights_dir

    print(f"weights directory: {weights_dir()}")
    for preset in PRESETS.values():
        files = [f for f in (preset.sam2.checkpoint, preset.alpha_clip.clip_weights,
                             preset.alpha_clip.alpha_checkpoint, preset.dense_clip.clip_weights) if f]
        print(f"{preset.name:8s} {preset.fingerprint}")
        for name in files:
            print(f"{'':8s}   needs {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"maskdex {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
