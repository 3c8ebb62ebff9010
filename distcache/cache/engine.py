"""The storage-engine interface every session cache implements, and the clocks that drive expiry.

The server validates an ADD request (status codes, in the legacy order) before it calls an engine;
an engine only stores, finds and forgets sessions. Engines differ in where sessions live (process
memory, Valkey/Redis, ...) but must agree on what a client can observe:

* Every method is **atomic**: a concurrent caller sees a method's effect entirely or not at all.
  In particular ``add`` checks for a duplicate and stores in one step, so two racing ADDs of the
  same id give exactly one ``STORED`` and one ``DUPLICATE``.
* An entry added at time *t* with timeout *T* ms expires at instant *t + T*; it is **present while
  now <= t + T** and absent to every method once now > t + T (1 ms resolution).
* ``get`` and ``have`` never change an entry's expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Protocol, runtime_checkable

from distcache.wire import MAX_TIMEOUT_MS

__all__ = [
    "AddResult",
    "CallbackStore",
    "Clock",
    "ManualClock",
    "MonotonicClock",
    "SessionStore",
    "StoreClosedError",
]


class AddResult(Enum):
    """What ``SessionStore.add`` did."""

    #: The session was stored (evicting the soonest-expiring entries first if the store was full).
    STORED = "stored"
    #: A live session is already stored under that id; nothing changed (not even eviction).
    DUPLICATE = "duplicate"


class StoreClosedError(RuntimeError):
    """An operation was attempted on a store after ``close()``."""


@runtime_checkable
class Clock(Protocol):
    """A source of the current time in whole milliseconds, used for expiry."""

    def now_ms(self) -> int:
        """Return the current time in integer milliseconds; it must never go backwards."""
        ...


class MonotonicClock:
    """The default clock: the system monotonic clock, truncated to milliseconds.

    The legacy server used the wall clock, so setting the system time (or an NTP step) moved every
    expiry at once: sessions vanished early or outlived their timeout. A monotonic clock only
    measures elapsed time, so a timeout of T ms always means T ms.
    """

    __slots__ = ()

    def now_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def __repr__(self) -> str:
        return "MonotonicClock()"


class ManualClock:
    """A clock that moves only when told to, so tests can step through expiry to the millisecond."""

    __slots__ = ("_now_ms",)

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = _non_negative_int("start_ms", start_ms)

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, ms: int) -> None:
        """Move the clock forward by ``ms`` milliseconds (``ms`` >= 0)."""
        self._now_ms += _non_negative_int("ms", ms)

    def set(self, ms: int) -> None:
        """Jump to the absolute time ``ms`` (may go backwards, to imitate a wall-clock step)."""
        self._now_ms = _non_negative_int("ms", ms)

    def __repr__(self) -> str:
        return f"ManualClock(start_ms={self._now_ms})"


def _non_negative_int(name: str, value: object) -> int:
    # bool is an int subclass, but a clock set to True is a bug, not a time.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int number of milliseconds, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 milliseconds, got {value}")
    return value


@runtime_checkable
class SessionStore(Protocol):
    """A session cache the server can serve from. All methods are atomic coroutines.

    Ids and sessions are ``bytes``; ids are matched exactly (length and bytes, NUL is ordinary).
    The caller has already applied the protocol's ADD checks (id length, session length, timeout
    range); an engine may reject a violated precondition with ``ValueError``/``TypeError`` but never
    answers with a wire status.
    """

    async def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        """Store ``session`` under ``session_id`` for ``timeout_ms`` ms from now.

        Returns ``DUPLICATE`` (changing nothing) if a live entry has that id; otherwise makes room
        if the store is full and returns ``STORED``.
        """
        ...

    async def get(self, session_id: bytes) -> bytes | None:
        """Return the live session stored under ``session_id``, or ``None``."""
        ...

    async def remove(self, session_id: bytes) -> bool:
        """Forget the live session under ``session_id``; ``True`` if there was one."""
        ...

    async def have(self, session_id: bytes) -> bool:
        """Whether a live session is stored under ``session_id``."""
        ...

    async def count(self) -> int:
        """The number of live sessions."""
        ...

    async def close(self) -> None:
        """Release the engine's resources; later calls raise ``StoreClosedError``. Idempotent."""
        ...


@runtime_checkable
class CallbackStore(Protocol):
    """A ``SessionStore`` that can also report a call's outcome to a callback.

    The server uses it when present: awaiting a coroutine costs a task and several event-loop
    passes per request, a callback costs neither. Engines that only have coroutines still work.
    """

    #: True if calls take effect in the order they were submitted (e.g. all on one pipelined
    #: connection). Only then may the server have several requests of one client connection in
    #: flight: the protocol promises that each request sees the effect of those before it.
    in_order: bool

    def submit(self, method: str, args: tuple, done: Callable[[object], None]) -> None:
        """Start ``method(*args)`` (``"add"``, ``"get"``, ``"remove"`` or ``"have"``).

        ``done`` is called later, never during this call, with the result the coroutine would
        return or the exception it would raise. Argument errors raise here, at once.
        """
        ...


def report_when_done(
    call: Awaitable, done: Callable[[object], None], running: set[asyncio.Future]
) -> None:
    """Run ``call`` as a task (kept in ``running`` until it ends); ``done`` then gets its result,
    the exception it raised, or ``CancelledError``. Serves ``submit`` for coroutine calls."""
    task = asyncio.ensure_future(call)
    running.add(task)

    def report(task: asyncio.Future) -> None:
        running.discard(task)
        if task.cancelled():
            done(asyncio.CancelledError())
        else:
            error = task.exception()
            done(error if error is not None else task.result())

    task.add_done_callback(report)


# -- argument checks shared by the engines (their slow paths: callers test the common case inline)


def as_bytes(name: str, value: object) -> bytes:
    """``value`` as bytes if it is a byte buffer, else TypeError naming the argument."""
    # bytes(int) would silently make a zero-filled buffer, so only accept real byte buffers.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def check_timeout(timeout_ms: object) -> None:
    """TypeError or ValueError unless ``timeout_ms`` is an int of 0..MAX_TIMEOUT_MS."""
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool):
        raise TypeError(f"timeout_ms must be an int, not {type(timeout_ms).__name__}")
    if not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise ValueError(f"timeout_ms must be 0..{MAX_TIMEOUT_MS} ms, got {timeout_ms}")
