"""Proxy overhead: the same load against dc_server directly, through a bare byte relay, and
through dc_client in front of it.

All three run as real processes (the server behind the relay and the proxy is the very same one).
Each of ``--clients`` connections sends ``--requests`` requests one after the other (a mix of ADD,
GET, HAVE and REMOVE on its own ids, sessions of ``--size`` bytes) and times each round trip. The
three paths alternate ``--rounds`` times so that machine noise hits them alike.

The relay is the floor any proxy in this position has to pay: an asyncio (uvloop) process that
copies bytes between each client and its own server connection, without decoding anything. It
adds the same two socket hops and process wake-ups as dc_client, so ``relay/direct`` (printed as
*floor*) is the smallest ratio a Python proxy could reach here; dc_client's target is at most 1.5x.
Prints, per operation, the mean latency of each path, both ratios, p50 and p99, then requests per
second.

    python benchmarks/proxy.py [--clients N] [--requests N] [--size N] [--rounds N]
                               [--client-loop asyncio|uvloop] [--engine URL]
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

import uvloop

from distcache.protocol import NEED_DATA, MessageDecoder, encode_request
from distcache.protocol.operations import add_payload
from distcache.wire import Direction, Operation

MIX = (Operation.ADD, Operation.GET, Operation.HAVE, Operation.GET, Operation.REMOVE)
PATHS = ("direct", "relay", "proxied")


def start(argv: list[str], path: str) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"could not start {' '.join(argv[1:3])}")
        time.sleep(0.02)
    return process


# -- the load ---------------------------------------------------------------------------------


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


# -- the floor: a bare byte relay ---------------------------------------------------------------


class _RelayEnd(asyncio.Protocol):
    """One socket of a relayed pair: whatever it reads is written to the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _RelayEnd | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.other.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class _RelayClient(_RelayEnd):
    """An accepted client: what it sends before its own server connection is up waits."""

    def __init__(self, upstream_path: str, tasks: set) -> None:
        super().__init__()
        self._upstream_path = upstream_path
        self._tasks = tasks
        self._early: list[bytes] = []

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self._early.append(data)
        else:
            self.other.transport.write(data)

    async def _connect(self) -> None:
        upstream = _RelayEnd()
        upstream.other = self
        await asyncio.get_running_loop().create_unix_connection(
            lambda: upstream, self._upstream_path
        )
        self.other = upstream
        upstream.transport.writelines(self._early)


async def serve_relay(listen_path: str, upstream_path: str) -> None:
    loop = asyncio.get_running_loop()
    tasks: set = set()
    await loop.create_unix_server(lambda: _RelayClient(upstream_path, tasks), listen_path)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    os.unlink(listen_path)


# -- running and reporting ----------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["--serve-relay"]:
        uvloop.run(serve_relay(*sys.argv[2:4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per client and round")
    parser.add_argument("--size", type=int, default=1000, help="session bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--engine",
        default="memory:",
        help="dc_server's storage engine, e.g. redis://127.0.0.1:6379/0 (default memory:)",
    )
    parser.add_argument(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the load generator (a faster client makes every hop count more)",
    )
    args = parser.parse_args()
    run = uvloop.run if args.client_loop == "uvloop" else asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: f"{tmp}/{name}" for name in PATHS}
        python = sys.executable
        server = start([python, "-m", "distcache.cli.dc_server", "-listen",
                        f"UNIX:{paths['direct']}", "-sessions", "60000", "-engine", args.engine],
                       paths["direct"])  # fmt: skip
        relay = start([python, os.path.abspath(__file__), "--serve-relay", paths["relay"],
                       paths["direct"]], paths["relay"])  # fmt: skip
        proxy = start([python, "-m", "distcache.cli.dc_client", "-listen",
                       f"UNIX:{paths['proxied']}", "-server", f"UNIX:{paths['direct']}"],
                      paths["proxied"])  # fmt: skip
        try:
            totals = {name: ({op: [] for op in set(MIX)}, [0.0]) for name in PATHS}
            for _ in range(args.rounds):
                for name in PATHS:
                    samples, elapsed = run(
                        load(paths[name], args.clients, args.requests, args.size)
                    )
                    for operation, values in samples.items():
                        totals[name][0][operation].extend(values)
                    totals[name][1][0] += elapsed
        finally:
            for process in (proxy, relay, server):
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
          f"{args.size}-byte sessions, UNIX sockets, {args.client_loop} client, "
          f"engine {args.engine}")  # fmt: skip
    print("mean ms per operation; ratio = proxied/direct, floor = relay/direct; "
          "p50 and p99 ms as direct/relay/proxied")  # fmt: skip
    print(f"{'op':>7} {'direct':>7} {'relay':>7} {'proxied':>7} {'ratio':>6} {'floor':>6}   "
          f"{'p50 d/r/p':>20}   {'p99 d/r/p':>20}")  # fmt: skip
    by_path = {name: totals[name][0] for name in PATHS}
    everything = {name: [] for name in PATHS}
    rows = [(op.name, {n: by_path[n][op] for n in PATHS}) for op in sorted(MIX_ORDER, key=int)]
    for name in PATHS:
        for op in MIX_ORDER:
            everything[name] += by_path[name][op]
    for label, s in [*rows, ("ALL", everything)]:
        d, r, p = (s[name] for name in PATHS)
        print(f"{label:>7} {_ms(d):>7.3f} {_ms(r):>7.3f} {_ms(p):>7.3f} "
              f"{_ms(p) / _ms(d):>6.2f} {_ms(r) / _ms(d):>6.2f}   "
              f"{_ms(d, .5):>6.3f}/{_ms(r, .5):.3f}/{_ms(p, .5):<6.3f}   "
              f"{_ms(d, .99):>6.3f}/{_ms(r, .99):.3f}/{_ms(p, .99):<6.3f}")  # fmt: skip
    d, r, p = (everything[name] for name in PATHS)
    print(f"p50 ratio {_ms(p, .5) / _ms(d, .5):.2f}, p50 floor {_ms(r, .5) / _ms(d, .5):.2f}; "
          f"proxy's own cost over the relay: {_ms(p) - _ms(r):.3f} ms mean, "
          f"{_ms(p, .5) - _ms(r, .5):.3f} ms p50")  # fmt: skip
    for name in PATHS:
        count = len(everything[name])
        print(f"{name:>8}: {count / totals[name][1][0]:,.0f} requests per second")


MIX_ORDER = tuple(sorted(set(MIX), key=int))


if __name__ == "__main__":
    main()
