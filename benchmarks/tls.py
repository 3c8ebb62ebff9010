"""The cost of TLS per request: dc_server over TLS against dc_server over plain TCP, side by side.

Two dc_server processes run from the same code, one listening on ``IP:`` and one on ``TLS:`` with
mutual authentication (a throw-away CA from trustme). Rounds alternate between them so machine
noise hits both alike. Each round drives one server with persistent clients sending one request
at a time (the dc_test mix: ADD/GET/REMOVE/HAVE on 10 sessions of 50..2100 bytes), then reads the
server's CPU time from /proc/<pid>/stat and this process's own (the clients' side). A last
measure opens a new connection per request, which is where TLS costs most: the handshake.

Prints, per client count: operations per second, server and client CPU microseconds per request,
and the ratios TLS/plain.

    python benchmarks/tls.py [--seconds S] [--rounds N] [--clients 1,4] [--connections N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme
from server import LoadClient, _requests, free_port, start

from distcache.server import new_event_loop

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def own_cpu_seconds() -> float:
    return time.process_time()


async def run_round(
    port, tls, clients, seconds, requests, server_pid
) -> tuple[float, float, float]:
    """(operations per second, server CPU s per op, client CPU s per op) of one round."""
    loop = asyncio.get_running_loop()
    workers = []
    for n in range(clients):
        done = loop.create_future()
        options = {"ssl": tls, "server_hostname": "127.0.0.1"} if tls else {}
        _, protocol = await loop.create_connection(
            lambda n=n, done=done: LoadClient(requests, n, done), "127.0.0.1", port, **options
        )
        workers.append(protocol)
    await asyncio.sleep(seconds / 5)  # warm up
    ops0 = sum(w.operations for w in workers)
    server0, client0, started = cpu_seconds(server_pid), own_cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    operations = sum(w.operations for w in workers) - ops0
    server_cpu = cpu_seconds(server_pid) - server0
    client_cpu = own_cpu_seconds() - client0
    for worker in workers:
        worker.running = False
    await asyncio.gather(*(w.done for w in workers))
    for worker in workers:
        worker.transport.close()
    return operations / elapsed, server_cpu / operations, client_cpu / operations


async def connection_round(port, tls, count, request, server_pid) -> tuple[float, float]:
    """(connections per second, server CPU s per connection): connect, one request, close."""
    server0, started = cpu_seconds(server_pid), time.perf_counter()
    for _ in range(count):
        options = {"ssl": tls, "server_hostname": "127.0.0.1"} if tls else {}
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **options)
        writer.write(request)
        await reader.readexactly(15)  # the one-byte HAVE reply
        writer.close()
    elapsed = time.perf_counter() - started
    return count / elapsed, (cpu_seconds(server_pid) - server0) / count


def make_pki(directory: Path) -> tuple[list[str], ssl.SSLContext]:
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("bench-client")
    paths = {name: str(directory / name) for name in ("ca.pem", "server.pem", "server.key")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    server.cert_chain_pems[0].write_to_path(paths["server.pem"])
    server.private_key_pem.write_to_path(paths["server.key"])
    flags = ["-tls-cert", paths["server.pem"], "-tls-key", paths["server.key"]]
    flags += ["-tls-ca", paths["ca.pem"]]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client.configure_cert(context)
    return flags, context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per server")
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    parser.add_argument("--connections", type=int, default=200, help="for the handshake measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        flags, client_tls = make_pki(Path(directory))
        plain_port, tls_port = free_port(), free_port()
        program = [sys.executable, "-m", "distcache.cli.dc_server", "-listen"]
        servers = {
            "plain": (
                start([*program, f"IP:127.0.0.1:{plain_port}"], plain_port),
                plain_port,
                None,
            ),
            "tls": (
                start([*program, f"TLS:127.0.0.1:{tls_port}", *flags], tls_port),
                tls_port,
                client_tls,
            ),
        }
        try:
            report(servers, args)
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(10)


def report(servers, args) -> None:
    requests = _requests(7)
    print(f"dc_server over TLS (mutual, {ssl.OPENSSL_VERSION}) vs plain TCP;")
    print(f"{args.rounds} alternating rounds of {args.seconds} s, medians\n")
    header = f"{'clients':>7}  {'':5}  {'ops/s':>9}  {'server us/op':>12}  {'client us/op':>12}"
    print(header)

    async def measure_all() -> None:
        for clients in (int(c) for c in args.clients.split(",")):
            results = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (process, port, tls) in servers.items():
                    results[name].append(
                        await run_round(port, tls, clients, args.seconds, requests, process.pid)
                    )
            medians = {
                name: [statistics.median(r[i] for r in rows) for i in range(3)]
                for name, rows in results.items()
            }
            for name, (ops, server_cpu, client_cpu) in medians.items():
                print(
                    f"{clients:>7}  {name:5}  {ops:>9.0f}  {server_cpu * 1e6:>12.1f}"
                    f"  {client_cpu * 1e6:>12.1f}"
                )
            plain, tls = medians["plain"], medians["tls"]
            print(
                f"{clients:>7}  ratio  {tls[0] / plain[0]:>9.2f}  {tls[1] / plain[1]:>12.2f}"
                f"  {tls[2] / plain[2]:>12.2f}   (TLS / plain)"
            )
        have = requests[3]
        print(f"\nnew connection per request ({args.connections} connections, median of 3):")
        for name, (process, port, tls) in servers.items():
            rounds = [
                await connection_round(port, tls, args.connections, have, process.pid)
                for _ in range(3)
            ]
            rate = statistics.median(r[0] for r in rounds)
            cpu = statistics.median(r[1] for r in rounds)
            print(f"  {name:5}  {rate:>7.0f} connections/s  {cpu * 1e6:>8.0f} server us/connection")

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(measure_all())


if __name__ == "__main__":
    main()
