"""The memory engine in shared memory: one cache for every worker of ``dc_server -workers N``.

:class:`SharedMemoryCache` is :class:`~distcache.cache.MemoryCache` with the same methods and
the same observable behaviour (ADD/GET/REMOVE/HAVE rules, expiry, capacity, eviction order), kept
in an anonymous shared mapping by the optional C extension ``distcache.cache._shared``. Made
before the workers are forked, it is the one cache they all answer from, with no process in
between. A robust process-shared mutex guards it: a worker that dies holding the lock does not
wedge the others (the next one to lock rebuilds the index). A worker *stopped* holding it
(SIGSTOP, a debugger) cannot be told from a slow one, so a call waits for the lock at most
``LOCK_WAIT_MS`` and then raises :class:`~distcache.cache.errors.StoreUnavailableError`, which
the server answers as it does an unreachable store; until the lock is free again, calls fail at
once rather than each waiting in turn.

Every slot has room for the largest id and session the protocol admits (from
:mod:`distcache.wire`); the mapping reserves no memory (``MAP_NORESERVE``), and a slot's pages
become resident when a session first reaches them.

The extension is optional, on the pattern of the decoder's: :func:`available` says whether it
was built and is not disabled by ``DISTCACHE_NO_EXTENSIONS``; without it, ``dc_server -workers``
relays to one process that owns a :class:`MemoryCache`. ``MemoryStore.sharing()`` makes the
engine on this cache.
"""

from __future__ import annotations

import os

from distcache.wire import (
    DEFAULT_CACHE_SESSIONS,
    MAX_SESSION_DATA,
    MAX_SESSION_ID,
    MAX_TIMEOUT_MS,
)

from .engine import AddResult, Clock, MonotonicClock
from .errors import StoreUnavailableError
from .memory import _check_capacity, eviction_batch

__all__ = ["LOCK_WAIT_MS", "SharedMemoryCache", "available"]

#: How long a call waits for a lock that another process holds before it fails: the lock is
#: held for microseconds, so this is a process stopped or stuck in the middle of an operation,
#: far past a busy host's scheduling delays.
LOCK_WAIT_MS = 500

try:
    if os.environ.get("DISTCACHE_NO_EXTENSIONS"):
        raise ImportError("DISTCACHE_NO_EXTENSIONS is set")
    from ._shared import Cache as _Cache
except ImportError:
    _Cache = None


def available() -> bool:
    """Whether the shared cache can be made here (extension built and not disabled)."""
    return _Cache is not None


class _Unavailable:
    """Stands in for the C type when the extension is absent, so this module always imports."""

    def __new__(cls, *args, **kwargs):
        raise RuntimeError("the shared memory cache needs the distcache.cache._shared extension")


class SharedMemoryCache(_Cache or _Unavailable):  # type: ignore[misc]
    """A :class:`MemoryCache` in memory shared with the processes forked after it is made.

    ``clock`` defaults to the system's monotonic clock, read in C (the clock of
    :class:`~distcache.cache.MonotonicClock`, which is the same in every process); tests pass a
    :class:`~distcache.cache.ManualClock`.
    """

    __slots__ = ()

    def __new__(cls, capacity: int = DEFAULT_CACHE_SESSIONS, clock: Clock | None = None):
        _check_capacity(capacity)
        return cls._any_capacity(capacity, clock)

    @classmethod
    def _any_capacity(cls, capacity: int, clock: Clock | None = None) -> SharedMemoryCache:
        """Testing hook: a cache of any capacity >= 1, to reach eviction in few steps."""
        if type(clock) is MonotonicClock:
            clock = None  # the same clock, read without a call into Python
        return super().__new__(
            cls,
            capacity,
            eviction_batch(capacity),
            MAX_SESSION_ID,
            MAX_SESSION_DATA,
            MAX_TIMEOUT_MS,
            AddResult.STORED,
            AddResult.DUPLICATE,
            StoreUnavailableError,
            LOCK_WAIT_MS,
            clock,
        )

    def __repr__(self) -> str:
        return f"SharedMemoryCache(capacity={self.capacity}) with {self.sessions_held} entries"
