"""The in-memory engine against the legacy cache's observed behaviour (eviction, expiry, capacity)."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from distcache.cache import (
    AddResult,
    Clock,
    ManualClock,
    MemoryCache,
    MemoryStore,
    MonotonicClock,
    SessionStore,
    StoreClosedError,
    eviction_batch,
)
from distcache.wire import (
    DEFAULT_CACHE_SESSIONS,
    EVICTION_DIVISOR,
    MAX_CACHE_SESSIONS,
    MAX_TIMEOUT_MS,
    MIN_CACHE_SESSIONS,
)

STORED = AddResult.STORED
DUPLICATE = AddResult.DUPLICATE


def sid(n: int) -> bytes:
    return b"id-%d" % n


def make(capacity: int = MIN_CACHE_SESSIONS) -> tuple[MemoryCache, ManualClock]:
    clock = ManualClock(1_000)
    return MemoryCache(capacity, clock), clock


def present(cache: MemoryCache, ids: range) -> list[int]:
    return [n for n in ids if cache.have(sid(n))]


# --- capacity and batch ---------------------------------------------------------------------------


def test_batch_sizes_follow_the_divisor():
    assert eviction_batch(MIN_CACHE_SESSIONS) == MIN_CACHE_SESSIONS // EVICTION_DIVISOR == 2
    assert eviction_batch(DEFAULT_CACHE_SESSIONS) == 17
    assert eviction_batch(MAX_CACHE_SESSIONS) == 2000
    assert eviction_batch(1) == 1  # at least one


def test_default_capacity():
    assert MemoryCache().capacity == DEFAULT_CACHE_SESSIONS
    assert MemoryCache().eviction_batch == 17


@pytest.mark.parametrize("capacity", [MIN_CACHE_SESSIONS, MAX_CACHE_SESSIONS])
def test_capacity_bounds_accepted(capacity):
    assert MemoryCache(capacity).capacity == capacity
    assert MemoryStore(capacity).cache.capacity == capacity


@pytest.mark.parametrize("capacity", [-1, 0, 1, MIN_CACHE_SESSIONS - 1, MAX_CACHE_SESSIONS + 1])
def test_capacity_out_of_range_is_a_clear_value_error(capacity):
    with pytest.raises(ValueError, match=rf"{MIN_CACHE_SESSIONS}\.\.{MAX_CACHE_SESSIONS}"):
        MemoryCache(capacity)
    with pytest.raises(ValueError, match="capacity"):
        MemoryStore(capacity)


@pytest.mark.parametrize("capacity", ["512", 512.0, True, None])
def test_capacity_of_wrong_type_is_a_type_error(capacity):
    with pytest.raises(TypeError, match="capacity"):
        MemoryCache(capacity)


# --- eviction (notes §5.3) ------------------------------------------------------------------------


def test_seventy_adds_leave_64_and_the_six_earliest_expiring_are_gone():
    cache, _ = make(64)
    for n in range(70):
        assert cache.add(sid(n), b"s", 10_000 + n) is STORED
    assert cache.count() == 64
    assert present(cache, range(70)) == list(range(6, 70))


def test_eviction_picks_earliest_expiry_not_oldest_insertion():
    cache, _ = make(64)
    # Inserted first but expiring last: these must survive the evictions.
    for n in range(64):
        cache.add(sid(n), b"s", 50_000 - n)
    cache.add(sid(100), b"s", 60_000)
    assert cache.count() == 63  # 64 - batch of 2 + 1
    assert not cache.have(sid(63)) and not cache.have(sid(62))
    assert cache.have(sid(0)) and cache.have(sid(100))


def test_new_shortest_lived_session_survives_its_own_add():
    cache, _ = make(64)
    for n in range(64):
        cache.add(sid(n), b"s", 10_000 + n)
    assert cache.add(b"short", b"s", 0) is STORED
    assert cache.have(b"short")
    assert cache.count() == 63
    assert present(cache, range(64)) == list(range(2, 64))


def test_remove_frees_one_slot_then_next_add_evicts_a_batch():
    cache, _ = make(64)
    for n in range(64):
        cache.add(sid(n), b"s", 10_000 + n)
    assert cache.remove(sid(40)) is True
    assert cache.add(sid(100), b"s", 20_000) is STORED
    assert cache.count() == 64
    assert present(cache, range(64)) == [n for n in range(64) if n != 40]  # nothing evicted
    assert cache.add(sid(101), b"s", 20_001) is STORED
    assert cache.count() == 63
    assert not cache.have(sid(0)) and not cache.have(sid(1))


def test_duplicate_add_into_full_cache_evicts_nothing_and_changes_nothing():
    cache, clock = make(64)
    for n in range(64):
        cache.add(sid(n), b"s%d" % n, 10_000 + n)
    assert cache.add(sid(5), b"new", MAX_TIMEOUT_MS) is DUPLICATE
    assert cache.count() == 64
    assert cache.get(sid(5)) == b"s5"
    clock.advance(10_005)  # the original expiry instant: still there
    assert cache.get(sid(5)) == b"s5"
    clock.advance(1)
    assert cache.get(sid(5)) is None


def test_ties_in_expiry_are_evicted_in_insertion_order():
    cache, _ = make(64)
    order = [7, 3, 60, 1, *[n for n in range(64) if n not in (7, 3, 60, 1)]]
    for n in order:
        cache.add(sid(n), b"s", 5_000)
    cache.add(b"extra-1", b"s", 5_000)
    assert not cache.have(sid(7)) and not cache.have(sid(3))
    assert cache.have(sid(60)) and cache.have(sid(1))
    cache.add(b"extra-2", b"s", 5_000)  # fills the freed slot
    assert cache.have(sid(60)) and cache.have(sid(1))
    cache.add(b"extra-3", b"s", 5_000)
    assert not cache.have(sid(60)) and not cache.have(sid(1))
    assert cache.have(b"extra-1") and cache.have(b"extra-2") and cache.have(b"extra-3")


def test_expired_entries_make_room_before_any_eviction():
    cache, clock = make(64)
    for n in range(64):
        cache.add(sid(n), b"s", 100 if n < 3 else 10_000)
    clock.advance(101)
    assert cache.add(b"new", b"s", 10) is STORED
    assert cache.count() == 62  # three expired, nothing evicted
    assert present(cache, range(64)) == list(range(3, 64))


# --- expiry (notes §5.2) --------------------------------------------------------------------------


def test_timeout_zero_lives_until_the_next_millisecond():
    cache, clock = make()
    cache.add(b"k", b"v", 0)
    assert cache.get(b"k") == b"v"  # now == expiry: still present
    clock.advance(1)
    assert cache.get(b"k") is None
    assert not cache.have(b"k")
    assert cache.remove(b"k") is False
    assert cache.count() == 0


def test_present_exactly_at_expiry_and_gone_one_ms_later():
    cache, clock = make()
    cache.add(b"k", b"v", 1_500)
    clock.advance(1_500)
    assert cache.have(b"k") and cache.count() == 1
    clock.advance(1)
    assert not cache.have(b"k") and cache.count() == 0


def test_get_and_have_do_not_extend_expiry():
    cache, clock = make()
    cache.add(b"k", b"v", 10)
    for _ in range(10):
        clock.advance(1)
        assert cache.get(b"k") == b"v" and cache.have(b"k")
    clock.advance(1)
    assert cache.get(b"k") is None


def test_add_over_an_expired_entry_succeeds_with_new_data_and_expiry():
    cache, clock = make()
    cache.add(b"k", b"old", 5)
    clock.advance(6)
    assert cache.add(b"k", b"new", 5) is STORED
    assert cache.get(b"k") == b"new"
    clock.advance(5)
    assert cache.have(b"k")
    clock.advance(1)
    assert not cache.have(b"k")


def test_largest_timeout_is_accepted():
    cache, clock = make()
    assert cache.add(b"k", b"v", MAX_TIMEOUT_MS) is STORED
    clock.advance(MAX_TIMEOUT_MS)
    assert cache.have(b"k")


# --- lookups --------------------------------------------------------------------------------------


def test_ids_match_exactly_including_nul_and_length():
    cache, _ = make()
    cache.add(b"a\x00b", b"1", 100)
    cache.add(b"a", b"2", 100)
    assert cache.get(b"a\x00b") == b"1"
    assert cache.get(b"a") == b"2"
    assert cache.get(b"a\x00") is None
    assert cache.get(b"") is None
    assert cache.get(b"x" * 3000) is None


def test_remove_reports_whether_there_was_an_entry():
    cache, _ = make()
    cache.add(b"k", b"v", 100)
    assert cache.remove(b"k") is True
    assert cache.remove(b"k") is False
    assert cache.get(b"k") is None


def test_buffers_are_accepted_as_bytes():
    cache, _ = make()
    assert cache.add(bytearray(b"k"), memoryview(b"v"), 100) is STORED
    assert cache.get(memoryview(b"k")) == b"v"
    assert type(cache.get(b"k")) is bytes
    assert cache.have(bytearray(b"k"))


@pytest.mark.parametrize(
    ("session_id", "session", "timeout", "error"),
    [
        ("k", b"v", 1, TypeError),
        (b"k", 5, 1, TypeError),
        (b"k", b"v", 1.5, TypeError),
        (b"k", b"v", True, TypeError),
        (b"k", b"v", -1, ValueError),
        (b"k", b"v", MAX_TIMEOUT_MS + 1, ValueError),
    ],
)
def test_misuse_is_a_typed_error_and_stores_nothing(session_id, session, timeout, error):
    cache, _ = make()
    with pytest.raises(error):
        cache.add(session_id, session, timeout)
    assert cache.count() == 0


@pytest.mark.parametrize("method", ["get", "have", "remove"])
def test_lookup_with_a_non_bytes_id_is_a_type_error(method):
    cache, _ = make()
    with pytest.raises(TypeError, match="session_id must be bytes"):
        getattr(cache, method)(42)


# --- clocks ---------------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told():
    clock = ManualClock()
    assert clock.now_ms() == 0
    clock.advance(5)
    clock.advance(0)
    assert clock.now_ms() == 5
    clock.set(2)
    assert clock.now_ms() == 2
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(TypeError):
        clock.set(1.5)
    assert isinstance(clock, Clock)


def test_monotonic_clock_gives_integer_milliseconds_that_never_decrease():
    clock = MonotonicClock()
    first = clock.now_ms()
    second = clock.now_ms()
    assert type(first) is int and second >= first
    assert isinstance(clock, Clock)
    assert isinstance(MemoryCache().clock, MonotonicClock)


# --- memory release (CACHE-4) ---------------------------------------------------------------------


def test_evicted_expired_and_removed_sessions_are_released():
    cache, clock = make(64)
    sessions = [bytes([n % 256]) * 1000 + sid(n) for n in range(2_000)]
    baseline = [sys.getrefcount(s) for s in sessions]
    for n in range(len(sessions)):
        cache.add(sid(n), sessions[n], 1_000 + n % 7)  # fills, evicts batch after batch
    for n in range(1_990, 1_995):
        cache.remove(sid(n))
    gc.collect()
    now = [sys.getrefcount(s) for s in sessions]
    held = [n for n in range(len(sessions)) if now[n] > baseline[n]]
    assert len(held) == cache.count() <= 64
    assert all(cache.have(sid(n)) for n in held)

    clock.advance(10_000)  # everything expires
    assert cache.count() == 0
    gc.collect()
    assert [sys.getrefcount(s) for s in sessions] == baseline
    cache._audit()


def test_internal_structures_stay_bounded_under_remove_churn():
    cache, _ = make(64)
    for n in range(20_000):
        cache.add(sid(n % 500), b"s", 100_000)
        cache.remove(sid((n * 7) % 500))
        cache._audit()
    assert cache.count() <= 64


# --- the async engine -----------------------------------------------------------------------------


def test_memory_store_is_a_session_store_over_the_sync_core():
    clock = ManualClock()
    store = MemoryStore(64, clock)
    assert isinstance(store, SessionStore)

    async def scenario():
        assert await store.add(b"k", b"v", 0) is STORED
        assert await store.add(b"k", b"w", 0) is DUPLICATE
        assert await store.get(b"k") == b"v"
        assert await store.have(b"k") is True
        assert await store.count() == 1
        assert store.cache.get(b"k") == b"v"  # the sync core sees the same entries
        clock.advance(1)
        assert await store.get(b"k") is None
        assert await store.add(b"k", b"v", 10) is STORED
        assert await store.remove(b"k") is True
        assert await store.remove(b"k") is False
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await store.get(b"k")
        with pytest.raises(StoreClosedError):
            store.cache  # noqa: B018 - the property itself raises

    asyncio.run(scenario())
