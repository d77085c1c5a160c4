"""The `maskdex` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback

from maskdex.jobs import console as consoles
from maskdex.jobs.commands import demo, evaluate, index, reembed, remove, samples, search, segment, serve

# Exit statuses: 0 the command did its work, 1 it did not (a run whose inputs failed, an error in a
# worker), 2 bad input (arguments, a missing weight file, source or database), 130 interrupted,
# 141 stdout was closed (as SIGPIPE would end it: `maskdex search ... | head`).
BAD_INPUT, FAILED, INTERRUPTED, CLOSED_STDOUT = 2, 1, 130, 141
# Commands that keep stderr as it is: the service prints Ray Serve's own start-up and request lines.
LOUD_COMMANDS = ("serve",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdex",
        description="Object-level image search and few-shot segmentation at scale, on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    index.add_parsers(commands)
    remove.add_parser(commands)
    reembed.add_parser(commands)
    search.add_parser(commands)
    segment.add_parsers(commands)
    serve.add_parser(commands)
    samples.add_parser(commands)
    demo.add_parser(commands)
    evaluate.add_parsers(commands)
    presets = commands.add_parser("presets", help="list the model presets and the weight files they need")
    presets.set_defaults(run=_list_presets)
    for command in _leaf_parsers(commands):
        command.add_argument("--verbose", action="store_true",
                             help="show Ray's and Lance's own messages on stderr (else they go to a log file "
                                  f"under ${consoles.LOG_DIR_ENV} or {consoles.log_dir()}, named in any error)")
    return parser


def _leaf_parsers(subparsers):
    for parser in dict.fromkeys(subparsers.choices.values()):
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if nested:
            yield from _leaf_parsers(nested[0])
        elif parser.prog.split()[1] not in LOUD_COMMANDS:
            yield parser


def _list_presets(args) -> int:
    from maskdex.operators.registry.presets import PRESETS, missing_weights, weight_files
    from maskdex.operators.registry.weights import weights_dir

    print(f"weights directory: {weights_dir()}")
    for preset in PRESETS.values():
        missing = {file.filename for file, _ in missing_weights(preset)}
        print(f"{preset.name:8s} {preset.fingerprint}")
        for file in weight_files(preset):
            print(f"{'':8s}   needs {file.filename}{'  (missing)' if file.filename in missing else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(["maskdex", *(part for part in (args.command, getattr(args, "action", None),
                                                   getattr(args, "eval_kind", None)) if part)])
    verbose = getattr(args, "verbose", True)
    with consoles.session(args.command, quiet=not verbose) as console:
        try:
            status = args.run(args)
            sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's exit
            return status
        except BrokenPipeError:
            _drop_stdout()
            return CLOSED_STDOUT
        except KeyboardInterrupt:
            console.print(f"{name}: interrupted")
            return INTERRUPTED
        except Exception as error:  # every error ends in one message; a traceback goes to the log
            message, bad_input = describe(error)
            if not bad_input:
                console.log(traceback.format_exc())
            console.print(f"{name}: error: {message}" + ("" if bad_input else console.where_details_are()))
            return BAD_INPUT if bad_input else FAILED


def describe(error: BaseException) -> tuple[str, bool]:
    """(the message for the console, whether it is bad input) of an error a command raised. An error
    that Ray wrapped (a worker's or an actor constructor's) is told by the exception the worker raised."""
    error = _worker_exception(error)
    if isinstance(error, str):
        return error, False
    if isinstance(error, (ValueError, FileNotFoundError)):
        return str(error), True
    return f"{type(error).__name__}: {error}", False


def _worker_exception(error: BaseException) -> BaseException | str:
    """The innermost exception that is not Ray's own along error's causes; for a Ray error that carries
    only text (an actor that died in its constructor), the last exception line of that text and what follows."""
    seen = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not _from_ray(current):
            return current
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    lines = str(error).splitlines()
    raised = [i for i, line in enumerate(lines) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:]*: ", line)]
    return "\n".join(lines[raised[-1]:]) if raised else f"{type(error).__name__}: {lines[0] if lines else ''}"


def _from_ray(error: BaseException) -> bool:
    module = type(error).__module__
    return module == "ray" or module.startswith("ray.")


def _drop_stdout() -> None:
    """What is still buffered for a closed stdout goes nowhere, so that exiting does not fail on it again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
