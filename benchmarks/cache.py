"""Throughput of the in-memory cache at full capacity, beside a naive linear-scan cache.

The naive cache keeps one list sorted by expiry, the way the legacy server kept its array, and
finds ids by scanning it. Both caches are filled to capacity with the same sessions and then run
the same operations; the script prints operations per second for each and the ratio.

    python benchmarks/cache.py [--capacity N] [--ops N] [--naive-ops N] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import time
from bisect import insort
from collections.abc import Callable

from distcache.cache import AddResult, ManualClock, MemoryCache, eviction_batch
from distcache.wire import MAX_CACHE_SESSIONS, MAX_SESSION_ID, MIN_CACHE_SESSIONS

SESSION = b"s" * 100
#: Timeouts long enough that nothing expires during a run, varied so eviction order matters.
TIMEOUTS = range(600_000, 3_600_000)


class LinearCache:
    """The naive model: a list of (expiry, seq, id, session) kept sorted, scanned for every id."""

    def __init__(self, capacity: int, clock: ManualClock) -> None:
        self.capacity = capacity
        self.clock = clock
        self.rows: list[tuple[int, int, bytes, bytes]] = []
        self.seq = 0

    def load(self, sessions: list[tuple[bytes, int]]) -> None:
        """Store distinct ids at once, as that many ADDs would (one ADD each would take minutes)."""
        now = self.clock.now_ms()
        rows = [(now + t, seq, sid, SESSION) for seq, (sid, t) in enumerate(sessions, self.seq)]
        self.rows = sorted(self.rows + rows)
        self.seq += len(rows)

    def _purge(self) -> None:
        now = self.clock.now_ms()
        while self.rows and self.rows[0][0] < now:
            del self.rows[0]

    def _index(self, session_id: bytes) -> int:
        for i, row in enumerate(self.rows):
            if row[2] == session_id:
                return i
        return -1

    def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        self._purge()
        if self._index(session_id) >= 0:
            return AddResult.DUPLICATE
        if len(self.rows) >= self.capacity:
            del self.rows[: eviction_batch(self.capacity)]
        insort(self.rows, (self.clock.now_ms() + timeout_ms, self.seq, session_id, session))
        self.seq += 1
        return AddResult.STORED

    def get(self, session_id: bytes) -> bytes | None:
        self._purge()
        i = self._index(session_id)
        return None if i < 0 else self.rows[i][3]

    def have(self, session_id: bytes) -> bool:
        self._purge()
        return self._index(session_id) >= 0

    def remove(self, session_id: bytes) -> bool:
        self._purge()
        i = self._index(session_id)
        if i >= 0:
            del self.rows[i]
        return i >= 0

    def count(self) -> int:
        self._purge()
        return len(self.rows)


def random_id(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(16, MAX_SESSION_ID))


def ops_per_second(run: Callable[[], None], ops: int) -> float:
    start = time.perf_counter()
    run()
    return ops / max(time.perf_counter() - start, 1e-9)


def measure(cache, stored: list[bytes], ops: int, rng: random.Random) -> dict[str, float]:
    """Run each operation ``ops`` times on a full ``cache``; return ops/s per operation."""
    fresh = [random_id(rng) for _ in range(ops)]
    timeouts = [rng.choice(TIMEOUTS) for _ in range(ops)]
    hits = rng.sample(stored, ops)
    mixed = [rng.choice((hit, miss)) for hit, miss in zip(hits, fresh, strict=True)]

    def add() -> None:
        for session_id, timeout in zip(fresh, timeouts, strict=True):
            cache.add(session_id, SESSION, timeout)

    def get() -> None:
        for session_id in hits:
            cache.get(session_id)

    def have() -> None:
        for session_id in mixed:
            cache.have(session_id)

    def remove() -> None:
        for session_id in hits:
            cache.remove(session_id)

    # GET/HAVE before ADD so the hits are still stored; REMOVE last, as it empties slots.
    results = {"get (hit)": ops_per_second(get, ops), "have (50% hit)": ops_per_second(have, ops)}
    results["add (full, evicting)"] = ops_per_second(add, ops)
    results["remove"] = ops_per_second(remove, ops)
    return results


def distinct_sessions(capacity: int, rng: random.Random) -> list[tuple[bytes, int]]:
    """``capacity`` (id, timeout) pairs with distinct ids."""
    ids: dict[bytes, int] = {}
    while len(ids) < capacity:
        ids[random_id(rng)] = rng.choice(TIMEOUTS)
    return list(ids.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=MAX_CACHE_SESSIONS)
    parser.add_argument("--ops", type=int, default=20_000, help="operations per kind (memory)")
    parser.add_argument("--naive-ops", type=int, default=100, help="operations per kind (naive)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not MIN_CACHE_SESSIONS <= args.capacity <= MAX_CACHE_SESSIONS:
        parser.error(f"--capacity must be {MIN_CACHE_SESSIONS}..{MAX_CACHE_SESSIONS}")
    if not 0 < args.naive_ops <= args.capacity or not 0 < args.ops <= args.capacity:
        parser.error("--ops and --naive-ops must be 1..capacity (GET/REMOVE need distinct hits)")

    rng = random.Random(args.seed)
    clock = ManualClock()
    sessions = distinct_sessions(args.capacity, rng)
    stored = [session_id for session_id, _ in sessions]
    memory = MemoryCache(args.capacity, clock)
    for session_id, timeout in sessions:
        memory.add(session_id, SESSION, timeout)
    naive = LinearCache(args.capacity, clock)
    naive.load(sessions)
    if not memory.count() == naive.count() == args.capacity:
        raise SystemExit("filling the caches failed")

    fast = measure(memory, stored, args.ops, random.Random(args.seed))
    slow = measure(naive, stored, args.naive_ops, random.Random(args.seed))

    print(f"{args.capacity} sessions, full; {args.ops} ops (memory) / {args.naive_ops} ops (naive)")
    print(f"{'operation':<22}{'memory ops/s':>15}{'linear ops/s':>15}{'ratio':>10}")
    for name, rate in fast.items():
        print(f"{name:<22}{rate:>15,.0f}{slow[name]:>15,.0f}{rate / slow[name]:>9,.0f}x")


if __name__ == "__main__":
    main()
