"""CPU time per request of dc_server and dc_client, side by side with another build of them.

What decides throughput on a many-core host is the CPU time each process spends per request; it
can be measured on any host, however small or busy, because the kernel accounts it per process
(user + system time in ``/proc/<pid>/stat``, and to the nanosecond in ``/proc/<pid>/task/*/sched``
where the kernel has it). This benchmark runs the same load against our
programs and, when ``--legacy-bin DIR`` names a directory holding the legacy C programs
(``dc_server``, ``dc_client``, ``dc_test``), against those, in alternating rounds of one run.

Loads (``--loads``):

* ``server``: N persistent clients against ``dc_server`` on TCP;
* ``proxy``: N clients opening a connection per operation to ``dc_client`` on a UNIX socket (how
  Apache httpd's mod_socache_dc uses a cache), the proxy forwarding to one upstream server. The
  upstream is the same program for both sides (the legacy server when given, else ours), so the
  proxies are compared on equal terms.

The load generator is ``dc_test`` (the legacy one when given, the same for both sides, else ours):
each client is one ``dc_test -ops K`` process with its usual mix of ADD/GET/REMOVE/HAVE. For each
of ``--workers`` (``1,2,4,auto``; values other than 1 need a build with ``-workers``) it prints
ops/s, then CPU microseconds per request of the busiest process of the program under test and of
all its processes together (a supervisor, workers and an engine process all count), the ratios
ours/legacy (of paired rounds, and of each side's best round), and the kernel's share of all
processes' time. Each figure is a range over ``--rounds`` rounds (min..max). ``--pure`` adds ours with its optional C accelerator turned off
(``DISTCACHE_NO_EXTENSIONS=1``), in the same rounds, to show what the accelerator saves.
``--floor`` adds a floor: a cache in Python on the same event loop with no checks at all (and,
in place of the proxy, answering locally with no upstream hop), the least any asyncio program
spends per request on this load.

With ``--legacy-bin`` and more than one worker, a reference ``spread`` runs beside them: N
independent legacy processes (N = the worker count; N servers, or N proxies in front of the one
upstream server) with the clients spread over them one per process (client i to process i mod N),
so that no process wakes up for more than its own clients. Nothing is shared (no common cache),
so it is a lower bound for any design that spreads clients over processes, compiled or not: on a
host where a wake-up per request dominates, its "all processes" figure shows what spreading alone
costs, and its busiest figure how far spreading can take one process. ``--spread-ours`` adds the
same spread of our single-process programs (``ours-spread``): what ours with N workers would cost
if no request crossed a process boundary (no engine owner), the bound for such a design of ours.

    python benchmarks/cpu.py [--legacy-bin DIR] [--pure] [--floor] [--no-spread] [--spread-ours]
                             [--workers 1,4]
                             [--clients 1,4] [--loads server,proxy] [--ops K] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from distcache.protocol import encode_response
from distcache.protocol.decoder import ACCELERATED
from distcache.server import new_event_loop
from distcache.wire import Operation, Status

TICK = os.sysconf("SC_CLK_TCK")
SESSIONS = 512  # the server's capacity; dc_test's own 10 sessions fit


# -- CPU accounting from /proc --------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float, float, float] | None:
    """(ppid, own user+system seconds, reaped children's user+system seconds, own system
    seconds), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # Fields 4 (ppid), 14/15 (utime, stime), 16/17 (cutime, cstime) of proc(5), from field 3 on.
    own = _exec_runtime(pid)
    return (
        int(fields[1]),
        (int(fields[11]) + int(fields[12])) / TICK if own is None else own,
        (int(fields[13]) + int(fields[14])) / TICK,
        int(fields[12]) / TICK,
    )


