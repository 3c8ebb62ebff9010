"""A bound on how fast the log can grow, whatever the peers do.

Every record passes through :class:`RateLimitedHandler` on its way to the log destination. Records
are grouped by *kind*: the logger's name plus the message template (``record.msg`` before its
arguments are filled in), so "protocol error from peer A" and "protocol error from peer B" are one
kind. Time is cut into windows of ``WINDOW_SECONDS``. In each window:

* at most ``KIND_LINES_PER_WINDOW`` records of one kind are written, and at most
  ``TOTAL_LINES_PER_WINDOW`` records of all kinds together;
* the records held back are counted, and when the window closes one summary line per kind says
  how many there were (``1234 more like this in the last 10 s (last: ...)``), for at most
  ``SUMMARY_KINDS_PER_WINDOW`` kinds; any further kinds share one last summary line;
* every written line, summaries included, is cut to ``MAX_LINE_BYTES`` bytes.

So a window writes at most ``TOTAL_LINES_PER_WINDOW + SUMMARY_KINDS_PER_WINDOW + 1`` lines of at
most ``MAX_LINE_BYTES`` bytes each (:data:`MAX_LINES_PER_WINDOW`, :data:`MAX_BYTES_PER_WINDOW`):
11.1 lines and about 11.4 KB per second on average, whatever arrives. A storm of one kind costs
``KIND_LINES_PER_WINDOW + 1`` lines per window.

A window's summaries are written by a timer when the window ends (so the count of a storm that
stopped still appears), or by the next record after it, or when logging shuts down. After a fork
the child starts with its own windows and its own timer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = [
    "KIND_LINES_PER_WINDOW",
    "MAX_BYTES_PER_WINDOW",
    "MAX_LINES_PER_WINDOW",
    "MAX_LINE_BYTES",
    "SUMMARY_KINDS_PER_WINDOW",
    "TOTAL_LINES_PER_WINDOW",
    "WINDOW_SECONDS",
    "BoundedFormatter",
    "RateLimitedHandler",
]

#: Length of one counting window.
WINDOW_SECONDS = 10.0
#: Records of one kind written per window; the rest are counted.
KIND_LINES_PER_WINDOW = 10
#: Records of all kinds written per window; the rest are counted.
TOTAL_LINES_PER_WINDOW = 100
#: Kinds that get a summary line of their own per window; the others share one line.
SUMMARY_KINDS_PER_WINDOW = 10
#: Longest line written, in bytes (longer ones are cut and end in CUT_MARK).
MAX_LINE_BYTES = 1024
#: The most lines and bytes one window writes.
MAX_LINES_PER_WINDOW = TOTAL_LINES_PER_WINDOW + SUMMARY_KINDS_PER_WINDOW + 1
MAX_BYTES_PER_WINDOW = MAX_LINES_PER_WINDOW * MAX_LINE_BYTES
#: Kinds tracked per window; records of further kinds are only counted (a message formatted
#: before logging, with peer data in it, would otherwise make a new kind per peer).
MAX_KINDS_PER_WINDOW = 1000
#: Appended to a line that was cut.
CUT_MARK = " [cut]"

_Kind = tuple[str, str]


class _Tally:
    """One kind in the current window."""

    __slots__ = ("held", "last", "level", "written")

    def __init__(self) -> None:
        self.written = 0
        self.held = 0
        self.level = logging.NOTSET  # the highest level held back
        self.last: logging.LogRecord | None = None  # the latest record held back


class RateLimitedHandler(logging.Handler):
    """Passes records on to ``target`` within the bounds of this module, and writes summaries."""

    def __init__(
        self, target: logging.Handler, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.target = target
        self._clock = clock
        self._reset_window(clock())
        self._timer: threading.Timer | None = None
        self._timer_pid = os.getpid()
        self._closed = False

    def _reset_window(self, now: float) -> None:
        self._window_start = now
        self._tallies: dict[_Kind, _Tally] = {}
        self._written = 0
        self._held_untracked = 0  # records of kinds beyond MAX_KINDS_PER_WINDOW

    # -- logging.Handler -------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Called with this handler's lock held (``Handler.handle``)."""
        now = self._clock()
        if now - self._window_start >= WINDOW_SECONDS:
            self._summarise(now)
        kind = (record.name, str(record.msg))
        tally = self._tallies.get(kind)
        if tally is None:
            if len(self._tallies) >= MAX_KINDS_PER_WINDOW:
                self._held_untracked += 1
                self._arm_timer(now)
                return
            tally = self._tallies[kind] = _Tally()
        if tally.written < KIND_LINES_PER_WINDOW and self._written < TOTAL_LINES_PER_WINDOW:
            tally.written += 1
            self._written += 1
            self.target.handle(record)
            return
        tally.held += 1
        tally.last = record
        tally.level = max(tally.level, record.levelno)
        self._arm_timer(now)

    def flush(self) -> None:
        """Write the summaries of what was held back so far (the window's counts of written
        lines stand, so flushing never raises the bound), then the target's buffers."""
        with self.lock:  # type: ignore[union-attr]
            self._write_summaries(self._clock())
        self.target.flush()

    def close(self) -> None:
        self.flush()
        with self.lock:  # type: ignore[union-attr]
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.target.close()
        super().close()

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        self.target.setFormatter(fmt)

    # -- summaries ---------------------------------------------------------------------------

    def _arm_timer(self, now: float) -> None:
        """Make sure the window's summaries are written when it ends, even if nothing follows."""
        if self._timer_pid != os.getpid():  # forked: the parent's timer thread is not ours
            self._timer, self._timer_pid = None, os.getpid()
        if self._timer is not None or self._closed:
            return
        delay = max(0.0, self._window_start + WINDOW_SECONDS - now)
        self._timer = threading.Timer(delay, self._timer_fired)
        self._timer.daemon = True
        self._timer.start()

    def _timer_fired(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._timer = None
            now = self._clock()
            if now - self._window_start >= WINDOW_SECONDS:
                self._summarise(now)
            elif self._held():
                self._arm_timer(now)  # the window moved on meanwhile: wait for its end

    def _held(self) -> bool:
        return bool(self._held_untracked) or any(t.held for t in self._tallies.values())

    def _summarise(self, now: float) -> None:
        """Write one summary per kind held back in the window, then start a new window."""
        self._write_summaries(now)
        self._reset_window(now)

    def _write_summaries(self, now: float) -> None:
        """One summary line per kind held back (at most SUMMARY_KINDS_PER_WINDOW, then one for
        the rest); the held counts start again from zero."""
        seconds = now - self._window_start
        held = sorted(
            (tally for tally in self._tallies.values() if tally.held),
            key=lambda tally: -tally.level,  # the most severe kinds get their own line first
        )
        others = self._held_untracked
        other_kinds = 1 if others else 0
        for index, tally in enumerate(held):
            if index < SUMMARY_KINDS_PER_WINDOW:
                self.target.handle(_summary_record(tally, seconds))
            else:
                others += tally.held
                other_kinds += 1
        if others:
            record = logging.LogRecord(
                __name__,
                logging.WARNING,
                __file__,
                0,
                "%d more lines of %d other kinds in the last %.0f s",
                (others, other_kinds, seconds),
                None,
            )
            self.target.handle(record)
        for tally in held:
            tally.held, tally.level, tally.last = 0, logging.NOTSET, None
        self._held_untracked = 0


def _summary_record(tally: _Tally, seconds: float) -> logging.LogRecord:
    last = tally.last
    assert last is not None
    record = logging.makeLogRecord(
        {
            "name": last.name,
            "levelno": tally.level,
            "levelname": logging.getLevelName(tally.level),
            "msg": "%d more like this in the last %.0f s (last: %s)",
            "args": (tally.held, seconds, last.getMessage()),
        }
    )
    return record


class BoundedFormatter(logging.Formatter):
    """Formats with ``inner`` and cuts the result to ``MAX_LINE_BYTES`` bytes (newline aside)."""

    def __init__(self, inner: logging.Formatter, max_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__()
        self.inner = inner
        self.max_bytes = max_bytes - 1  # the newline the handler adds

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        if len(text) * 4 <= self.max_bytes:  # short enough whatever its characters
            return text
        data = text.encode("utf-8", "backslashreplace")
        if len(data) <= self.max_bytes:
            return text
        keep = self.max_bytes - len(CUT_MARK)
        return data[:keep].decode("utf-8", "ignore") + CUT_MARK
