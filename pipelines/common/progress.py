"""Progress of a long job on the console: one line every few seconds, on stderr, so stdout keeps the result.

Ray Data's own progress report (ten lines of operator internals every ten seconds when stderr is not a
terminal) is turned off by init_ray; the jobs report what a user counts instead: images done, rate, time left.

Start-up (Ray, its workers, loading the models) is reported apart, once, when the first result
arrives; the rate and the time left are measured from then on, so a minute of start-up does not make a
short run look ten times slower than it is.
"""

from __future__ import annotations

import sys
import time

_console = None


def set_console(stream) -> None:
    """Where maskdex's own lines go (None: sys.stderr). The CLI points this at the terminal while it
    sends everything else written to stderr (Ray's and Lance's messages) to a log file."""
    global _console
    _console = stream


def console():
    return _console if _console is not None else sys.stderr


class Progress:
    """clock: seconds, monotonic (time.monotonic; a test passes its own to state when results arrive)."""

    def __init__(self, what: str, total: int | None, *, unit: str = "images", every_s: float = 10.0, stream=None,
                 clock=time.monotonic):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = stream
        self.done = 0
        self._clock = clock
        self.started = clock()
        self._first: tuple[float, int] | None = None  # (time, count) when the first result arrived
        self._last = self.started

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from the start to the first result; None before it."""
        return None if self._first is None else self._first[0] - self.started

    def advance(self, n: int = 1) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (now, n)
            self.done += n
            self._last = now
            self._write(f"{self.what}: started in {_duration(now - self.started)} (Ray, workers, models); "
                        f"{self._count()}")
            return
        self.done += n
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        first_time, first_count = self._first
        rate = (self.done - first_count) / max(now - first_time, 1e-9)
        line = f"{self.what}: {self._count()}, {rate:.2f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            line += f", about {_duration((self.total - self.done) / rate)} left"
        self._write(line)

    def _count(self) -> str:
        if self.total:
            return f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        return f"{self.done} {self.unit}"

    def _write(self, line: str) -> None:
        print(line, file=self.stream if self.stream is not None else console(), flush=True)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
