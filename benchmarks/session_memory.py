"""Memory held per stored session by the memory engine, for choosing ``dc_server -sessions``.

Fills a fresh memory-engine cache (the structure behind ``-engine memory:``) with N sessions of
one size (ids of 32 bytes, the usual TLS session id length; random bytes), measures with
tracemalloc what the cache keeps alive, and prints bytes per session, the overhead over the session's own bytes, and the memory a full cache of the
largest capacity would hold. A measurement of this machine's Python, not a test.

Run: python3 benchmarks/session_memory.py [--sessions N] [--sizes 100,1024,2048,10240]
"""

from __future__ import annotations

import argparse
import gc
import os
import tracemalloc

from distcache.cache import MemoryCache
from distcache.wire.limits import MAX_CACHE_SESSIONS

ID_BYTES = 32


def bytes_per_session(count: int, size: int) -> float:
    """Heap held per session once ``count`` sessions of ``size`` bytes are stored."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = MemoryCache(max(count, 64))
    for _ in range(count):
        store.add(os.urandom(ID_BYTES), os.urandom(size), 3_600_000)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before  # only what the store keeps alive
    tracemalloc.stop()
    assert store.count() == count
    return held / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--sizes", default="100,1024,2048,10240")
    args = parser.parse_args()
    print(f"{'session bytes':>13} {'bytes/session':>13} {'overhead':>9} {'full cache':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        per = bytes_per_session(args.sessions, size)
        full = per * MAX_CACHE_SESSIONS / 2**20
        print(f"{size:>13} {per:>13.0f} {per - size - ID_BYTES:>9.0f} {full:>8.1f} MiB")


if __name__ == "__main__":
    main()
