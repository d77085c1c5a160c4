"""Argument types and options shared by every `maskdex` subcommand."""

from __future__ import annotations

import argparse


def add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="LanceDB directory or object-store URI")


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
