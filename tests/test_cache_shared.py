"""The cache in shared memory: MemoryCache's behaviour exactly, across processes, and robust
against a process that dies holding its lock (real forked processes, real SIGKILL)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from serverproc import ServerThread, address_of, ask, connect_to

from distcache.cache import AddResult, ManualClock, MemoryCache, MemoryStore, shared
from distcache.cache.errors import StoreUnavailableError
from distcache.protocol import add_request, get_request
from distcache.server import Server, bind_listeners
from distcache.wire import (
    MAX_SESSION_DATA,
    MAX_SESSION_ID,
    MAX_TIMEOUT_MS,
    MIN_CACHE_SESSIONS,
    Status,
)

pytestmark = pytest.mark.skipif(
    not shared.available(), reason="the distcache.cache._shared extension is not built or disabled"
)
SharedMemoryCache = shared.SharedMemoryCache
TIMEOUT = 10.0

ids = st.one_of(st.integers(0, 5), st.integers(0, 99)).map(lambda n: b"id%d" % n)
sessions = st.one_of(st.binary(min_size=1, max_size=8), st.just(b"L" * MAX_SESSION_DATA))
timeouts = st.one_of(st.integers(0, 40), st.just(MAX_TIMEOUT_MS))


class SharedAgainstMemory(RuleBasedStateMachine):
    """Operation by operation, the shared cache answers as MemoryCache does, on the same clock."""

    # Eviction batches of 1, 1, 2 and 3 entries.
    @initialize(capacity=st.sampled_from([3, 30, MIN_CACHE_SESSIONS, 90]))
    def start(self, capacity):
        self.clock = ManualClock(0)
        self.memory = MemoryCache._any_capacity(capacity, self.clock)
        self.shared = SharedMemoryCache._any_capacity(capacity, self.clock)
        self.bulk = 0

    @rule(session_id=ids, session=sessions, timeout=timeouts)
    def add(self, session_id, session, timeout):
        expected = self.memory.add(session_id, session, timeout)
        assert self.shared.add(session_id, session, timeout) is expected

    @rule(
        n=st.integers(1, 70), timeout=timeouts | st.integers(1_000, 2_000), spread=st.integers(0, 3)
    )
    def add_many_new(self, n, timeout, spread):
        for i in range(n):
            session_id = b"bulk%d" % self.bulk
            self.bulk += 1
            t = min(MAX_TIMEOUT_MS, timeout + i % (spread + 1))
            assert self.shared.add(session_id, b"s", t) is self.memory.add(session_id, b"s", t)

    @rule(session_id=ids)
    def get(self, session_id):
        assert self.shared.get(session_id) == self.memory.get(session_id)

    @rule(session_id=ids)
    def have(self, session_id):
        assert self.shared.have(session_id) is self.memory.have(session_id)

    @rule(session_id=ids)
    def remove(self, session_id):
        assert self.shared.remove(session_id) is self.memory.remove(session_id)

    @rule()
    def count(self):
        assert self.shared.count() == self.memory.count()

    @rule()
    def clear(self):
        self.shared.clear()
        self.memory.clear()

    @rule(ms=st.one_of(st.integers(0, 3), st.integers(0, 50)))
    def advance_time(self, ms):
        self.clock.advance(ms)

    @rule()
    def every_bulk_id_agrees(self):
        for n in range(self.bulk):
            assert self.shared.get(b"bulk%d" % n) == self.memory.get(b"bulk%d" % n)

    @invariant()
    def same_totals_and_consistent(self):
        if hasattr(self, "shared"):
            self.shared._audit()
            assert self.shared.sessions_held == self.memory.sessions_held
            assert self.shared.bytes_held == self.memory.bytes_held
            assert self.shared.evicted == self.memory.evicted
            assert self.shared.expired == self.memory.expired


SharedAgainstMemory.TestCase.settings = settings(
    max_examples=50, stateful_step_count=50, deadline=None
)
TestSharedAgainstMemory = SharedAgainstMemory.TestCase


# -- limits and arguments, as the memory engine's --------------------------------------------


def test_limits_come_from_the_schema() -> None:
    cache = SharedMemoryCache(MIN_CACHE_SESSIONS)
    assert cache.capacity == MIN_CACHE_SESSIONS and cache.eviction_batch == 2
    largest = (b"i" * MAX_SESSION_ID, b"s" * MAX_SESSION_DATA)
    assert cache.add(*largest, MAX_TIMEOUT_MS) is AddResult.STORED
    assert cache.get(largest[0]) == largest[1]
    with pytest.raises(ValueError, match="fit in a slot"):
        cache.add(b"i" * (MAX_SESSION_ID + 1), b"s", 1)
    with pytest.raises(ValueError, match="fit in a slot"):
        cache.add(b"i", b"s" * (MAX_SESSION_DATA + 1), 1)
    assert cache.get(b"i" * (MAX_SESSION_ID + 1)) is None  # too long to be stored: absent
    with pytest.raises(ValueError, match="timeout_ms"):
        cache.add(b"i", b"s", MAX_TIMEOUT_MS + 1)
    with pytest.raises(ValueError, match="timeout_ms"):
        cache.add(b"i", b"s", -1)
    with pytest.raises(TypeError, match="timeout_ms"):
        cache.add(b"i", b"s", True)
    with pytest.raises(TypeError, match="session_id must be bytes"):
        cache.get(5)
    with pytest.raises(ValueError, match="capacity"):
        SharedMemoryCache(MIN_CACHE_SESSIONS - 1)
    cache._audit()


def test_the_mapping_goes_with_the_cache() -> None:
    """Caches of the largest capacity made and dropped leave no mapping behind."""

    def mappings() -> list[str]:
        """The anonymous shared mappings of this process (the kernel names them /dev/zero)."""
        with open("/proc/self/maps") as maps:
            return [line.split()[0] for line in maps if "/dev/zero" in line]

    before = mappings()
    kept = SharedMemoryCache(60_000)
    assert len(mappings()) == len(before) + 1
    del kept
    for _ in range(50):
        cache = SharedMemoryCache(60_000)
        assert cache.add(b"id", b"session", 1000) is AddResult.STORED
        del cache
    assert mappings() == before


def test_closing_one_worker_s_store_keeps_the_shared_cache() -> None:
    store = MemoryStore.sharing(MIN_CACHE_SESSIONS)
    cache = store.cache
    cache.add(b"kept", b"for the others", 60_000)
    asyncio.run(store.close())
    assert cache.get(b"kept") == b"for the others"


# -- across processes --------------------------------------------------------------------------


def _fork(child) -> int:
    """A forked process that runs ``child()`` and exits (never returns into pytest)."""
    pid = os.fork()
    if pid == 0:
        status = 1  # an assertion that fails in the child shows in its status
        try:
            child()
            status = 0
        finally:
            os._exit(status)
    return pid


def _wait(pid: int) -> int:
    """The exit status of ``pid``, or minus the signal that killed it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.01)