def _exec_runtime(pid: int) -> float | None:
    """The CPU seconds of ``pid``'s threads to the nanosecond (``se.sum_exec_runtime`` of
    ``/proc/<pid>/task/<tid>/sched``, where the kernel has it), else None. ``stat`` counts in
    clock ticks (10 ms): a process that serves a quarter of a short run's requests would be
    measured to within a few microseconds per request only."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/sched", "rb") as f:
                for line in f:
                    if line.startswith(b"se.sum_exec_runtime"):
                        total += float(line.split(b":")[1]) / 1000  # milliseconds
                        break
                else:
                    return None
    except (OSError, ValueError):
        return None
    return total


def process_tree(root: int) -> dict[int, tuple[float, float, float]]:
    """CPU seconds (own, reaped children, own system) of ``root`` and every live descendant."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                stats[int(name)] = stat
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid][1:]
            todo.extend(p for p, s in stats.items() if s[0] == pid)
    return tree


def cpu_spent(before: dict, after: dict) -> tuple[list[float], float]:
    """CPU seconds each process spent between two snapshots, busiest first (processes that ended
    in between count through their parent's reaped-children time), and the system (kernel) part
    of the live processes' time together."""
    spent, system = [], 0.0
    for pid, (own, reaped, kernel) in after.items():
        own0, reaped0, kernel0 = before.get(pid, (0.0, 0.0, 0.0))
        spent.append(own - own0 + reaped - reaped0)
        system += kernel - kernel0
    return sorted(spent, reverse=True), system


# -- the floor: the least a Python program on the same event loop spends on this load ----------


class FloorCache(asyncio.Protocol):
    """A cache with no checks at all: frames are cut by their data_len, an ADD's id is taken from
    its prefix, and the four operations act on a dict. No validation, no limits, no direction or
    reassembly rules: what is left is the event loop's cost of a connection and its reads and
    writes, which any asyncio program pays. As a proxy's floor it answers locally, without the
    upstream hop a proxy adds."""

    cache: dict[bytes, bytes] = {}  # noqa: RUF012 - one cache for the process, as in a server

    def connection_made(self, transport):
        self.transport, self.buffer, self.parts = transport, bytearray(), []

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        pos, size, replies = 0, len(buffer), []
        while size - pos >= 14:
            end = pos + 14 + int.from_bytes(buffer[pos + 12 : pos + 14], "big")
            if end > size:
                break
            self.parts.append(bytes(buffer[pos + 14 : end]))
            if buffer[pos + 11]:
                uid = int.from_bytes(buffer[pos + 5 : pos + 9], "big")
                operation = Operation(buffer[pos + 10])
                payload = b"".join(self.parts)
                self.parts = []
                replies.append(encode_response(uid, operation, self.answer(operation, payload)))
            pos = end
        del buffer[:pos]
        if replies:
            self.transport.writelines(replies)

    def answer(self, operation: Operation, payload: bytes) -> bytes:
        cache = self.cache
        if operation is Operation.ADD:
            end = 8 + int.from_bytes(payload[4:8], "big")
            if payload[8:end] in cache:
                return bytes((Status.ADD_MATCHING_SESSION,))
            cache[payload[8:end]] = payload[end:]
            return bytes((Status.OK,))
        if operation is Operation.GET:
            return cache.get(payload, bytes((Status.NOTOK,)))
        if operation is Operation.REMOVE:
            return bytes((Status.OK if cache.pop(payload, None) is not None else Status.NOTOK,))
        return bytes((Status.OK if payload in cache else Status.NOTOK,))

    def eof_received(self):
        self.transport.close()


def serve_floor(address: str) -> None:
    async def serve():
        loop = asyncio.get_running_loop()
        if address.startswith("UNIX:"):
            server = await loop.create_unix_server(FloorCache, address[5:], backlog=511)
        else:
            _, host, port = address.split(":")
            server = await loop.create_server(FloorCache, host, int(port), backlog=511)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve())


# -- programs -------------------------------------------------------------------------------------


@dataclass
class Build:
    name: str
    server: list[str]
    proxy: list[str]
    workers: bool  # understands -workers
    env: dict | None = None  # the environment it runs in (None: ours)
    spread: bool = False  # N independent processes, the clients spread one per process

    def with_workers(self, argv: list[str], workers: str) -> list[str]:
        return argv if workers == "1" or not self.workers else [*argv, "-workers", workers]


