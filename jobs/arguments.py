"""Argument types and options shared by every `maskdex` subcommand."""

from __future__ import annotations

import argparse


def add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="LanceDB directory or object-store URI")


def add_model_options(parser: argparse.ArgumentParser, *, preset: bool = True) -> None:
    """--models (unless the database names the models, as for search), --weights-dir and --device."""
    if preset:
        parser.add_argument("--models", default="tiny", help="model preset (see `maskdex presets`; default tiny)")
    parser.add_argument("--weights-dir", default=None, help="directory with the preset's weight files")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ModelOptions (every job's settings) that add_model_options parsed."""
    options = {"weights": args.weights_dir, "device": args.device}
    if hasattr(args, "models"):
        options["models"] = args.models
    return options


def at_least(minimum: int):
    """An argparse type: a whole number no smaller than `minimum`, else a message naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = at_least(1)
