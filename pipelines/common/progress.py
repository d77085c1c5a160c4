"""Progress of a long job on the console: one line every few seconds, on stderr, so stdout keeps the result.

Ray Data's own progress report (ten lines of operator internals every ten seconds when stderr is not a
terminal) is turned off by init_ray; the jobs report what a user counts instead: images done, rate, time left.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int | None, *, unit: str = "images", every_s: float = 10.0, stream=None):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = self._last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        line = f"{self.what}: {self.done}"
        if self.total:
            line += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            line += f" {self.unit}"
        line += f", {rate:.2f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            line += f", about {_duration((self.total - self.done) / rate)} left"
        print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
