"""``-workers N``: real supervisors, real worker processes, real signals.

Which worker serves a connection is the kernel's choice; to address one worker on purpose, the
tests stop (SIGSTOP) every other one, so that only it can accept.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest
from proxyproc import DcClient
from serverproc import (
    DcServer,
    ask,
    connect_to,
    free_port,
    recv_exactly,
    run_dc_server,
    run_program,
)

from distcache.cache import shared
from distcache.client import Client
from distcache.protocol import have_request
from distcache.wire import Status
from distcache.workers import STOP_MARGIN, cpu_count

PYTHON = shlex.quote(sys.executable)
TIMEOUT = 10.0
#: The memory engine's owner process: there is one only when the workers cannot share the cache
#: (the extension is absent or disabled: DISTCACHE_NO_EXTENSIONS=1, inherited by the servers).
OWNERS = 0 if shared.available() else 1
#: The environment of a server whose workers relay to an owner even where they could share.
RELAYING = {"DISTCACHE_NO_EXTENSIONS": "1"}


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "the condition", log=None):
    """Poll ``predicate`` until it is true; on timeout, fail with ``log()`` (a program's stderr)
    when given, so that a failure in a clean CI run says what the program was doing."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            told = f":\n{log()}" if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}{told}")
        time.sleep(0.02)
    return value