def test_processes_forked_after_it_share_one_cache() -> None:
    cache = SharedMemoryCache(MIN_CACHE_SESSIONS)
    cache.add(b"from the parent", b"p", 60_000)

    def child():
        assert cache.get(b"from the parent") == b"p"
        cache.add(b"from the child", b"c", 60_000)
        cache.remove(b"from the parent")

    assert _wait(_fork(child)) == 0
    assert cache.get(b"from the child") == b"c"
    assert not cache.have(b"from the parent")
    cache._audit()


def test_a_lock_holder_killed_does_not_wedge_the_others() -> None:
    cache = SharedMemoryCache(MIN_CACHE_SESSIONS)
    cache.add(b"before", b"the death", 60_000)
    ready_r, ready_w = os.pipe()

    def child():
        cache._hold_lock()
        os.write(ready_w, b"x")
        time.sleep(60)

    pid = _fork(child)
    assert os.read(ready_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    assert _wait(pid) == -signal.SIGKILL
    assert cache.get(b"before") == b"the death"  # this lock finds the owner dead: recovers
    assert cache.recoveries == 1
    assert cache.add(b"after", b"it", 60_000) is AddResult.STORED
    assert cache.count() == 2
    cache._audit()
    os.close(ready_r)
    os.close(ready_w)


def _stopped_holder(cache) -> tuple[int, int]:
    """A forked process that takes the lock and is then stopped (SIGSTOP) holding it, as a
    debugger would stop it; returns its pid and the pipe that, written to, makes it release the
    lock and exit once it runs again."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()

    def child():
        cache._hold_lock()
        os.write(ready_w, b"x")
        os.read(release_r, 1)
        cache._release_lock()

    pid = _fork(child)
    assert os.read(ready_r, 1) == b"x"
    os.kill(pid, signal.SIGSTOP)
    for fd in (ready_r, ready_w, release_r):
        os.close(fd)
    return pid, release_w


def _resume_and_release(pid: int, release: int) -> None:
    os.kill(pid, signal.SIGCONT)
    os.write(release, b"x")
    os.close(release)
    assert _wait(pid) == 0


def test_a_lock_holder_stopped_fails_the_others_calls_instead_of_wedging_them() -> None:
    """A stopped holder cannot be told from a slow one: a call waits for the lock at most
    LOCK_WAIT_MS, then fails as an unreachable store does, naming the holder; the next calls
    fail at once (no wait each) until the lock is free, and then the cache serves as before."""
    cache = SharedMemoryCache(MIN_CACHE_SESSIONS)
    cache.add(b"before", b"the stop", 60_000)
    pid, release = _stopped_holder(cache)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=rf"locked .* by process {pid} "):
            cache.get(b"before")
        waited = time.monotonic() - started
        assert shared.LOCK_WAIT_MS / 1000 <= waited < TIMEOUT
        started = time.monotonic()
        for call in (lambda: cache.add(b"new", b"s", 60_000), cache.count, cache.clear):
            with pytest.raises(StoreUnavailableError):
                call()
        assert time.monotonic() - started < shared.LOCK_WAIT_MS / 1000  # none of them waited
    finally:
        _resume_and_release(pid, release)
    assert cache.get(b"before") == b"the stop"
    assert cache.add(b"after", b"it", 60_000) is AddResult.STORED
    assert cache.recoveries == 0
    cache._audit()


@pytest.mark.parametrize(
    ("step", "stored"),
    [(1, False), (2, True), (3, True)],
    ids=["slot-taken", "slot-filled", "chained"],
)
def test_a_death_in_the_middle_of_an_add_leaves_a_consistent_cache(step, stored) -> None:
    """Killed after taking a free slot, after filling it, or after chaining it: the next lock
    rebuilds the index, and the ADD took effect exactly if the slot was marked used."""
    cache = SharedMemoryCache._any_capacity(3)
    for n in range(3):
        cache.add(b"full-%d" % n, b"s", 60_000 + n)  # full: the ADD evicts first

    def child():
        from distcache.cache import _shared

        _shared._crash_at(step)
        cache.add(b"dying", b"half-added", 60_000)

    assert _wait(_fork(child)) == -signal.SIGKILL
    assert cache.have(b"dying") is stored
    assert cache.recoveries == 1
    cache._audit()
    assert not cache.have(b"full-0")  # evicted before the death
    assert cache.count() == 2 + stored
    assert cache.add(b"dying", b"again", 60_000) is (
        AddResult.DUPLICATE if stored else AddResult.STORED
    )
    cache._audit()


def test_random_kills_of_busy_processes_leave_a_consistent_cache() -> None:
    """Four processes hammer a small cache; one after another is SIGKILLed at a random moment
    (often while it holds the lock, which they also take for a while on purpose) and replaced;
    every fourth replacement kills itself half-way through its first ADD. The cache stays
    consistent and serving."""
    from distcache.cache import _shared

    cache = SharedMemoryCache._any_capacity(40)
    rng = random.Random(1)

    def hammer(seed: int, crash_at: int = 0):
        def run():
            r = random.Random(seed)
            _shared._crash_at(crash_at)
            while True:
                session_id = b"id%d" % r.randrange(100)
                choice = r.randrange(5)
                if choice == 0:
                    cache.add(session_id, b"s" * r.randrange(1, 3000), r.randrange(0, 50))
                elif choice == 1:
                    cache.get(session_id)
                elif choice == 2:
                    cache.remove(session_id)
                elif choice == 3:
                    cache.have(session_id)
                else:  # a long critical section, where a kill is likely to land
                    cache._hold_lock()
                    time.sleep(0.001)
                    cache._release_lock()

        return run

    pids = [_fork(hammer(n)) for n in range(4)]
    crashed = 0
    try:
        for round_ in range(40):
            time.sleep(rng.uniform(0, 0.02))
            victim = pids.pop(rng.randrange(len(pids)))
            os.kill(victim, signal.SIGKILL)
            assert _wait(victim) == -signal.SIGKILL
            crash_at = 1 + round_ // 4 % 3 if round_ % 4 == 0 else 0
            if crash_at:
                assert _wait(_fork(hammer(100 + round_, crash_at))) == -signal.SIGKILL
                crashed += 1
            pids.append(_fork(hammer(100 + round_)))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            _wait(pid)
    cache._audit()
    assert cache.recoveries >= crashed > 0  # each death half-way through an ADD was recovered
    assert cache.count() <= 40
    assert cache.add(b"still", b"serving", 60_000) is AddResult.STORED
    assert cache.get(b"still") == b"serving"
    cache._audit()


def test_a_server_answers_failures_while_a_stopped_process_holds_the_lock(caplog) -> None:
    """What the clients of dc_server -workers see when one worker is stopped in the middle of an
    operation: the failure answers of an unreachable store (GET: not found; ADD: could not
    store) on connections that stay open, one ERROR line naming the stopped process, and the
    cache serving again once it runs."""
    store = MemoryStore.sharing(MIN_CACHE_SESSIONS)
    store.cache.add(b"kept", b"session", 60_000)
    servers = ServerThread()

    async def start() -> Server:
        server = Server(store)
        await server.start(bind_listeners("IP:127.0.0.1:0"))
        return server

    server = servers.call(start())
    try:
        client = connect_to(address_of(server))
        assert ask(client, get_request(1, b"kept")) == b"session"
        pid, release = _stopped_holder(store.cache)
        try:
            with caplog.at_level(logging.ERROR, logger="distcache.server"):
                assert ask(client, get_request(2, b"kept")) == bytes([Status.NOTOK])
                added = ask(client, add_request(3, b"new", b"s", 60_000))
                assert added == bytes([Status.ADD_MATCHING_SESSION])
            lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(lines) == 1 and f"by process {pid} " in lines[0], lines
        finally:
            _resume_and_release(pid, release)
        assert ask(client, get_request(4, b"kept")) == b"session"  # the same connection
        assert ask(client, add_request(5, b"new", b"s", 60_000)) == bytes([Status.OK])
        client.close()
    finally:
        servers.stop(server)
        servers.close()
