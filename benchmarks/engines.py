"""Storage-engine benchmark: dc_server on the memory engine against dc_server on Valkey/Redis.

One run, three set-ups, the same load on each:

  memory       one dc_server, -engine memory:
  redis        one dc_server, -engine redis://... (a redis-server started here, or --store-url)
  redis x2     two dc_server processes on that one store, the clients split between them

The load is dc_test's model: each client process keeps one connection and loops over uniformly
chosen operations (ADD, GET, REMOVE, HAVE) on uniformly chosen ids from a small shared set, with
sessions of 50..2100 bytes and timeouts of 55..65 s. The set-ups take turns in short rounds, so
that the machine's drifting speed hits them alike. Prints the median operations per second and
mean latency of each, the median round-by-round redis/memory ratio, and how much a second front
end adds. Not a test: figures depend on the machine and its load.

Run: python3 benchmarks/engines.py [--seconds S] [--rounds N] [--clients N] [--store-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from distcache.client import Client, DistcacheError

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def store_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


@contextlib.contextmanager
def running(argv: list[str], ready, what: str) -> Iterator[None]:
    quiet = subprocess.DEVNULL  # the servers' progress lines would bury the figures
    process = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        wait_until(lambda: process.poll() is None and ready(), what)
        yield
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)


@contextlib.contextmanager
def store_server(url: str | None) -> Iterator[str]:
    """The store to use: the given URL, or a redis-server on a free loopback port."""
    if url is not None:
        yield url
        return
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no valkey-server or redis-server found; give --store-url")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--maxmemory", "256mb", "--maxmemory-policy", "volatile-ttl"]
    with running(argv, lambda: store_answers(port), "redis-server"):
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def dc_server(engine: str) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "distcache.cli.dc_server", "-listen", f"IP:127.0.0.1:{port}"]
    with running([*argv, "-engine", engine], lambda: accepts(port), "dc_server"):
        yield f"IP:127.0.0.1:{port}"


def client_loop(address: str, seconds: float, seed: int, start_at: float) -> tuple[int, int]:
    """One dc_test-like client: (operations done, operations that failed)."""
    rng = random.Random(seed)
    ids = [b"bench-%03d" % n for n in range(64)]
    payloads = [rng.randbytes(rng.randint(50, 2100)) for _ in range(32)]
    done = failed = 0
    with Client(address, timeout=5.0, strict_timeouts=False) as cache:
        time.sleep(max(0.0, start_at - time.time()))
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            session_id = rng.choice(ids)
            op = rng.randrange(4)
            try:
                if op == 0:
                    cache.add(session_id, rng.choice(payloads), rng.randrange(55_000, 65_000))
                elif op == 1:
                    cache.get(session_id)
                elif op == 2:
                    cache.remove(session_id)
                else:
                    cache.have(session_id)
            except DistcacheError:
                failed += 1
            done += 1
    return done, failed


def measure(pool, addresses: list[str], clients: int, seconds: float) -> tuple[float, int]:
    """Run ``clients`` workers of ``pool`` (spread over ``addresses``): (ops/s, failures)."""
    start_at = time.time() + 0.3  # every client connected before the clock starts
    jobs = [(addresses[n % len(addresses)], seconds, n, start_at) for n in range(clients)]
    results = pool.starmap(client_loop, jobs)
    operations = sum(done for done, _ in results)
    failures = sum(failed for _, failed in results)
    return operations / seconds, failures


def report(label: str, rates: list[float], failures: int, clients: int) -> None:
    rate = statistics.median(rates)
    latency_ms = 1000.0 * clients / rate if rate else float("inf")
    line = f"{label:<28} {rate:>10,.0f} ops/s   mean latency {latency_ms:6.3f} ms"
    print(line + (f"   ({failures} failed)" if failures else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per round (default 1.5)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per set-up (default 6)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--store-url", help="use this store instead of starting redis-server")
    args = parser.parse_args()
    print(f"{args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per set-up")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(store_server(args.store_url))
        prefix_url = url + ("&" if "?" in url else "?") + "prefix=bench:"
        setups = {
            "memory engine": [stack.enter_context(dc_server("memory:"))],
            "redis engine": [stack.enter_context(dc_server(prefix_url))],
            "redis engine, 2 servers": [
                stack.enter_context(dc_server(prefix_url)),
                stack.enter_context(dc_server(prefix_url)),
            ],
        }
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.clients))
        # Short rounds, alternating: the machine's speed drifts, so only rounds measured back
        # to back compare fairly, and the ratio is the median of the round-by-round ratios.
        rates: dict[str, list[float]] = {label: [] for label in setups}
        failures = dict.fromkeys(setups, 0)
        for _ in range(args.rounds):
            for label, addresses in setups.items():
                rate, failed = measure(pool, addresses, args.clients, args.seconds)
                rates[label].append(rate)
                failures[label] += failed
    for label in setups:
        report(label, rates[label], failures[label], args.clients)
    ratios = [r / m for r, m in zip(rates["redis engine"], rates["memory engine"], strict=True)]
    two = [
        t / r for t, r in zip(rates["redis engine, 2 servers"], rates["redis engine"], strict=True)
    ]
    print(
        f"redis / memory with {args.clients} clients: {statistics.median(ratios):.2f} "
        f"(median of {len(ratios)} rounds); two front ends / one: {statistics.median(two):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
