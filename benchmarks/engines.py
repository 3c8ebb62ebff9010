"""Storage-engine benchmark: dc_server on the memory engine against dc_server on Valkey/Redis.

One run, three set-ups, the same load on each:

  memory       one dc_server, -engine memory:
  redis        one dc_server, -engine redis://... (a redis-server started here, or --store-url)
  redis x2     two dc_server processes on that one store, the clients split between them

The load is dc_test's model: each client process keeps one connection and loops over uniformly
chosen operations (ADD, GET, REMOVE, HAVE) on uniformly chosen ids from a small shared set, with
sessions of 50..2100 bytes and timeouts of 55..65 s. Prints operations per second, the mean
latency, and the redis/memory ratio. Not a test: figures depend on the machine and its load.

Run: python3 benchmarks/engines.py [--seconds S] [--clients N] [--store-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import shutil
import socket
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


def measure(addresses: list[str], clients: int, seconds: float) -> tuple[float, float, int]:
    """Run ``clients`` processes (spread over ``addresses``): (ops/s, mean latency ms, failures)."""
    start_at = time.time() + 1.0  # every client connected before the clock starts
    jobs = [(addresses[n % len(addresses)], seconds, n, start_at) for n in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.starmap(client_loop, jobs)
    operations = sum(done for done, _ in results)
    failures = sum(failed for _, failed in results)
    rate = operations / seconds
    latency_ms = 1000.0 * clients / rate if rate else float("inf")
    return rate, latency_ms, failures


def report(label: str, figures: tuple[float, float, int]) -> None:
    rate, latency_ms, failures = figures
    line = f"{label:<28} {rate:>10,.0f} ops/s   mean latency {latency_ms:6.3f} ms"
    print(line + (f"   ({failures} failed)" if failures else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per set-up (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--store-url", help="use this store instead of starting redis-server")
    args = parser.parse_args()
    print(f"{args.clients} clients, {args.seconds:g} s per set-up")
    with dc_server("memory:") as address:
        memory = measure([address], args.clients, args.seconds)
    report("memory engine", memory)
    with store_server(args.store_url) as url:
        prefix_url = url + ("&" if "?" in url else "?") + "prefix=bench:"
        with dc_server(prefix_url) as address:
            redis = measure([address], args.clients, args.seconds)
        report("redis engine", redis)
        with dc_server(prefix_url) as first, dc_server(prefix_url) as second:
            shared = measure([first, second], args.clients, args.seconds)
        report("redis engine, 2 servers", shared)
    print(f"redis / memory with {args.clients} clients: {redis[0] / memory[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