def started(stderr: str) -> dict[str, int]:
    """The pid each supervised child was last started with, by label ("worker 2", ...)."""
    return {
        m[1]: int(m[2]) for m in re.finditer(r"INFO [\w.]+: (.+?) started \(pid (\d+)\)", stderr)
    }


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return {int(word) for word in listing.read().split()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has reached its stop (state T): SIGSTOP takes effect
    when each thread next runs, so right after ``kill`` a worker may still be scheduled and
    make a system call, an ``accept`` included."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True  # gone: it accepts nothing either
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state not in "TtZX":
            return False
    return True


@contextlib.contextmanager
def only(pids: list[int], keep: int) -> Iterator[None]:
    """Stop every process of ``pids`` but ``keep`` for the duration of the block.

    The block starts once each of them has actually stopped, and ends by checking that they
    stayed stopped: a connection made in the block can then only have been accepted by ``keep``
    (the kernel hands a queued connection to whichever process calls ``accept``; a stopped one
    calls nothing)."""
    others = [pid for pid in pids if pid != keep]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in others:
            wait_for(lambda pid=pid: stopped(pid), what=f"process {pid} to stop")
        yield
        assert all(stopped(pid) for pid in others), "a process meant to be stopped ran"
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def server_with_workers(
    *args: str, workers: int = 3, tmp_path=None, tcp: bool = False, relay: bool = False
) -> Iterator[DcServer]:
    """A dc_server with workers, on a UNIX socket unless ``tcp``: one listener shared by the
    workers, where a worker stopped by :func:`only` leaves the accepts to the others (after a
    short wait when it held fewer connections). ``relay``: the workers relay to an engine
    owner, extension or not."""
    listen = f"IP:127.0.0.1:{free_port()}"
    if not tcp:
        listen = f"UNIX:{tempfile.mkdtemp(prefix='dcw')}/scache"
    env = {"TMPDIR": str(tmp_path)} if tmp_path is not None else {}
    if relay:
        env.update(RELAYING)
    with _environment(env):
        server = DcServer(["-workers", str(workers), "-log-level", "INFO", *args], listen=listen)
    owners = 1 if relay else OWNERS
    try:
        wait_for(
            lambda: len(started(server.stderr)) == workers + owners,
            what="the workers",
            log=lambda: server.stderr,
        )
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def every_worker_serves(server, workers: int) -> None:
    """Wait for the start-up line of each worker (once it prints it, it takes its turn)."""
    wait_for(
        lambda: len(re.findall(r" serving on .*; worker \d+ of ", server.stderr)) == workers,
        what="every worker to serve",
        log=lambda: server.stderr,
    )


def shared_mappings(pid: int) -> list[str]:
    """The anonymous shared mappings of ``pid`` (the kernel names them /dev/zero)."""
    with open(f"/proc/{pid}/maps") as maps:
        return [line.split()[0] for line in maps if "/dev/zero" in line]


def workers_of(server) -> list[int]:
    return [pid for label, pid in started(server.stderr).items() if label.startswith("worker")]


@pytest.mark.parametrize("together", [True, False], ids=["all-at-once", "one-by-one"])
def test_persistent_connections_are_shared_out_evenly(together) -> None:
    """Eight clients that stay connected land two on each of four workers, whether they connect
    in one burst or one after the other: the busiest worker, not the average, caps what a
    server does with few persistent clients (such as proxies). Left to the kernel, a burst goes
    to the first worker to wake; with a listener per worker (SO_REUSEPORT), the kernel hashes
    the connections, and four workers get two each only about one time in forty."""
    with server_with_workers(workers=4, tcp=True) as server:
        workers = workers_of(server)
        port = int(server.listen.rsplit(":", 1)[1])
        # (a worker still starting takes no turn: nobody waits for it)
        every_worker_serves(server, 4)
        clients = []
        try:
            for number in range(8):
                clients.append(server.connect(timeout=TIMEOUT))
                if not together:
                    ask(clients[-1], have_request(number, b"a session"))
            if together:
                for number, client in enumerate(clients):
                    ask(client, have_request(number, b"a session"))  # served
            held = {pid: _clients_of(pid, port) for pid in workers}
            assert sorted(held.values()) == [2, 2, 2, 2], held
        finally:
            for client in clients:
                client.close()


def test_a_stopped_less_loaded_worker_delays_a_connection_only_briefly() -> None:
    """The worker holding fewer connections is stopped (SIGSTOP): the busier one leaves the new
    connection to it only for a moment, then serves it."""
    with server_with_workers(workers=2, tcp=True) as server:
        every_worker_serves(server, 2)
        workers = workers_of(server)
        port = int(server.listen.rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(server.connect(timeout=TIMEOUT))
            ask(first, have_request(1, b"a session"))
            (busier,) = [pid for pid in workers if _clients_of(pid, port) == 1]
            with only(workers, busier):
                second = stack.enter_context(server.connect(timeout=TIMEOUT))
                started_at = time.monotonic()
                ask(second, have_request(2, b"a session"))
                assert time.monotonic() - started_at < 2.0
                assert _clients_of(busier, port) == 2


def test_progress_counts_the_requests_of_every_worker() -> None:
    """-progress is printed by the first worker, and counts what the others answered too."""
    with server_with_workers("-progress", "1000", workers=2) as server:
        every_worker_serves(server, 2)
        workers = workers_of(server)
        with only(workers, workers[1]), Client(server.listen, timeout=TIMEOUT) as cache:
            for number in range(20):
                assert cache.add(b"session %d" % number, b"data", 60_000)
        line = wait_for(
            lambda: re.search(
                r"Info, total operations = +(\d+) .*total sessions = +20 ", server.stderr
            ),
            what="a progress line",
        )
        assert int(line[1]) == 20


# -- one cache, whichever worker serves --------------------------------------------------------


def test_every_server_worker_sees_one_cache() -> None:
    with server_with_workers(workers=3) as server:
        workers = workers_of(server)
        assert len(workers) == 3
        first, second, third = workers
        with only(workers, first), Client(server.listen, timeout=TIMEOUT) as cache:
            assert cache.add(b"shared", b"stored by the first worker", 60_000)
        for pid in workers:
            with only(workers, pid), Client(server.listen, timeout=TIMEOUT) as cache:
                assert cache.get(b"shared") == b"stored by the first worker"
                assert not cache.add(b"shared", b"a second copy", 60_000)  # one cache: duplicate
        with only(workers, second), Client(server.listen, timeout=TIMEOUT) as cache:
            assert cache.remove(b"shared")
        with only(workers, third), Client(server.listen, timeout=TIMEOUT) as cache:
            assert not cache.have(b"shared")


def test_capacity_and_eviction_are_the_one_cache_s(tmp_path) -> None:
    """-sessions bounds all workers together: the owner evicts, as a single process does."""
    with server_with_workers("-sessions", "64", workers=2) as server:
        workers = workers_of(server)
        for index in range(80):
            with only(workers, workers[index % 2]), Client(server.listen) as cache:
                assert cache.add(b"id-%d" % index, b"s", 60_000 + index)
        with Client(server.listen) as cache:
            present = [index for index in range(80) if cache.have(b"id-%d" % index)]
        assert present == list(range(16, 80))  # the soonest-expiring ones were evicted


def test_a_refused_add_is_answered_by_the_worker_alone() -> None:
    """The worker validates: with the owner stopped, a bad ADD still gets its refusal."""
    with server_with_workers(workers=2, relay=True) as server:
        owner = started(server.stderr)["engine owner"]
        payload = (0xFFFFFFFF).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"idsession"
        header = b"\x00\x11\x00\x00\x00" + (7).to_bytes(4, "big") + b"\x00\x00\x01"
        with only([owner, 0], 0), server.connect() as sock:
            sock.sendall(header + len(payload).to_bytes(2, "big") + payload)
            reply = recv_exactly(sock, 15)
        assert reply[5:9] == (7).to_bytes(4, "big")  # its uid
        assert reply[-1] == Status.ADD_TIMEOUT_RANGE


# -- supervision ------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_logged_and_the_cache_survives() -> None:
    with server_with_workers(workers=2) as server:
        with Client(server.listen) as cache:
            assert cache.add(b"kept", b"in the owner", 60_000)
        victim = workers_of(server)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in workers_of(server), what="a replacement")
        assert re.search(
            rf"worker 1 \(pid {victim}\) was killed by signal 9 \(SIGKILL\); starting a new one",
            server.stderr,
        )
        assert children(server.pid) == set(started(server.stderr).values())
        for pid in workers_of(server):
            with only(workers_of(server), pid), Client(server.listen) as cache:
                assert cache.get(b"kept") == b"in the owner"


def test_a_killed_engine_owner_is_replaced_and_the_workers_reconnect() -> None:
    with server_with_workers(workers=2, relay=True) as server:
        with Client(server.listen) as cache:
            assert cache.add(b"lost", b"with the owner", 60_000)
        owner = started(server.stderr)["engine owner"]
        os.kill(owner, signal.SIGKILL)
        wait_for(lambda: started(server.stderr)["engine owner"] != owner, what="a new owner")
        assert f"engine owner (pid {owner}) was killed by signal 9" in server.stderr

        def serves_again() -> bool:
            with Client(server.listen) as cache:
                return cache.add(b"new", b"session", 60_000)

        wait_for(serves_again, what="the workers to reach the new owner")
        with Client(server.listen) as cache:
            assert cache.get(b"lost") is None  # memory died with its owner
            assert cache.get(b"new") == b"session"


def test_a_crash_loop_backs_off(tmp_path) -> None:
    """A child that dies at start is replaced after 0.1 s, 0.2 s, 0.4 s...: no busy loop."""
    script = textwrap.dedent(
        """
        import logging, sys
        from distcache.workers import Supervisor, WorkerSpec
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(created)f %(message)s")
        sys.exit(Supervisor([WorkerSpec("worker", lambda: 3)]).run())
        """
    )
    log = tmp_path / "stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", script], stderr=stderr)
    pattern = r"(\S+) worker \(pid \d+\) exited with status 3; starting a new one in (\S+) s"
    try:
        # Waited for, not slept: a loaded host may take seconds to start the interpreter.
        wait_for(lambda: len(re.findall(pattern, log.read_text())) >= 5, what="five crashes")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    crashes = [(float(when), float(delay)) for when, delay in re.findall(pattern, log.read_text())]
    assert [delay for _, delay in crashes[:5]] == [0.1, 0.2, 0.4, 0.8, 1.6]
    for (died, delay), (next_died, _) in itertools.pairwise(crashes):
        assert next_died - died >= delay  # each replacement waited its delay: no busy loop


