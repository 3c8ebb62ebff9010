"""Server throughput against a floor: how close dc_server comes to a server that does nothing.

Two servers run as separate processes on the same kind of event loop (uvloop when installed):
``dc_server`` with the memory engine, and a *floor* server that answers every final frame with a
canned one-byte reply (no storage, no validation, no reassembly). Both get the same load: 1 and 4
persistent clients, each sending one request at a time (as the legacy dc_test does), an operation
chosen uniformly among ADD/GET/REMOVE/HAVE on 10 sessions of 50..2100 bytes. Rounds alternate
between the two servers so that machine noise hits both alike. Prints operations per second and
the ratio ours/floor (target: at least 0.85).

    python benchmarks/server.py [--seconds S] [--rounds N] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time

from distcache.protocol import add_request, get_request, have_request, remove_request
from distcache.server import new_event_loop

SESSIONS = 10
DATA_SIZES = (50, 2100)  # dc_test's defaults: -datamin 50 -datamax 2100
TIMEOUT_MS = 60_000
CANNED_REPLY_PAYLOAD = b"\x00"


# -- the floor server ---------------------------------------------------------------------------


class FloorProtocol(asyncio.Protocol):
    """Answers every frame whose ``complete`` byte is set with a canned reply echoing its uid and
    operation; looks at nothing else."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        pos, size, replies = 0, len(buffer), []
        while size - pos >= 14:
            end = pos + 14 + int.from_bytes(buffer[pos + 12 : pos + 14], "big")
            if end > size:
                break
            if buffer[pos + 11]:
                header = bytes(buffer[pos : pos + 14])
                replies.append(
                    header[:4] + b"\x01" + header[5:11] + b"\x01\x00\x01" + CANNED_REPLY_PAYLOAD
                )
            pos = end
        del buffer[:pos]
        if replies:
            self.transport.write(b"".join(replies))


def run_floor(port: int) -> None:
    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FloorProtocol, "127.0.0.1", port, backlog=511)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve())


# -- the load -----------------------------------------------------------------------------------


def _requests(seed: int) -> list[bytes]:
    """Every (session, operation) request of the dc_test mix, pre-encoded."""
    rng = random.Random(seed)
    requests = []
    for _ in range(SESSIONS):
        session_id = rng.randbytes(10 + rng.randrange(54))
        session = rng.randbytes(rng.randrange(*DATA_SIZES))
        requests += [
            add_request(1, session_id, session, TIMEOUT_MS),
            get_request(2, session_id),
            remove_request(3, session_id),
            have_request(4, session_id),
        ]
    return requests


class LoadClient(asyncio.Protocol):
    """One persistent connection: send a random request, wait for its whole reply, repeat."""

    def __init__(self, requests: list[bytes], seed: int, done: asyncio.Future):
        self.requests = requests
        self.rng = random.Random(seed)
        self.buffer = bytearray()
        self.operations = 0
        self.running = True
        self.done = done

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        self.transport.write(self.rng.choice(self.requests))

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        pos, size, finished = 0, len(buffer), False
        while size - pos >= 14:
            end = pos + 14 + int.from_bytes(buffer[pos + 12 : pos + 14], "big")
            if end > size:
                break
            finished = finished or bool(buffer[pos + 11])
            pos = end
        del buffer[:pos]
        if finished:
            self.operations += 1
            if self.running:
                self._send()
            elif not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed the connection: {exc}"))


async def measure(port: int, clients: int, seconds: float, requests: list[bytes]) -> float:
    """Operations per second that ``clients`` one-at-a-time clients get from the server."""
    loop = asyncio.get_running_loop()
    workers = []
    for n in range(clients):
        done = loop.create_future()
        _, protocol = await loop.create_connection(
            lambda n=n, done=done: LoadClient(requests, n, done), "127.0.0.1", port
        )
        workers.append(protocol)
    await asyncio.sleep(seconds / 5)  # warm up
    start_ops = sum(w.operations for w in workers)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    operations = sum(w.operations for w in workers) - start_ops
    for worker in workers:
        worker.running = False
    await asyncio.gather(*(w.done for w in workers))
    for worker in workers:
        worker.transport.close()
    return operations / elapsed


# -- orchestration ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(argv: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"could not start {' '.join(argv)}") from None
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per round")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds per server")
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    parser.add_argument("--floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        run_floor(args.floor)
        return
    ours_port, floor_port = free_port(), free_port()
    servers = {
        "dc_server": start(
            [
                sys.executable,
                "-m",
                "distcache.cli.dc_server",
                "-listen",
                f"IP:127.0.0.1:{ours_port}",
            ],
            ours_port,
        ),
        "floor": start([sys.executable, __file__, "--floor", str(floor_port)], floor_port),
    }
    ports = {"dc_server": ours_port, "floor": floor_port}
    requests = _requests(seed=1)
    loop_name = type(new_event_loop()).__module__.split(".")[0]
    print(f"event loop: {loop_name}; {args.rounds} rounds of {args.seconds} s per server")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            for clients in (int(c) for c in args.clients.split(",")):
                # Short rounds, alternating, judged pair by pair: on a shared machine the
                # speed drifts within seconds, so only back-to-back rounds compare fairly.
                best = {name: 0.0 for name in servers}
                ratios = []
                for _ in range(args.rounds):
                    rates = {
                        name: runner.run(measure(port, clients, args.seconds, requests))
                        for name, port in ports.items()
                    }
                    ratios.append(rates["dc_server"] / rates["floor"])
                    for name, rate in rates.items():
                        best[name] = max(best[name], rate)
                print(
                    f"{clients} client(s): dc_server {best['dc_server']:9.0f} ops/s, "
                    f"floor {best['floor']:9.0f} ops/s (best rounds), "
                    f"ratio {statistics.median(ratios):.2f} (median of {len(ratios)} round pairs)"
                )
    finally:
        for process in servers.values():
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
