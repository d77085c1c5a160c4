"""What a `maskdex` command shows on the terminal: its own lines, and nothing of Ray's or Lance's internals.

Ray and Lance write to the process's stderr from several layers: Python loggers (Ray's token-auth
warning), Python warnings printed in forked children (`lance is not fork-safe`), and C++ log lines of
Ray's core worker in this very process (`core_worker.cc ... constructor arguments in the object
store`). Ray's settings reach only some of them (log_to_driver=False keeps the workers' output in
Ray's session logs, DataContext switches off Ray Data's progress bars: ray_pools.init_ray does both),
so a quiet command moves file descriptor 2 itself onto a log file and keeps a copy of the terminal
for maskdex's own lines: progress, summaries, errors. `--verbose` leaves stderr alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from maskdex.pipelines.common import progress

LOG_DIR_ENV = "MASKDEX_LOG_DIR"


def terminal():
    """The stream for maskdex's own lines (the terminal, while a quiet command sends stderr to its log)."""
    return progress.console()


def log_dir() -> Path:
    """Where quiet commands keep what Ray and Lance wrote: $MASKDEX_LOG_DIR, else TMPDIR/maskdex-logs."""
    return Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "maskdex-logs")


class Console:
    """The terminal (`stream`) and, in a quiet session, the log file that holds everything else."""

    def __init__(self, stream, log_path: Path | None, *, verbose: bool = False):
        self.stream = stream
        self.log_path = log_path
        self.verbose = verbose

    def print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def log(self, text: str) -> None:
        """Into the log file; on the console with --verbose; else (main() called in-process) nowhere."""
        if self.log_path is None:
            if self.verbose:
                self.print(text)
            return
        with open(self.log_path, "a") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")

    def where_details_are(self) -> str:
        return f" (details: {self.log_path})" if self.log_path is not None else ""


@contextlib.contextmanager
def session(command: str, *, quiet: bool):
    """A Console for one command. Quiet, and stderr the process's own (the CLI, not a test calling
    main() with stderr captured): fd 2 goes to a log file until the command ends."""
    if not quiet or not _is_process_stderr(sys.stderr):
        console = Console(sys.stderr, None, verbose=not quiet)
        with _maskdex_lines_to(console.stream):
            yield console
        return
    directory = log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"maskdex-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = open(terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                    errors="backslashreplace")
    with open(path, "ab", buffering=0) as log_file:
        os.dup2(log_file.fileno(), 2)
    console = Console(terminal, path)
    try:
        with _maskdex_lines_to(terminal):
            yield console
    finally:
        _stop_ray()  # its shutdown messages belong in the log too
        sys.stderr.flush()
        os.dup2(terminal_fd, 2)
        terminal.close()
        if path.stat().st_size == 0:
            path.unlink()


@contextlib.contextmanager
def _maskdex_lines_to(stream):
    """maskdex's own progress lines and its loggers' warnings go to `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("maskdex")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    progress.set_console(stream)
    try:
        yield
    finally:
        progress.set_console(None)
        logger.removeHandler(handler)
        logger.propagate = propagate


def _is_process_stderr(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _stop_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
