"""dc_test's progress: the legacy ``-progress`` lines, and a live bar when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 30
_REDRAW_EVERY = 0.2


class Progress:
    """Call with the number of tests done so far after each one."""

    def __init__(self, total: int, every: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.every = every
        self.stream = stream
        self.live = stream.isatty() and total > 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, done: int) -> None:
        if self.every and done % self.every == 0:
            self._clear()
            print(f"Info, total operations = {done:7d}", file=self.stream)
        if self.live:
            now = time.monotonic()
            if now - self._drawn >= _REDRAW_EVERY or done == self.total:
                self._drawn = now
                self._draw(done, now)

    def _draw(self, done: int, now: float) -> None:
        filled = _BAR_WIDTH * done // self.total
        rate = done / max(now - self._started, 1e-9)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.stream.write(
            f"\r[{bar}] {100 * done // self.total:3d}% {done}/{self.total} {rate:,.0f} ops/s"
        )
        self.stream.flush()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\r\033[K")

    def finish(self) -> None:
        """Remove the bar before the final lines."""
        self._clear()
