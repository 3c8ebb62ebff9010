"""Instructions per request of dc_server and dc_client, side by side with the legacy C programs.

CPU time per request (``cpu.py``) depends on the host and on everything else it runs: on a shared
machine the same program measures twice as costly from one minute to the next. The number of
instructions a process executes per request does not: this script runs each program under
``valgrind --tool=callgrind``, counts the instructions it executes in user space while a fixed
load runs (``callgrind_control`` zeroes the counters after a warm-up and dumps them at the end),
and divides by the requests. Kernel time (system calls, wake-ups) is not counted: ``cpu.py``
measures it.

Loads (``--loads``): ``server``, ``--clients`` persistent clients (default 1) against
``dc_server``, with ``-workers`` for each value of ``--workers`` other than 1 (every process of
the server is counted: supervisor, workers and any engine owner, each under its own callgrind,
whose figures are added up); ``proxy``, one client opening a connection per operation to
``dc_client`` on a UNIX socket, the proxy forwarding to a server that is not measured (the
legacy one when given, else ours). The load generator is ``dc_test`` (the legacy one when
given). ``--floor`` adds ``cpu.py``'s floor, a check-free cache in Python on the same event loop
(for the proxy load it answers locally, with no upstream hop). Needs valgrind.

    python benchmarks/instructions.py [--legacy-bin DIR] [--floor] [--loads server,proxy]
                                      [--ops K] [--proxy-ops K] [--workers 1,4] [--clients N]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpu import (  # the sibling benchmark's programs and load
    Build,
    LoadFailed,
    floor_build,
    free_port,
    legacy_build,
    our_build,
    run_load,
    running,
)

#: valgrind runs a program some 50 times slower: it starts slowly.
START_SECONDS = 120.0


def under_callgrind(
    argv: list[str], address: str, out: str, env: dict | None = None, stop: float = 30
):
    """Run ``argv`` under callgrind (slow to start and to stop); yields it once it serves.
    Each process writes to ``out.<pid>`` (a forked one too), its dumps to ``out.<pid>.<n>``."""
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no"]
    return running([*vg, *argv], address, env, start=START_SECONDS, stop=stop)


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def dumped_instructions(out: str) -> int:
    """The instructions counted in the newest dump of ``out`` (the part after zeroing)."""
    dumps = [name for name in glob.glob(out + ".*")]
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump to {out}.*")
    return _totals(max(dumps, key=os.path.getmtime))


def _totals(dump: str) -> int:
    with open(dump) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in the callgrind dump {dump}")


def count(target: subprocess.Popen, out: str, load, requests: int) -> float:
    load(200)  # warm-up: imports done, sessions stored, the code paths taken once
    callgrind_control("-z", target.pid)
    load(None)
    callgrind_control("-d", target.pid)
    deadline = time.monotonic() + 30
    while not glob.glob(out + ".*.*") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # (the dump is written by the target itself)
    return dumped_instructions(out) / requests


def server_count(build: Build, dc_test, ops: int, tmp: str, workers: str, clients: int) -> float:
    address = f"IP:127.0.0.1:{free_port()}"
    out = os.path.join(tmp, f"server-{build.name}-{workers}")
    argv = build.with_workers([*build.server, "-listen", address, "-sessions", "512"], workers)
    if build.name == "floor":
        argv = [*build.server, address]
    if workers != "1" and build.workers:
        return forked_count(argv, address, out, build.env, dc_test, ops, clients)
    with under_callgrind(argv, address, out, build.env) as server:
        return count(
            server,
            out,
            lambda n: run_load(dc_test, [address], clients, n or ops, persistent=True),
            clients * ops,
        )


def warm_up(load, tries: int = 5) -> None:
    """The warm-up load, run again while it fails: under valgrind a worker's first requests
    may wait longer than dc_test does (the relay's engine owner is reached on first use)."""
    for attempt in range(tries):
        try:
            load()
            return
        except LoadFailed:
            if attempt == tries - 1:
                raise


def forked_count(argv, address, out, env, dc_test, ops, clients) -> float:
    """Instructions per request of a server and every process it forks, all added up.

    callgrind_control reaches only the process valgrind started, not the workers it forks, so
    counters cannot be zeroed after a warm-up; instead the server runs twice, with a short and a
    long load, each process writing its totals as it exits (to out.<pid>), and the difference
    of the two runs is divided by the difference of their requests: start-up, warm-up and stop
    cancel out."""
    short = ops // 4
    totals = []
    for n in (short, ops):
        with under_callgrind(argv, address, out, env, stop=300):
            warm_up(lambda: run_load(dc_test, [address], clients, 200, persistent=True))
            run_load(dc_test, [address], clients, n, persistent=True)
        dumps = glob.glob(out + ".*")
        totals.append(sum(_totals(dump) for dump in dumps))
        for dump in dumps:
            os.unlink(dump)
    return (totals[1] - totals[0]) / (clients * (ops - short))


def proxy_count(build: Build, upstream: Build, dc_test, ops: int, tmp: str) -> float:
    server = f"IP:127.0.0.1:{free_port()}"
    local = f"UNIX:{tmp}/{build.name}.sock"
    out = os.path.join(tmp, f"proxy-{build.name}")
    argv = [*build.proxy, "-listen", local, "-server", server]
    if build.name == "floor":
        argv = [*build.proxy, local]
    with (
        running([*upstream.server, "-listen", server, "-sessions", "512"], server, upstream.env),
        under_callgrind(argv, local, out, build.env) as proxy,
    ):
        return count(
            proxy,
            out,
            lambda n: run_load(dc_test, [local], 1, n or ops, persistent=False),
            ops,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--legacy-bin", help="directory of the legacy dc_server, dc_client, dc_test"
    )
    parser.add_argument("--loads", default="server,proxy")
    parser.add_argument("--ops", type=int, default=10000, help="operations, persistent client")
    parser.add_argument("--proxy-ops", type=int, default=2000, help="operations, a connection each")
    parser.add_argument("--floor", action="store_true", help="also count the check-free floor")
    parser.add_argument("--workers", default="1", help="dc_server -workers values, e.g. 1,4")
    parser.add_argument("--clients", type=int, default=1, help="persistent clients (server)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind (callgrind and callgrind_control)")

    builds = [our_build(), *([floor_build()] if args.floor else [])]
    if args.legacy_bin:
        builds.append(legacy_build(args.legacy_bin))
        dc_test = [os.path.join(args.legacy_bin, "dc_test")]
    else:
        dc_test = [sys.executable, "-m", "distcache.cli.dc_test"]
    upstream = builds[-1] if args.legacy_bin else builds[0]
    print(f"instructions per request in user space (callgrind); load: {dc_test[0]}")
    tmp = tempfile.mkdtemp(prefix="dc-instructions-")
    try:
        runs = [
            (load, workers)
            for load in args.loads.split(",")
            for workers in (args.workers.split(",") if load == "server" else ["1"])
        ]
        for load, workers in runs:
            counts = {}
            for build in builds:
                if load == "server":
                    counts[build.name] = server_count(
                        build, dc_test, args.ops, tmp, workers, args.clients
                    )
                else:
                    counts[build.name] = proxy_count(build, upstream, dc_test, args.proxy_ops, tmp)
            what = (
                f"dc_server, {args.clients} persistent client(s)"
                + (f", -workers {workers}" if workers != "1" else "")
                if load == "server"
                else "dc_client (UNIX), a connection per operation"
            )
            line = f"{what:<46}" + "".join(
                f"  {name} {value:>9,.0f}" for name, value in counts.items()
            )
            if "legacy" in counts:
                line += f"   ours/legacy {counts['ours'] / counts['legacy']:.2f}"
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
