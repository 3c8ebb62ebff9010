"""The legacy progress line and the rules for when it is printed.

Evaluated every ``PROGRESS_INTERVAL`` seconds. Within a second of the last line, a line is printed
only if ``-progress N`` is set and the operation count has entered a new multiple of N; after a
second, the live sessions are counted and a line is printed if that count changed since the last
line, or on the same ``-progress`` rule. Without ``-progress``, operations alone never print.

Counting is free on the memory engine but walks the keys of a shared store (``SCAN``), so a count
that took T seconds is not repeated for ``COUNT_COST_FACTOR`` x T seconds: the progress line can
never spend more than about 1% of the store's time. Meanwhile the last count stands, as it
does when the store cannot be reached (or the shared cache is locked by a stopped worker): the
line goes on counting operations.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Awaitable, Callable

from ..cache.errors import StoreUnavailableError

__all__ = [
    "COUNT_COST_FACTOR",
    "PROGRESS_INTERVAL",
    "OperationTotals",
    "ProgressReporter",
    "format_progress",
]

#: Seconds between evaluations (the legacy event loop's poll timeout).
PROGRESS_INTERVAL = 0.5
#: The least time between two lines printed because the session count changed.
_SESSION_CHECK_INTERVAL = 1.0
#: A count that took T seconds waits this many times T before the next one.
COUNT_COST_FACTOR = 100


class OperationTotals:
    """The operations answered by each worker of ``dc_server -workers N``, in memory shared with
    the workers (made before the fork), so that the one reporting ``-progress`` counts them all.

    Each worker writes only its own slot, every ``PROGRESS_INTERVAL``; a replacement worker
    adds to what its predecessor counted.
    """

    def __init__(self, workers: int) -> None:
        # An anonymous mmap is MAP_SHARED: the children forked after this see each other's writes.
        self._memory = mmap.mmap(-1, 8 * workers)
        self._totals = memoryview(self._memory).cast("q")

    def slot(self, index: int) -> Callable[[int], None]:
        """Worker ``index``'s publisher: called with its own count so far."""
        totals = self._totals
        before = totals[index]  # read in the worker, at its start: its predecessors' share

        def publish(operations: int) -> None:
            totals[index] = before + operations

        return publish

    def total(self) -> int:
        return sum(self._totals)


def format_progress(operations: int, operations_delta: int, sessions: int, sessions_delta: int):
    """The progress line, in the legacy format."""
    sign = "+" if sessions_delta > 0 else "-" if sessions_delta < 0 else "="
    return (
        f"Info, total operations = {operations:7d}  (+{operations_delta:5d}), "
        f"total sessions = {sessions:5d}  ({sign}{abs(sessions_delta):3d})"
    )


class ProgressReporter:
    """Decides, at each evaluation, whether to print a progress line, and builds it."""

    def __init__(self, every: int, start_time: float) -> None:
        self.every = every  # -progress N; 0 means off
        self._last_time = start_time
        self._last_operations = 0
        self._last_sessions = 0
        self._counted = 0  # the latest count, reused until the next one is due
        self._next_count = start_time

    def _crossed_multiple(self, operations: int) -> bool:
        every = self.every
        return bool(every) and operations // every != self._last_operations // every

    async def evaluate(
        self, now: float, operations: int, count_sessions: Callable[[], Awaitable[int]]
    ) -> str | None:
        """The line to print now, or None."""
        crossed = self._crossed_multiple(operations)
        if now - self._last_time < _SESSION_CHECK_INTERVAL and not crossed:
            return None
        sessions = await self._count(now, count_sessions)
        if sessions == self._last_sessions and not crossed:
            return None
        line = format_progress(
            operations,
            operations - self._last_operations,
            sessions,
            sessions - self._last_sessions,
        )
        self._last_time = now
        self._last_operations = operations
        self._last_sessions = sessions
        return line

    async def _count(self, now: float, count_sessions: Callable[[], Awaitable[int]]) -> int:
        if now >= self._next_count:
            started = time.perf_counter()
            # Out of reach: the last count stands; the next is tried at the usual time.
            with contextlib.suppress(StoreUnavailableError):
                self._counted = await count_sessions()
            self._next_count = now + COUNT_COST_FACTOR * (time.perf_counter() - started)
        return self._counted