def test_a_stop_signal_just_after_the_fork_reaches_the_program(tmp_path) -> None:
    """A SIGTERM that reaches a child before its program runs is the program's, not fatal.

    The signal is sent from the child's at-fork hook, while the supervisor still blocks it: it
    is delivered when the child unblocks its signals, before the worker's own code has run.
    """
    script = textwrap.dedent(
        """
        import logging, os, signal, sys
        from distcache.workers import Supervisor, WorkerSpec
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        early = []
        signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
        os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM))

        def worker():
            print("stopped early" if early else "not told", flush=True)
            return 0

        sys.exit(Supervisor([WorkerSpec("worker", worker)]).run())
        """
    )
    log = tmp_path / "stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        ended = r"worker \(pid \d+\) (exited|was killed)"
        wait_for(lambda: re.search(ended, log.read_text()), what="the first worker to end")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
    assert "killed by signal" not in log.read_text()
    assert output.splitlines()[0] == "stopped early"


def test_a_stop_signal_while_a_worker_defers_stops_is_not_lost() -> None:
    """A worker re-installs its early-stop handlers as it starts, while its supervisor may
    already forward a stop (SIGUSR1 under -killable). Here SIGUSR1 arrives right after the first
    change of its handler: it must be recorded, not pass through an "ignore" (it once did, and
    the worker then served on until its supervisor killed it)."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from distcache.server import run

        real_signal, sent = signal.signal, []

        def signal_then_stop(signum, handler):
            previous = real_signal(signum, handler)
            if signum == signal.SIGUSR1 and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGUSR1)  # the stop, at the worst moment
            return previous

        real_signal(signal.SIGUSR1, lambda *_: None)  # what the worker inherits
        signal.signal = signal_then_stop
        run.defer_stop_requests(killable=True)
        signal.signal = real_signal
        print("recorded" if run.stop_requested_early() else "lost")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.stdout.strip() == "recorded", done.stderr


@pytest.mark.parametrize("relay", [False, True], ids=["default", "relay"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_every_process(tmp_path, signum, relay) -> None:
    pidfile = tmp_path / "dc_server.pid"
    args = ("-pidfile", str(pidfile))
    with server_with_workers(*args, workers=2, tmp_path=tmp_path, relay=relay) as server:
        assert pidfile.read_text() == str(server.pid)  # the parent's
        processes = children(server.pid)
        owners = 1 if relay else OWNERS
        assert len(processes) == 2 + owners
        # The owner's private directory, only where there is an owner.
        assert len(list(tmp_path.glob("distcache-*"))) == owners
        server.signal(signum)
        assert server.wait() == 0
        assert not any(alive(pid) for pid in processes)
        assert not list(tmp_path.glob("distcache-*"))
        assert not pidfile.exists()  # removed by the parent as it exits
        assert f"received {signal.Signals(signum).name}: stopping the workers" in server.stderr


def test_workers_auto_is_one_per_cpu() -> None:
    listen = f"IP:127.0.0.1:{free_port()}"
    server = DcServer(["-workers", "auto", "-log-level", "INFO"], listen=listen)
    try:
        wait_for(lambda: len(started(server.stderr)) == cpu_count() + OWNERS, what="the workers")
        assert len(workers_of(server)) == cpu_count()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value", ["0", "-1", "two", "257", "1.5", ""])
@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_bad_workers_values_are_refused(program, value) -> None:
    args = ["-listen", "IP:127.0.0.1:1", "-server", "IP:127.0.0.1:2"]
    if program == "dc_server":
        args = ["-listen", "IP:127.0.0.1:1"]
    done = run_program(program, *args, "-workers", value)
    assert done.returncode == 1
    # An extension flag: never the legacy dc_server's doubled dash.
    assert done.stderr.splitlines()[0] == "Error, -workers given an invalid argument"
    assert "expected 'auto' or a decimal number in 1..256" in done.stderr.splitlines()[1]


def test_daemon_with_workers(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    listen = f"IP:127.0.0.1:{free_port()}"
    done = run_dc_server("-listen", listen, "-daemon", "-pidfile", str(pidfile), "-workers", "2")
    assert done.returncode == 0, done.stderr
    parent = int(wait_for(pidfile.read_text, what="the pid file"))
    try:
        processes = wait_for(lambda: len(children(parent)) == 2 + OWNERS and children(parent))
        with Client(listen) as cache:
            assert cache.add(b"daemon", b"ok", 60_000)
            assert cache.get(b"daemon") == b"ok"
    finally:
        os.kill(parent, signal.SIGTERM)
    wait_for(lambda: not alive(parent), what="the daemon to stop")
    assert not any(alive(pid) for pid in processes)


# -- dc_client --------------------------------------------------------------------------------


def test_dc_client_workers_supervised_and_stopped(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    path = str(tmp_path / "scache")
    upstream = DcServer([], listen=f"IP:127.0.0.1:{free_port()}")
    try:
        proxy = DcClient(
            path, upstream.listen, "-workers", "2", "-pidfile", str(pidfile), "-log-level", "INFO"
        )
        wait_for(lambda: len(started(proxy.stderr)) == 2, what="the workers")
        assert pidfile.read_text() == str(proxy.process.pid)
        workers = workers_of(proxy)
        # Nothing of the server's shared cache in the proxy's processes.
        assert not any(shared_mappings(pid) for pid in [proxy.process.pid, *workers])
        for pid in workers:  # each worker has its own upstream link to the one server
            with only(workers, pid), Client(f"UNIX:{path}") as cache:
                assert cache.add(b"via-%d" % pid, b"s", 60_000)
        with Client(upstream.listen) as cache:
            assert all(cache.have(b"via-%d" % pid) for pid in workers)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: workers[0] not in workers_of(proxy), what="a replacement")
        assert f"worker 1 (pid {workers[0]}) was killed by signal 9 (SIGKILL)" in proxy.stderr
        assert os.path.exists(path)  # a dying worker does not take the socket file
        with Client(f"UNIX:{path}") as cache:
            assert cache.get(b"via-%d" % workers[1]) == b"s"
        processes = children(proxy.process.pid)
        proxy.process.send_signal(signal.SIGINT)
        assert proxy.process.wait(TIMEOUT) == 0
        assert not any(alive(pid) for pid in processes)
        assert not os.path.exists(path)  # the parent removed it
    finally:
        upstream.stop()


def test_dc_client_workers_auto_is_one_per_cpu(tmp_path) -> None:
    path = str(tmp_path / "scache")
    proxy = DcClient(path, "IP:127.0.0.1:1", "-workers", "auto", "-log-level", "INFO")
    try:
        wait_for(lambda: len(started(proxy.stderr)) == cpu_count(), what="the workers")
        assert len(children(proxy.process.pid)) == cpu_count()
    finally:
        assert proxy.stop() == 0


# -- behaviour identical to one process: the whole conformance suite ---------------------------


def test_dc_server_workers_4_passes_the_whole_suite_and_every_vector(tmp_path) -> None:
    command = f"{PYTHON} -m distcache.cli.dc_server -listen {{listen}} -sessions {{sessions}}"
    report = tmp_path / "report.json"
    json_output = ("--format", "json", "--output", str(report))
    done = _conformance("--server-cmd", f"{command} -workers 4", "--profile", "all", *json_output)
    summary = re.search(r"^summary: .*$", done.stdout, re.MULTILINE)[0]
    assert done.returncode == 0 and "FAIL" not in summary, done.stdout[-3000:]
    # Every server vector is in that run (the proxy ones need --proxy-cmd) and passed.
    results = json.loads(report.read_text())["results"]
    vectors = [r["grade"] for r in results if r["id"].startswith("vector/server-")]
    assert len(vectors) > 150 and set(vectors) == {"PASS"}, vectors


def test_dc_client_workers_4_passes_the_proxy_suite() -> None:
    command = f"{PYTHON} -m distcache.cli.dc_client -listen {{listen}} -server {{upstream}}"
    command += " -retry {retry_ms} -idle {idle_ms} -maxinflight {max_in_flight} -workers 4"
    done = _conformance("--proxy-cmd", command, "--profile", "all")
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0 and "FAIL" not in summary, done.stdout[-3000:]
    assert "UNSUPPORTED" not in summary


def _conformance(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distcache", "conformance", "--jobs", "4", "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_workers_stop_when_their_supervisor_is_killed(tmp_path) -> None:
    """No worker serves unsupervised: the kernel tells each one when the supervisor dies; and
    the orphaned owner removes the private directory that the supervisor could not."""
    with server_with_workers(workers=2, tmp_path=tmp_path, relay=True) as server:
        processes = children(server.pid)
        assert list(tmp_path.glob("distcache-*"))
        server.signal(signal.SIGKILL)
        server.wait()
        wait_for(lambda: not any(alive(pid) for pid in processes), what="the orphans to stop")
        assert not list(tmp_path.glob("distcache-*"))


def test_each_worker_s_startup_line_names_the_engine() -> None:
    """A worker's engine is the owner's memory cache, named as one process names its own."""
    with server_with_workers("-sessions", "100", workers=2, relay=True) as server:
        wait_for(lambda: server.stderr.count(" serving on ") == 3, what="the start-up lines")
        engines = re.findall(r" serving on (\S+); engine (.+?); at most", server.stderr)
        owner = [engine for listen, engine in engines if listen.endswith("/engine")]
        assert owner == ["memory: (100 sessions)"]
        path = next(listen for listen, _ in engines if listen.endswith("/engine"))
        workers = [engine for listen, engine in engines if listen == server.listen]
        assert workers == [f"memory: (100 sessions, held by the engine owner on {path})"] * 2


@pytest.mark.skipif(not shared.available(), reason="needs the shared memory cache's extension")
def test_workers_share_the_cache_in_memory_without_an_owner(tmp_path) -> None:
    """With the extension the workers are the only children, each answering from one cache
    mapped before the fork; a worker killed outright takes nothing with it."""
    with server_with_workers("-sessions", "100", workers=2, tmp_path=tmp_path) as server:
        wait_for(lambda: server.stderr.count(" serving on ") == 2, what="the start-up lines")
        engines = re.findall(r" serving on \S+; engine (.+?); at most", server.stderr)
        assert engines == ["memory: (100 sessions, in memory shared by the workers)"] * 2
        assert "engine owner" not in server.stderr
        assert not list(tmp_path.glob("distcache-*"))  # no owner, no private directory
        workers = workers_of(server)
        assert children(server.pid) == set(workers)
        # Made by the supervisor, kept by every worker: the cache and the workers' accept counts.
        mapped = shared_mappings(server.pid)
        assert len(mapped) == 2 and all(shared_mappings(pid) == mapped for pid in workers)
        with only(workers, workers[0]), Client(server.listen) as cache:
            assert cache.add(b"outlives", b"its worker", 60_000)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: workers[0] not in workers_of(server), what="a replacement")
        for pid in workers_of(server):
            with only(workers_of(server), pid), Client(server.listen) as cache:
                assert cache.get(b"outlives") == b"its worker"


@pytest.mark.skipif(not shared.available(), reason="needs the shared memory cache's extension")
def test_no_room_for_the_shared_cache_falls_back_to_the_relay(tmp_path) -> None:
    """A shared cache of 60000 sessions maps 2 GB of address space (reserving none); under a
    smaller address-space limit the server says so and its workers relay to an owner."""
    listen = f"UNIX:{tmp_path}/scache"
    argv = [sys.executable, "-m", "distcache.cli.dc_server", "-listen", listen, "-workers", "2"]
    argv += ["-sessions", "60000", "-log-level", "INFO"]
    limit = 1536 * 2**20
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            argv,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
        )
    try:
        log = tmp_path / "stderr"
        wait_for(lambda: "engine owner" in log.read_text(), what="an engine owner")
        assert "cannot map the cache in shared memory" in log.read_text()
        wait_for(lambda: len(started(log.read_text())) == 3, what="the workers")

        def serves() -> bool:
            with contextlib.suppress(OSError), Client(listen) as cache:
                return cache.add(b"relayed", b"all the same", 60_000)
            return False

        wait_for(serves, what="the server to answer")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0


def _signal_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        fields = [line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line]
    return {name: int(value, 16) for name, value in fields if name in ("SigIgn", "SigCgt")}


def _survives(pid: int, signum: int) -> bool:
    """Whether ``pid`` ignores or catches ``signum`` (whose default action would kill it)."""
    masks = _signal_masks(pid)
    return bool((masks["SigIgn"] | masks["SigCgt"]) & 1 << (signum - 1))


def _handles_sighup(pid: int) -> bool:
    return _survives(pid, signal.SIGHUP)


@pytest.mark.parametrize("log_file", [False, True], ids=["stderr", "log-file"])
@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_sighup_never_stops_the_workers_or_their_supervisor(tmp_path, program, log_file) -> None:
    """Without TLS files (with or without a log file to reopen) SIGHUP has nothing to re-read:
    the supervisor and every child go on serving, and the stop that follows leaves nothing
    behind (a SIGHUP that killed the supervisor left the owner's private directory)."""
    log = tmp_path / "dc.log"
    args = ["-workers", "2", "-log-level", "INFO", *(["-log", str(log)] if log_file else [])]
    listen = f"UNIX:{tmp_path}/scache"
    upstream = None
    with _environment({"TMPDIR": str(tmp_path)}):
        if program == "dc_server":
            running = DcServer(args, listen=listen)
            pid, processes_expected = running.pid, 2 + OWNERS
        else:
            upstream = DcServer([], listen=f"IP:127.0.0.1:{free_port()}")
            running = DcClient(str(tmp_path / "scache"), upstream.listen, *args)
            pid, processes_expected = running.process.pid, 2
    output = log.read_text if log_file else lambda: running.stderr
    try:
        wait_for(lambda: len(started(output())) == processes_expected, what="the children")
        processes = children(pid)
        wait_for(lambda: all(map(_handles_sighup, processes)), what="every child to handle it")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "received SIGHUP: passed on to the workers" in output(), what="SIGHUP")
        workers = [pid for label, pid in started(output()).items() if label.startswith("worker")]
        for worker in workers:
            with only(workers, worker), Client(listen) as cache:
                assert not cache.have(b"after SIGHUP")
        assert children(pid) == processes
        assert "starting a new one" not in output()
    finally:
        assert running.stop() == 0
        if upstream is not None:
            upstream.stop()
    assert not list(tmp_path.glob("distcache-*"))


