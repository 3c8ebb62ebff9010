"""Proxy overhead: the same load against dc_server directly and through dc_client in front of it.

Both programs run as real processes (the server behind the proxy is the very same one). Each of
``--clients`` connections sends ``--requests`` requests one after the other (a mix of ADD, GET,
HAVE and REMOVE on its own ids, sessions of ``--size`` bytes) and times each round trip. The
direct and proxied rounds alternate ``--rounds`` times so that machine noise hits both alike.
Prints, per operation, the mean and p50/p99 latency of each path and the proxied/direct ratio
(the target is at most 1.5x), then requests per second.

    python benchmarks/proxy.py [--clients N] [--requests N] [--size N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from distcache.protocol import NEED_DATA, MessageDecoder, encode_request
from distcache.protocol.operations import add_payload
from distcache.wire import Direction, Operation

MIX = (Operation.ADD, Operation.GET, Operation.HAVE, Operation.GET, Operation.REMOVE)


def start(argv: list[str], path: str) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"could not start {argv[2]}")
        time.sleep(0.02)
    return process


async def client(path: str, index: int, requests: int, session: bytes, samples: dict) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    session_id = b"bench-%d" % index
    for uid in range(requests):
        operation = MIX[uid % len(MIX)]
        payload = (
            add_payload(session_id, session, 600_000) if operation is Operation.ADD else session_id
        )
        request = encode_request(uid, operation, payload)
        started = time.perf_counter()
        writer.write(request)
        while decoder.next_event() is NEED_DATA:
            decoder.receive_data(await reader.read(65536))
        samples[operation].append(time.perf_counter() - started)
    writer.close()


async def load(path: str, clients: int, requests: int, size: int) -> tuple[dict, float]:
    samples = {operation: [] for operation in set(MIX)}
    session = os.urandom(size)
    started = time.perf_counter()
    await asyncio.gather(*(client(path, i, requests, session, samples) for i in range(clients)))
    return samples, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per client and round")
    parser.add_argument("--size", type=int, default=1000, help="session bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server_path, proxy_path = f"{tmp}/server", f"{tmp}/proxy"
        python = sys.executable
        server = start([python, "-m", "distcache.cli.dc_server", "-listen", f"UNIX:{server_path}",
                        "-sessions", "60000"], server_path)  # fmt: skip
        proxy = start([python, "-m", "distcache.cli.dc_client", "-listen", f"UNIX:{proxy_path}",
                       "-server", f"UNIX:{server_path}"], proxy_path)  # fmt: skip
        try:
            totals = {"direct": ({op: [] for op in set(MIX)}, [0.0]),
                      "proxied": ({op: [] for op in set(MIX)}, [0.0])}  # fmt: skip
            for _ in range(args.rounds):
                for name, path in (("direct", server_path), ("proxied", proxy_path)):
                    samples, elapsed = asyncio.run(
                        load(path, args.clients, args.requests, args.size)
                    )
                    for operation, values in samples.items():
                        totals[name][0][operation].extend(values)
                    totals[name][1][0] += elapsed
        finally:
            for process in (proxy, server):
                process.send_signal(signal.SIGTERM)
                process.wait(10)
    report(totals, args)


def _ms(values: list[float], fraction: float | None = None) -> float:
    if fraction is None:
        return 1000 * statistics.fmean(values)
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(totals: dict, args) -> None:
    print(f"{args.clients} clients x {args.requests} requests x {args.rounds} rounds, "
          f"{args.size}-byte sessions, UNIX sockets")  # fmt: skip
    print(f"{'op':>7} {'direct ms':>10} {'proxied ms':>11} {'ratio':>6}   "
          f"{'p50 d/p':>13} {'p99 d/p':>15}")  # fmt: skip
    direct, proxied = totals["direct"][0], totals["proxied"][0]
    everything = {"direct": [], "proxied": []}
    for operation in sorted(direct, key=int):
        d, p = direct[operation], proxied[operation]
        everything["direct"] += d
        everything["proxied"] += p
        print(f"{operation.name:>7} {_ms(d):>10.3f} {_ms(p):>11.3f} {_ms(p) / _ms(d):>6.2f}   "
              f"{_ms(d, .5):>6.3f}/{_ms(p, .5):<6.3f} {_ms(d, .99):>7.3f}/{_ms(p, .99):<7.3f}")  # fmt: skip
    d, p = everything["direct"], everything["proxied"]
    print(f"{'ALL':>7} {_ms(d):>10.3f} {_ms(p):>11.3f} {_ms(p) / _ms(d):>6.2f}")
    for name in ("direct", "proxied"):
        count = len(everything[name])
        print(f"{name:>8}: {count / totals[name][1][0]:,.0f} requests per second")


if __name__ == "__main__":
    main()
