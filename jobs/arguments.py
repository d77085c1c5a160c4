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


def add_rerank_options(parser) -> None:
    """The second stage's options (MaTIR's MLLM re-rank); shared by `search` and `eval retrieval`."""
    from maskdex.operators.registry.rerankers import DEFAULT_MODEL, DEFAULT_TOP, QWEN25_VL

    group = parser.add_argument_group("re-rank (a multimodal LLM checks the top results and points at the mask)")
    group.add_argument("--rerank", action="store_true", help="re-rank the top results with a multimodal LLM")
    group.add_argument("--rerank-top", type=positive_int, default=DEFAULT_TOP,
                       help=f"first-stage results the re-ranker looks at (default {DEFAULT_TOP})")
    group.add_argument("--rerank-backend", choices=("transformers", "openai", "tiny"), default="transformers",
                       help="transformers: a local Qwen2.5-VL; openai: an OpenAI-compatible server; tiny: a "
                            "random-weight Qwen2.5-VL for tests and offline demos (default transformers)")
    group.add_argument("--rerank-model", default=None,
                       help=f"transformers: tiny, {', '.join(QWEN25_VL)} (from the weights directory) or a checkpoint "
                            f"directory (default {DEFAULT_MODEL}); openai: the served model's name")
    group.add_argument("--rerank-endpoint", default=None, help="openai: base URL, e.g. http://localhost:8001/v1")
    group.add_argument("--rerank-key-env", default=None,
                       help="openai: name of the environment variable holding the API key (keys stay off the "
                            "command line)")
    group.add_argument("--rerank-batch", type=positive_int, default=8,
                       help="candidates per generate call, or requests in flight for openai (default 8)")
    group.add_argument("--rerank-timeout", type=float, default=60.0, help="openai: seconds per request (default 60)")
    group.add_argument("--rerank-boxes", choices=("pixels", "normalized-1000", "normalized-1"), default="pixels",
                       help="openai: how the served model writes boxes (default pixels, as Qwen2.5-VL)")
    group.add_argument("--rerank-device", default="auto", help="transformers: auto, cpu or cuda")


def rerank_settings(args):
    """RerankSettings from the options of add_rerank_options; a clear error for a missing key variable."""
    import os

    from maskdex.operators.registry.rerankers import DEFAULT_MODEL, RerankSettings

    key = None
    if args.rerank_key_env:
        key = os.environ.get(args.rerank_key_env)
        if not key:
            raise ValueError(f"--rerank-key-env names ${args.rerank_key_env}, which is not set")
    model = args.rerank_model or (DEFAULT_MODEL if args.rerank_backend == "transformers" else "")
    return RerankSettings(backend=args.rerank_backend, model=model, top=args.rerank_top,
                          batch_size=args.rerank_batch, device=args.rerank_device, endpoint=args.rerank_endpoint,
                          api_key=key, timeout_s=args.rerank_timeout, box_convention=args.rerank_boxes).check()