def test_a_stuck_worker_is_killed_soon_after_the_grace_period() -> None:
    """The supervisor waits -grace for the drain, then a short margin, then kills: not a fixed
    30 s (a SIGSTOPped worker cannot drain)."""
    with server_with_workers("-grace", "1", workers=2) as server:
        stuck = workers_of(server)[0]
        os.kill(stuck, signal.SIGSTOP)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        assert time.monotonic() - signalled >= 1 + STOP_MARGIN  # the drain is never cut short
        assert f"worker 1 (pid {stuck}) did not stop: killed" in server.stderr


@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_a_second_stop_signal_stops_the_workers_at_once(tmp_path, program) -> None:
    """As with one process: the first SIGTERM lets a connection holding half a request keep its
    worker draining for -grace (60 s); a second one to the supervisor is passed on, and the
    workers drop their connections and exit at once."""
    listen = f"UNIX:{tmp_path / 'scache'}"
    args = ["-workers", "2", "-grace", "60", "-log-level", "INFO"]
    upstream = running = None
    try:
        if program == "dc_server":
            running = DcServer(args, listen=listen)
        else:
            upstream = DcServer([], listen=f"IP:127.0.0.1:{free_port()}")
            running = DcClient(listen[5:], upstream.listen, *args)
        process = running.process
        wait_for(lambda: len(workers_of(running)) == 2, what="the workers")
        processes = children(process.pid)
        busy = connect_to(listen)
        assert ask(busy, have_request(1, b"busy")) == b"\x01"  # accepted by a worker
        busy.sendall(have_request(2, b"half")[:5])  # the drain waits for the rest
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM: stopping the workers" in running.stderr)
        busy.settimeout(1.0)
        with pytest.raises(TimeoutError):
            busy.recv(1)  # still held: the first signal leaves the drain its grace
        process.send_signal(signal.SIGTERM)
        busy.settimeout(30.0)  # far less than the grace
        with contextlib.suppress(ConnectionResetError):
            assert busy.recv(1) == b""
        assert process.wait(30.0) == 0
        assert "received SIGTERM while stopping: the workers stop at once" in running.stderr
        assert not any(alive(pid) for pid in processes)
    finally:
        for each in (running, upstream):
            if each is not None:
                each.stop()


