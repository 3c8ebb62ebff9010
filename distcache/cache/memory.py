"""The in-memory session cache: the legacy default cache's observable behaviour, without its leak
and without its linear scans.

Legacy semantics reproduced here:

* capacity MIN_CACHE_SESSIONS..MAX_CACHE_SESSIONS sessions;
* an entry added at *now* with timeout *T* expires at *now + T* and is gone once the clock is
  strictly later; expired entries are invisible to every operation and dropped;
* a duplicate ADD (of a live id) changes nothing and evicts nothing;
* when an ADD finds the cache full (after dropping expired entries) it first evicts the
  ``max(1, capacity // EVICTION_DIVISOR)`` entries that expire soonest, ties broken by insertion
  order, and then stores the new entry, so a new short-lived entry survives its own ADD;
* REMOVE frees exactly one slot.

Data structures: a dict id -> entry for lookups, and a min-heap of (expiry, insertion sequence, id)
for expiry and eviction order. REMOVE leaves its heap item behind (lazy deletion: an item is live
only if the dict still maps its id to an entry with the same sequence number); the heap is rebuilt
when such stale items outnumber live entries, so memory stays proportional to the capacity. Every
operation costs O(log n) amortised: each entry is pushed once and popped at most once, however it
leaves (expiry, eviction or a rebuild after REMOVE).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from distcache.wire import (
    DEFAULT_CACHE_SESSIONS,
    EVICTION_DIVISOR,
    MAX_CACHE_SESSIONS,
    MAX_TIMEOUT_MS,
    MIN_CACHE_SESSIONS,
)

from .engine import AddResult, Clock, MonotonicClock, StoreClosedError, as_bytes, check_timeout

__all__ = ["MemoryCache", "MemoryStore", "eviction_batch"]

_STORED = AddResult.STORED
_DUPLICATE = AddResult.DUPLICATE
#: Stale heap items tolerated beyond the live count before a rebuild, so tiny caches do not
#: rebuild on every REMOVE.
_STALE_SLACK = 64


def eviction_batch(capacity: int) -> int:
    """How many entries an ADD into a full cache of ``capacity`` sessions evicts."""
    return max(1, capacity // EVICTION_DIVISOR)


class _Entry:
    __slots__ = ("expiry_ms", "seq", "session")

    def __init__(self, session: bytes, expiry_ms: int, seq: int) -> None:
        self.session = session
        self.expiry_ms = expiry_ms
        self.seq = seq


class MemoryCache:
    """The synchronous core of the in-memory engine.

    Plain (non-async) methods with the same meaning as ``SessionStore``'s, for callers that must
    not await on their hot path, such as the server's request loop. Not thread-safe: use it from
    one thread (one event loop), which is what makes each method atomic.
    """

    __slots__ = (
        "_batch",
        "_capacity",
        "_clock",
        "_entries",
        "_heap",
        "_next_seq",
        "bytes_held",
        "evicted",
        "expired",
    )

    def __init__(self, capacity: int = DEFAULT_CACHE_SESSIONS, clock: Clock | None = None) -> None:
        _check_capacity(capacity)
        self._setup(capacity, clock)

    @classmethod
    def _any_capacity(cls, capacity: int, clock: Clock | None = None) -> MemoryCache:
        """Testing hook: a cache of any capacity >= 1, to reach eviction in few steps."""
        cache = cls.__new__(cls)
        cache._setup(capacity, clock)
        return cache

    def _setup(self, capacity: int, clock: Clock | None) -> None:
        self._capacity = capacity
        self._batch = eviction_batch(capacity)
        self._clock = MonotonicClock() if clock is None else clock
        self._entries: dict[bytes, _Entry] = {}
        self._heap: list[tuple[int, int, bytes]] = []
        self._next_seq = 0
        #: For the metrics: ids and sessions held, in bytes; sessions evicted and expired so far.
        self.bytes_held = 0
        self.evicted = 0
        self.expired = 0

    @property
    def capacity(self) -> int:
        """The most sessions the cache holds at once."""
        return self._capacity

    @property
    def eviction_batch(self) -> int:
        """How many sessions an ADD into the full cache evicts."""
        return self._batch

    @property
    def clock(self) -> Clock:
        return self._clock

    def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        """Store ``session`` under ``session_id`` until ``timeout_ms`` ms from now (inclusive)."""
        if type(session_id) is not bytes:
            session_id = as_bytes("session_id", session_id)
        if type(session) is not bytes:
            session = as_bytes("session", session)
        if type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
            check_timeout(timeout_ms)
        now = self._clock.now_ms()
        heap = self._heap
        if heap and heap[0][0] < now:
            self._purge_expired(now)
        entries = self._entries
        if session_id in entries:
            return _DUPLICATE
        if len(entries) >= self._capacity:
            self._evict_soonest()
        seq = self._next_seq
        self._next_seq = seq + 1
        expiry = now + timeout_ms
        entries[session_id] = _Entry(session, expiry, seq)
        self.bytes_held += len(session_id) + len(session)
        heappush(self._heap, (expiry, seq, session_id))
        return _STORED

    def get(self, session_id: bytes) -> bytes | None:
        """The live session stored under ``session_id``, or ``None``."""
        session_id = self._admit(session_id)
        entry = self._entries.get(session_id)
        return None if entry is None else entry.session

    def have(self, session_id: bytes) -> bool:
        """Whether a live session is stored under ``session_id``."""
        session_id = self._admit(session_id)
        return session_id in self._entries

    def remove(self, session_id: bytes) -> bool:
        """Forget the live session under ``session_id``; ``True`` if there was one."""
        session_id = self._admit(session_id)
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        self.bytes_held -= len(session_id) + len(entry.session)
        # The entry's heap item is now stale; rebuild once stale items outnumber live entries.
        if len(self._heap) > 2 * len(self._entries) + _STALE_SLACK:
            self._rebuild_heap()
        return True

    def count(self) -> int:
        """The number of live sessions."""
        self._purge_expired(self._clock.now_ms())
        return len(self._entries)

    @property
    def sessions_held(self) -> int:
        """Sessions held now, for the metrics (an expired one until an operation drops it)."""
        return len(self._entries)

    def _admit(self, session_id: bytes) -> bytes:
        """Every operation's first step: the id as bytes, and expired entries gone."""
        if type(session_id) is not bytes:
            session_id = as_bytes("session_id", session_id)
        now = self._clock.now_ms()
        heap = self._heap
        if heap and heap[0][0] < now:  # a call to _purge_expired costs more than this test
            self._purge_expired(now)
        return session_id

    def clear(self) -> None:
        """Forget every session."""
        self._entries.clear()
        self._heap.clear()
        self.bytes_held = 0

    def _purge_expired(self, now: int) -> None:
        # The hot methods test the heap top before calling this (a call costs more than the test).
        # Entries expire when now > expiry; every live entry has exactly one heap item, so all the
        # expired ones sit at the front of the heap.
        heap = self._heap
        if not heap or heap[0][0] >= now:
            return
        entries = self._entries
        while heap and heap[0][0] < now:
            _, seq, session_id = heappop(heap)
            entry = entries.get(session_id)
            if entry is not None and entry.seq == seq:
                del entries[session_id]
                self.bytes_held -= len(session_id) + len(entry.session)
                self.expired += 1

    def _evict_soonest(self) -> None:
        heap = self._heap
        entries = self._entries
        evicted = 0
        while evicted < self._batch and heap:
            _, seq, session_id = heappop(heap)
            entry = entries.get(session_id)
            if entry is not None and entry.seq == seq:
                del entries[session_id]
                self.bytes_held -= len(session_id) + len(entry.session)
                evicted += 1
        self.evicted += evicted

    def _rebuild_heap(self) -> None:
        heap = [(entry.expiry_ms, entry.seq, sid) for sid, entry in self._entries.items()]
        heapify(heap)
        self._heap = heap

    def _audit(self) -> None:
        """Testing hook: raise AssertionError if the internal structures disagree."""
        live = [(e.expiry_ms, e.seq, sid) for sid, e in self._entries.items()]
        items = set(self._heap)
        if len(self._entries) > self._capacity:
            raise AssertionError(f"{len(self._entries)} entries exceed capacity {self._capacity}")
        if not items.issuperset(live):
            raise AssertionError("a live entry has no heap item")
        held = sum(len(sid) + len(e.session) for sid, e in self._entries.items())
        if held != self.bytes_held:
            raise AssertionError(f"bytes_held is {self.bytes_held}, the entries hold {held}")
        # Stale items only come from REMOVE, which rebuilds past 2 * live + slack; expiry and
        # eviction may then shrink the live count, but the heap never outgrows this bound.
        if len(self._heap) > 2 * self._capacity + _STALE_SLACK + 1:
            raise AssertionError(f"{len(self._heap)} heap items for capacity {self._capacity}")

    def __repr__(self) -> str:
        return (
            f"MemoryCache(capacity={self._capacity}, clock={self._clock!r}) "
            f"with {len(self._entries)} entries"
        )


