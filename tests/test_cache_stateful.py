"""MemoryCache against an obviously-correct model: a list scanned linearly, like the legacy array."""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from distcache.cache import AddResult, ManualClock, MemoryCache
from distcache.wire import EVICTION_DIVISOR, MAX_TIMEOUT_MS, MIN_CACHE_SESSIONS


@dataclass
class Row:
    expiry: int
    seq: int
    session_id: bytes
    session: bytes


class ListCache:
    """The reference: every operation drops expired rows, then scans the whole list."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: list[Row] = []
        self.seq = 0

    def live(self, now: int) -> list[Row]:
        self.rows = [row for row in self.rows if not now > row.expiry]
        return self.rows

    def _find(self, now: int, session_id: bytes) -> Row | None:
        return next((row for row in self.live(now) if row.session_id == session_id), None)

    def add(self, now: int, session_id: bytes, session: bytes, timeout: int) -> AddResult:
        if self._find(now, session_id) is not None:
            return AddResult.DUPLICATE
        if len(self.rows) >= self.capacity:
            self.rows.sort(key=lambda row: (row.expiry, row.seq))
            del self.rows[: max(1, self.capacity // EVICTION_DIVISOR)]
        self.rows.append(Row(now + timeout, self.seq, session_id, session))
        self.seq += 1
        return AddResult.STORED

    def get(self, now: int, session_id: bytes) -> bytes | None:
        row = self._find(now, session_id)
        return None if row is None else row.session

    def remove(self, now: int, session_id: bytes) -> bool:
        row = self._find(now, session_id)
        if row is not None:
            self.rows.remove(row)
        return row is not None

    def count(self, now: int) -> int:
        return len(self.live(now))


# A few hot ids make duplicates and hits common; the wider range lets a 64-session cache fill up.
ids = st.one_of(st.integers(0, 5), st.integers(0, 99)).map(lambda n: b"id%d" % n)
sessions = st.binary(min_size=1, max_size=4)
# Short timeouts make expiry race with eviction; many equal values make expiry ties common.
timeouts = st.one_of(st.integers(0, 40), st.just(MAX_TIMEOUT_MS))


class CacheMachine(RuleBasedStateMachine):
    # Eviction batches of 1, 1, 2 and 3 entries.
    @initialize(capacity=st.sampled_from([3, 30, MIN_CACHE_SESSIONS, 90]))
    def start(self, capacity):
        self.clock = ManualClock(0)
        if capacity == MIN_CACHE_SESSIONS:
            self.cache = MemoryCache(capacity, self.clock)
        else:  # the private hook allows any size: small ones reach eviction in a few steps
            self.cache = MemoryCache._any_capacity(capacity, self.clock)
        self.model = ListCache(capacity)
        self.bulk = 0

    @property
    def now(self) -> int:
        return self.clock.now_ms()

    @rule(session_id=ids, session=sessions, timeout=timeouts)
    def add(self, session_id, session, timeout):
        expected = self.model.add(self.now, session_id, session, timeout)
        assert self.cache.add(session_id, session, timeout) is expected

    @rule(
        n=st.integers(1, 70), timeout=timeouts | st.integers(1_000, 2_000), spread=st.integers(0, 3)
    )
    def add_many_new(self, n, timeout, spread):
        # Fresh ids in bulk, so a full cache and repeated evictions are reached within one run.
        for i in range(n):
            session_id = b"bulk%d" % self.bulk
            self.bulk += 1
            t = min(MAX_TIMEOUT_MS, timeout + i % (spread + 1))
            expected = self.model.add(self.now, session_id, b"s", t)
            assert self.cache.add(session_id, b"s", t) is expected
        assert self.cache.count() == self.model.count(self.now)

    @rule(pick=st.integers(0, 1_000), timeout=timeouts)
    def add_duplicate_of_a_live_entry(self, pick, timeout):
        # Re-add an id the model holds (often a bulk one, often into a full cache).
        live = self.model.live(self.now)
        if live:
            session_id = live[pick % len(live)].session_id
            expected = self.model.add(self.now, session_id, b"dup", timeout)
            assert expected is AddResult.DUPLICATE
            assert self.cache.add(session_id, b"dup", timeout) is expected

    @rule(session_id=ids)
    def get(self, session_id):
        assert self.cache.get(session_id) == self.model.get(self.now, session_id)

    @rule(session_id=ids)
    def have(self, session_id):
        expected = self.model.get(self.now, session_id) is not None
        assert self.cache.have(session_id) is expected

    @rule(session_id=ids)
    def remove(self, session_id):
        assert self.cache.remove(session_id) is self.model.remove(self.now, session_id)

    @rule()
    def count(self):
        assert self.cache.count() == self.model.count(self.now)

    @rule(ms=st.one_of(st.integers(0, 3), st.integers(0, 50)))
    def advance_time(self, ms):
        self.clock.advance(ms)

    @rule(pick=st.integers(0, 1_000), past=st.integers(0, 1))
    def advance_to_an_expiry(self, pick, past):
        # Land exactly on an entry's expiry instant (still present) or one ms past it (gone).
        later = [row.expiry for row in self.model.live(self.now) if row.expiry + past >= self.now]
        if later:
            self.clock.set(later[pick % len(later)] + past)

    @rule()
    def every_bulk_id_agrees(self):
        for n in range(self.bulk):
            session_id = b"bulk%d" % n
            assert self.cache.get(session_id) == self.model.get(self.now, session_id)

    @invariant()
    def internals_consistent(self):
        if hasattr(self, "cache"):
            self.cache._audit()


CacheMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=50, deadline=None)
TestMemoryCacheAgainstModel = CacheMachine.TestCase