def test_sigusr1_stops_all_only_with_killable(tmp_path) -> None:
    with server_with_workers(workers=2) as server:
        processes = children(server.pid)
        # Ignored, or caught by a server loop that ignores it, in every process (their default
        # action would kill): checked before the signal, as a later check could come too soon.
        for pid in [server.pid, *processes]:
            wait_for(lambda pid=pid: _survives(pid, signal.SIGUSR1), what="SIGUSR1 handled")
        server.signal(signal.SIGUSR1)
        assert all(alive(pid) for pid in [server.pid, *processes])
        with Client(server.listen) as cache:
            assert cache.add(b"still", b"serving", 60_000)
    with server_with_workers("-killable", workers=2) as server:
        processes = children(server.pid)
        server.signal(signal.SIGUSR1)
        try:
            assert server.wait() == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(server.stderr) from None
        assert not any(alive(pid) for pid in processes)


def test_one_worker_is_one_process_as_before() -> None:
    listen = f"IP:127.0.0.1:{free_port()}"
    server = DcServer(["-workers", "1", "-log-level", "INFO"], listen=listen)
    try:
        with Client(listen) as cache:
            assert cache.add(b"single", b"process", 60_000)
        assert children(server.pid) == set()
        assert "started (pid" not in server.stderr
    finally:
        assert server.stop() == 0