class MemoryStore:
    """The in-memory engine as a ``SessionStore``: thin async methods over a ``MemoryCache``.

    The methods never await anything, so each is atomic on its event loop. A server that wants to
    skip the coroutine overhead may call the synchronous core, ``store.cache``, directly.
    """

    __slots__ = ("_cache",)

    def __init__(self, capacity: int = DEFAULT_CACHE_SESSIONS, clock: Clock | None = None) -> None:
        self._cache: MemoryCache | None = MemoryCache(capacity, clock)

    @property
    def cache(self) -> MemoryCache:
        """The synchronous core (raises ``StoreClosedError`` after ``close()``)."""
        cache = self._cache
        if cache is None:
            raise StoreClosedError("the memory store is closed")
        return cache

    async def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        return self.cache.add(session_id, session, timeout_ms)

    async def get(self, session_id: bytes) -> bytes | None:
        return self.cache.get(session_id)

    async def remove(self, session_id: bytes) -> bool:
        return self.cache.remove(session_id)

    async def have(self, session_id: bytes) -> bool:
        return self.cache.have(session_id)

    async def count(self) -> int:
        return self.cache.count()

    async def close(self) -> None:
        cache, self._cache = self._cache, None
        # A shared cache outlives the worker that closes it: the others still serve from it.
        if type(cache) is MemoryCache:
            cache.clear()

    @classmethod
    def sharing(cls, capacity: int = DEFAULT_CACHE_SESSIONS) -> MemoryStore | None:
        """The memory engine in memory shared with the processes forked after this call, one
        cache for them all (:mod:`distcache.cache.shared`); None without its C extension."""
        from .shared import SharedMemoryCache, available

        if not available():
            return None
        store = cls.__new__(cls)
        store._cache = SharedMemoryCache(capacity)
        return store

    def __repr__(self) -> str:
        return f"MemoryStore({self._cache!r})" if self._cache else "MemoryStore(closed)"


def _check_capacity(capacity: object) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int (sessions), not {type(capacity).__name__}")
    if not MIN_CACHE_SESSIONS <= capacity <= MAX_CACHE_SESSIONS:
        raise ValueError(
            f"capacity must be {MIN_CACHE_SESSIONS}..{MAX_CACHE_SESSIONS} sessions, got {capacity}"
        )