def our_build() -> Build:
    python = [sys.executable, "-m"]
    return Build(
        "ours",
        [*python, "distcache.cli.dc_server"],
        [*python, "distcache.cli.dc_client"],
        workers=True,
    )


def pure_build() -> Build:
    """Ours with the compiled decoder turned off: what the C accelerator saves, side by side."""
    build = our_build()
    build.name, build.env = "pure", dict(os.environ, DISTCACHE_NO_EXTENSIONS="1")
    return build


def floor_build() -> Build:
    floor = [sys.executable, os.path.abspath(__file__), "--serve-floor"]
    return Build("floor", floor, floor, workers=False)


def legacy_build(directory: str) -> Build:
    return Build(
        "legacy",
        [os.path.join(directory, "dc_server")],
        [os.path.join(directory, "dc_client")],
        workers=False,
    )


def spread_build(build: Build, name: str) -> Build:
    """N independent single processes of ``build``, the clients spread over them (see the
    module doc)."""
    return Build(name, build.server, build.proxy, workers=False, env=build.env, spread=True)


def worker_count(workers: str) -> int:
    return os.cpu_count() or 1 if workers == "auto" else int(workers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_connectable(address: str, proc: subprocess.Popen, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        if address.startswith("UNIX:"):
            sock, target = socket.socket(socket.AF_UNIX), address[5:]
        else:
            _, host, port = address.split(":")
            sock, target = socket.socket(), (host, int(port))
        with sock:
            try:
                sock.connect(target)
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"{address} never accepted a connection")


@contextlib.contextmanager
def running(
    argv: list[str],
    address: str,
    env: dict | None = None,
    *,
    start: float = 15.0,
    stop: float = 10.0,
):
    """Run ``argv``; yields its Popen once ``address`` accepts connections, within ``start`` s."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_connectable(address, proc, start)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(stop)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoadFailed(RuntimeError):
    """A dc_test process of the load reported a failure."""

    def __init__(self, returncode: int, stderr: str) -> None:
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        self.summary = errors[0] if errors else f"exit status {returncode}"
        super().__init__(f"dc_test failed ({returncode}): {stderr[-300:]}")


def run_load(
    dc_test: list[str], addresses: list[str], clients: int, ops: int, persistent: bool
) -> float:
    """Run ``clients`` dc_test processes of ``ops`` operations each, client i against
    ``addresses[i % len(addresses)]``; returns the wall time."""
    argvs = [
        [*dc_test, "-connect", addresses[i % len(addresses)], "-sessions", "10", "-ops", str(ops)]
        + (["-persistent"] if persistent else [])
        for i in range(clients)
    ]
    start = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for argv in argvs
    ]
    failed = None
    for proc in procs:  # every one waited for: none is left running into the next round
        _, err = proc.communicate(timeout=600)
        if proc.returncode and failed is None:
            failed = LoadFailed(proc.returncode, err.decode())
    if failed is not None:
        raise failed
    return time.monotonic() - start


# -- one measurement ------------------------------------------------------------------------------


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)  # ops/s
    busiest: list[float] = field(default_factory=list)  # us per request
    total: list[float] = field(default_factory=list)
    system: list[float] = field(default_factory=list)  # us per request in the kernel, all processes
    processes: int = 0
    each: list[float] = field(default_factory=list)  # us per request of each process, last round


def process_trees(roots: list[subprocess.Popen]) -> dict[int, tuple[float, float, float]]:
    trees: dict[int, tuple[float, float, float]] = {}
    for root in roots:
        trees.update(process_tree(root.pid))
    return trees


def measure(targets: list[subprocess.Popen], load, requests: int, figures: Figures) -> None:
    load(200)  # warm-up: every worker started, imports done, sessions stored
    before = process_trees(targets)
    seconds = load(None)
    spent, system = cpu_spent(before, process_trees(targets))
    figures.rate.append(requests / seconds)
    figures.busiest.append(spent[0] / requests * 1e6)
    figures.total.append(sum(spent) / requests * 1e6)
    figures.system.append(system / requests * 1e6)
    figures.processes = len(spent)
    figures.each = [t / requests * 1e6 for t in spent]


def server_round(build, workers, dc_test, clients, ops, figures) -> None:
    copies = worker_count(workers) if build.spread else 1
    addresses = [f"IP:127.0.0.1:{free_port()}" for _ in range(copies)]
    with contextlib.ExitStack() as stack:
        servers = []
        for address in addresses:
            argv = build.with_workers(
                [*build.server, "-listen", address, "-sessions", str(SESSIONS)], workers
            )
            if build.name == "floor":
                argv = [*build.server, address]
            servers.append(stack.enter_context(running(argv, address, build.env)))

        def load(n):
            return run_load(dc_test, addresses, clients, n or ops, persistent=True)

        measure(servers, load, clients * ops, figures)


def proxy_round(build, workers, dc_test, upstream, clients, ops, figures, tmp) -> None:
    server_address = f"IP:127.0.0.1:{free_port()}"
    copies = worker_count(workers) if build.spread else 1
    locals_ = [f"UNIX:{tmp}/proxy-{build.name}-{time.monotonic_ns()}-{i}" for i in range(copies)]
    server_argv = [*upstream.server, "-listen", server_address, "-sessions", str(SESSIONS)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(server_argv, server_address, upstream.env))
        proxies = []
        for local in locals_:
            proxy_argv = build.with_workers(
                [*build.proxy, "-listen", local, "-server", server_address], workers
            )
            if build.name == "floor":  # answers itself: nothing upstream
                proxy_argv = [*build.proxy, local]
            proxies.append(stack.enter_context(running(proxy_argv, local, build.env)))

        def load(n):
            return run_load(dc_test, locals_, clients, n or ops, persistent=False)

        measure(proxies, load, clients * ops, figures)


def run_round(name: str, round_, tries: int = 3) -> None:
    """Run one round, again if its load fails (said on stderr): with the legacy server
    upstream, a proxy round now and then fails because that server mishandles pipelined
    requests that reach it in pieces or behind a large reply (it drops the link or answers with
    stale data). A failed round adds no figures."""
    for attempt in range(1, tries + 1):
        try:
            round_()
            return
        except LoadFailed as error:
            if attempt == tries:
                raise
            print(f"  ({name}: round run again: {error.summary})", file=sys.stderr, flush=True)


# -- report ---------------------------------------------------------------------------------------


def span(values: list[float], digits: int = 1) -> str:
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}..{high:.{digits}f}"


def ratio_span(ours: list[float], theirs: list[float], best) -> str:
    """The ratios of paired rounds (round i of ours ran next to round i of theirs), then the
    ratio of each side's best round: on a shared host other work only ever adds CPU time and
    takes throughput, so the best rounds are the least disturbed."""
    paired = span([a / b for a, b in zip(ours, theirs, strict=True)], 2)
    return f"{paired:>11} (best {best(ours) / best(theirs):.2f})"


def report(title: str, results: dict[str, Figures]) -> None:
    ours, legacy = results["ours"], results.get("legacy")
    others = [(name, results[name]) for name in ("pure", "floor") if name in results]
    spreads = [(name, results[name]) for name in ("spread", "ours-spread") if name in results]
    print(f"\n{title}  ({ours.processes} process(es) of ours measured)")
    if spreads:
        print(
            f"  spread: {spreads[0][1].processes} independent single processes (spread: legacy, "
            "ours-spread: ours), the clients spread over them; nothing shared"
        )
    rows = [("ops/s", "rate", 0), ("CPU us/req, busiest process", "busiest", 1)]
    rows.append(("CPU us/req, all processes", "total", 1))
    rows.append(("  of which in the kernel", "system", 1))
    for label, attr, digits in rows:
        line = f"  {label:<30} ours {span(getattr(ours, attr), digits):>14}"
        for name, other in others:
            line += f"   {name} {span(getattr(other, attr), digits):>14}"
        best = max if attr == "rate" else min
        if legacy is not None:
            line += f"   legacy {span(getattr(legacy, attr), digits):>14}"
            line += f"   ours/legacy {ratio_span(getattr(ours, attr), getattr(legacy, attr), best)}"
        for name, spread in spreads:
            line += f"   {name} {span(getattr(spread, attr), digits):>14}"
            if legacy is not None:
                line += f"   {name}/legacy " + ratio_span(
                    getattr(spread, attr), getattr(legacy, attr), best
                )
        print(line, flush=True)
    if ours.processes > 1:
        print("  ours, each process, last round:  " + ", ".join(f"{t:.1f}" for t in ours.each))
    for name, spread in spreads:
        print(f"  {name}, each process, last round:  " + ", ".join(f"{t:.1f}" for t in spread.each))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--legacy-bin", help="directory of the legacy dc_server, dc_client, dc_test"
    )
    parser.add_argument("--workers", default="1", help="comma-separated: 1,2,4,auto")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--loads", default="server,proxy")
    parser.add_argument("--ops", type=int, default=20000, help="operations per persistent client")
    parser.add_argument(
        "--proxy-ops", type=int, default=4000, help="operations per client, a connection each"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pure", action="store_true", help="also run ours without its C accelerator ('pure')"
    )
    parser.add_argument(
        "--floor", action="store_true", help="also run the floor: a check-free Python cache"
    )
    parser.add_argument(
        "--no-spread",
        action="store_true",
        help="leave out the legacy spread over N processes (run with --legacy-bin, workers > 1)",
    )
    parser.add_argument(
        "--spread-ours",
        action="store_true",
        help="also spread the clients over N single processes of ours (workers > 1)",
    )
    parser.add_argument("--serve-floor", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return

    builds = [our_build(), *([pure_build()] if args.pure else [])]
    builds += [floor_build()] if args.floor else []
    if args.legacy_bin:
        builds.append(legacy_build(args.legacy_bin))
        dc_test = [os.path.join(args.legacy_bin, "dc_test")]
    else:
        dc_test = [sys.executable, "-m", "distcache.cli.dc_test"]
    upstream = builds[-1] if args.legacy_bin else builds[0]
    load_avg = os.getloadavg()
    print(
        f"host: {os.uname().machine}, {os.cpu_count()} cores, load average {load_avg[0]:.2f} "
        f"at start; load: {'legacy' if args.legacy_bin else 'our'} dc_test; "
        f"proxy upstream: {upstream.name} dc_server; Python {platform.python_version()}, "
        f"compiled decoder {'on' if ACCELERATED else 'off (not built)'}"
    )
    tmp = tempfile.mkdtemp(prefix="dc-cpu-")
    try:
        for load in args.loads.split(","):
            for clients in map(int, args.clients.split(",")):
                for workers in args.workers.split(","):
                    spread = []
                    if worker_count(workers) > 1:
                        if args.legacy_bin and not args.no_spread:
                            spread.append(spread_build(builds[-1], "spread"))
                        if args.spread_ours:
                            spread.append(spread_build(builds[0], "ours-spread"))
                    results = {b.name: Figures() for b in [*builds, *spread]}
                    for _ in range(args.rounds):
                        for build in [*builds, *spread]:
                            if load == "server":
                                round_ = functools.partial(
                                    server_round,
                                    build, workers, dc_test, clients, args.ops,
                                    results[build.name],
                                )  # fmt: skip
                            else:
                                round_ = functools.partial(
                                    proxy_round,
                                    build, workers, dc_test, upstream, clients, args.proxy_ops,
                                    results[build.name], tmp,
                                )  # fmt: skip
                            run_round(build.name, round_)
                    what = (
                        "dc_server, persistent"
                        if load == "server"
                        else "dc_client (UNIX), a connection per operation"
                    )
                    report(f"{what}, {clients} client(s), ours with -workers {workers}", results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