def test_ctrl_c_stops_the_workers_before_the_engine_owner() -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) still stops the owner last."""
    listen = f"IP:127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "distcache.cli.dc_server", "-listen", listen]
    process = subprocess.Popen(
        [*argv, "-workers", "2", "-log-level", "INFO"],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, **RELAYING},
    )
    try:
        wait_for(lambda: len(children(process.pid)) == 3, what="the workers")
        with Client(listen) as cache:
            assert cache.add(b"before", b"ctrl-c", 60_000)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    stopped = re.findall(r"INFO [\w.]+: (.+?) \(pid \d+\) stopped: exited with status 0", stderr)
    assert stopped[-1] == "engine owner" and sorted(stopped[:-1]) == ["worker 1", "worker 2"]


def _clients_of(pid: int, port: int) -> int:
    """The established TCP connections to ``port`` that process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def test_tcp_connections_are_spread_over_the_workers() -> None:
    """The workers take connections in turn: 20 persistent clients that wait in the backlog do
    not all land on the worker that happens to accept first."""
    with server_with_workers(workers=2, tcp=True) as server:
        workers = workers_of(server)
        port = int(server.listen.rsplit(":", 1)[1])
        with only(workers, 0):  # all 20 wait in the backlog, as a burst of clients would
            clients = [Client(server.listen) for _ in range(20)]  # connected by the kernel
        try:
            for cache in clients:
                assert not cache.have(b"spread")  # accepted and served
            gained = {pid: _clients_of(pid, port) for pid in workers}
            assert clients[0].add(b"spread", b"one cache", 60_000)
            for cache in clients[1:]:  # on both workers, as counted below
                assert cache.get(b"spread") == b"one cache"
        finally:
            for cache in clients:
                cache.close()
        assert sum(gained.values()) == 20
        assert all(gained.values()), gained
