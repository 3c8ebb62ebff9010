"""The log set-up of the long-running programs: destinations, the start-up line, the rate bound.

The bound is checked twice: on the handler itself with a clock the test moves, and against a real
dc_server under a storm of malformed connections.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from namespaces import needs_namespaces, run_in_namespace
from serverproc import dc_server, free_port, run_dc_server, run_program

from distcache.monitoring.ratelimit import (
    CUT_MARK,
    KIND_LINES_PER_WINDOW,
    MAX_BYTES_PER_WINDOW,
    MAX_LINE_BYTES,
    MAX_LINES_PER_WINDOW,
    SUMMARY_KINDS_PER_WINDOW,
    TOTAL_LINES_PER_WINDOW,
    WINDOW_SECONDS,
    BoundedFormatter,
    RateLimitedHandler,
)

# -- the handler, with a clock the test moves ----------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def limited():
    clock, lines = _Clock(), _Lines()
    lines.setFormatter(BoundedFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s")))
    handler = RateLimitedHandler(lines, clock=clock)
    logger = logging.getLogger(f"test.ratelimit.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield clock, lines, logger, handler
    logger.removeHandler(handler)
    handler.close()


def test_a_storm_of_one_kind_writes_the_burst_then_one_summary(limited):
    clock, lines, logger, _ = limited
    for peer in range(5000):
        logger.warning("%s: protocol error %s", f"10.0.0.{peer % 250}:{peer}", "bad_version")
    assert len(lines.lines) == KIND_LINES_PER_WINDOW
    clock.now += WINDOW_SECONDS
    logger.warning("%s: protocol error %s", "10.9.9.9:1", "bad_version")
    summary = lines.lines[KIND_LINES_PER_WINDOW]
    assert summary.startswith(f"WARNING {logger.name}: {5000 - KIND_LINES_PER_WINDOW} more like")
    assert "in the last 10 s (last: 10.0.0.249:4999: protocol error bad_version)" in summary
    assert lines.lines[-1].endswith("10.9.9.9:1: protocol error bad_version")  # a new window


def test_kinds_are_counted_apart_and_the_total_is_bounded(limited):
    clock, lines, logger, handler = limited
    for n in range(40):  # 40 kinds of 20 records each: 800 records
        for _ in range(20):
            logger.info(f"kind {n}: %s", "x")
    assert len(lines.lines) == TOTAL_LINES_PER_WINDOW
    clock.now += WINDOW_SECONDS
    handler.flush()
    summaries = lines.lines[TOTAL_LINES_PER_WINDOW:]
    assert len(summaries) == SUMMARY_KINDS_PER_WINDOW + 1
    assert summaries[-1].endswith(
        f"{800 - TOTAL_LINES_PER_WINDOW - sum(int(s.split()[2]) for s in summaries[:-1])}"
        f" more lines of {40 - SUMMARY_KINDS_PER_WINDOW} other kinds in the last 10 s"
    )
    assert len(lines.lines) <= MAX_LINES_PER_WINDOW


def test_the_summary_keeps_the_highest_level_held_back(limited):
    clock, lines, logger, handler = limited
    for n in range(KIND_LINES_PER_WINDOW + 2):
        (logger.error if n == KIND_LINES_PER_WINDOW else logger.info)("event %d", n)
    clock.now += WINDOW_SECONDS
    handler.flush()
    assert lines.lines[-1].startswith("ERROR ") and "2 more like this" in lines.lines[-1]


def test_flushing_writes_the_summaries_but_never_raises_the_bound(limited):
    _, lines, logger, handler = limited
    for _ in range(3):
        for n in range(20):
            logger.warning("again %d", n)
        handler.flush()
    written = [line for line in lines.lines if "more like this" not in line]
    assert len(written) == KIND_LINES_PER_WINDOW
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines.lines if "more" in line] == [
        "10 more like this in the last 0 s",
        "20 more like this in the last 0 s",
        "20 more like this in the last 0 s",
    ]


def test_a_quiet_log_is_untouched(limited):
    clock, lines, logger, handler = limited
    for n in range(30):
        logger.info("tick %d", n)
        clock.now += 1.0
    handler.flush()
    assert lines.lines == [f"INFO {logger.name}: tick {n}" for n in range(30)]


def test_long_lines_are_cut_to_the_byte_bound(limited):
    _, lines, logger, _ = limited
    logger.warning("peer sent %s", "é" * 5000)
    size = len(lines.lines[0].encode())  # the newline is the handler's: one byte left for it
    assert MAX_LINE_BYTES - 1 - 2 <= size <= MAX_LINE_BYTES - 1
    assert lines.lines[0].endswith(CUT_MARK)


def test_the_summary_comes_when_the_window_ends_even_if_nothing_follows():
    lines = _Lines()
    handler = RateLimitedHandler(lines)
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "same %s", ("x",), None)
    started = time.monotonic()
    for _ in range(KIND_LINES_PER_WINDOW + 5):
        handler.handle(record)
    deadline = started + WINDOW_SECONDS + 5
    while len(lines.lines) == KIND_LINES_PER_WINDOW and time.monotonic() < deadline:
        time.sleep(0.1)
    handler.close()
    assert len(lines.lines) == KIND_LINES_PER_WINDOW + 1
    assert "5 more like this" in lines.lines[-1]
    assert time.monotonic() - started >= WINDOW_SECONDS - 0.5


# -- destinations, against real processes --------------------------------------------------------


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _send_garbage(listen: str) -> None:
    host, port = listen.removeprefix("IP:").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.recv(1)


def test_a_daemon_logs_to_its_file_and_reopens_it_on_sighup(tmp_path, monkeypatch):
    log = tmp_path / "dc.log"
    listen = f"IP:127.0.0.1:{free_port()}"
    pidfile = tmp_path / "dc.pid"
    monkeypatch.chdir(tmp_path)  # a relative -log is taken from the starting directory
    result = run_dc_server("-listen", listen, "-daemon", "-pidfile", str(pidfile), "-log", "dc.log")
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        _wait_for(lambda: log.exists() and "serving on" in log.read_text())
        assert f"dc_server[{pid}] INFO distcache.server: dc_server " in log.read_text()
        _send_garbage(listen)
        _wait_for(lambda: "protocol error bad_version" in log.read_text())
        # logrotate: move the file, then SIGHUP; the next line goes to a new file at the path.
        rotated = tmp_path / "dc.log.1"
        log.rename(rotated)
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)
        _send_garbage(listen)
        _wait_for(lambda: log.exists() and "protocol error bad_version" in log.read_text())
        assert rotated.read_text().count("bad_version") == 1
    finally:
        os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not os.path.exists(f"/proc/{pid}"))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_a_log_file_the_new_user_cannot_reopen_is_kept_on_sighup(tmp_path):
    # Opened as root before the drop to nobody, who may neither open it nor create one in its
    # directory: SIGHUP (and a rotation) must not kill the server, and the log goes on.
    log = tmp_path / "dc.log"
    listen = f"IP:127.0.0.1:{free_port()}"
    pidfile = tmp_path / "dc.pid"
    result = run_dc_server("-listen", listen, "-daemon", "-pidfile", str(pidfile),
                           "-user", "nobody", "-log", str(log))  # fmt: skip
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        _wait_for(lambda: log.exists() and "serving on" in log.read_text())
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)
        _send_garbage(listen)
        _wait_for(lambda: "protocol error bad_version" in log.read_text())
        rotated = tmp_path / "dc.log.1"
        log.rename(rotated)
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)
        _send_garbage(listen)
        _wait_for(lambda: rotated.read_text().count("bad_version") == 2)
        _send_garbage(listen)
        _wait_for(lambda: rotated.read_text().count("bad_version") == 3)
        # One line when the first record finds the file out of sight, then one per SIGHUP.
        assert rotated.read_text().count("cannot reopen the log file") == 3
        assert os.path.exists(f"/proc/{pid}")
    finally:
        os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not os.path.exists(f"/proc/{pid}"))


def test_syslog_gets_tagged_lines(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(10)
        with dc_server("-log", f"syslog:{path}") as server:
            first = syslog.recv(4096).decode()
            _send_garbage(server.listen)
            second = syslog.recv(4096).decode()
            pid = server.pid
            assert server.stderr == ""
    # <facility daemon (3) * 8 + priority>program[pid]: ...
    assert first.startswith(f"<30>dc_server[{pid}]: INFO distcache.server: dc_server ")
    assert second.startswith(f"<28>dc_server[{pid}]: WARNING distcache.server: 127.0.0.1:")


@pytest.mark.parametrize("program", ["dc_server", "dc_client", "dc_snoop"])
def test_a_log_destination_that_cannot_be_opened_stops_the_start(tmp_path, program):
    flag = "-errlog" if program == "dc_snoop" else "-log"
    args = ["-listen", f"UNIX:{tmp_path / 'l.sock'}", flag, str(tmp_path / "no/such")]
    if program != "dc_server":
        args += ["-server", "IP:127.0.0.1:1"]
    result = run_program(program, *args)
    assert result.returncode == 1
    assert "can't open log file" in result.stderr and "No such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_proxy_prints_its_startup_line(tmp_path):
    from proxyproc import dc_client

    with dc_server() as server, dc_client(str(tmp_path / "p.sock"), server.listen) as proxy:
        _wait_for(lambda: "serving on" in proxy.stderr)
        line = proxy.stderr.splitlines()[0]
        assert " INFO distcache.proxy: dc_client " in line
        assert f"forwarding to {server.listen} (upstream up)" in line


def _startup_roles(stderr: str) -> list[str]:
    """What each start-up line says its process is (its last field)."""
    return sorted(line.rsplit("; ", 1)[1] for line in stderr.splitlines() if " serving on " in line)


def test_the_startup_line_says_one_process_without_workers(tmp_path):
    from proxyproc import dc_client

    with dc_server() as server, dc_client(str(tmp_path / "p.sock"), server.listen) as proxy:
        _wait_for(lambda: "serving on" in server.stderr and "serving on" in proxy.stderr)
        assert _startup_roles(server.stderr) == ["one process"]
        assert _startup_roles(proxy.stderr) == ["one process"]


def test_each_startup_line_names_its_worker(tmp_path):
    """With -workers N an operator reads from the start-up lines how many processes serve and
    which is which."""
    from proxyproc import dc_client

    from distcache.cache import shared

    # An engine owner only where the workers cannot share the cache in memory.
    owner = [] if shared.available() else ["engine owner of 2 workers"]
    with (
        dc_server("-workers", "2") as server,
        dc_client(str(tmp_path / "p.sock"), server.listen, "-workers", "2") as proxy,
    ):
        _wait_for(lambda: server.stderr.count(" serving on ") == 2 + len(owner))
        _wait_for(lambda: proxy.stderr.count(" serving on ") == 2)
        assert _startup_roles(server.stderr) == [*owner, "worker 1 of 2", "worker 2 of 2"]
        assert _startup_roles(proxy.stderr) == ["worker 1 of 2", "worker 2 of 2"]


# -- the bound, against a storm ----------------------------------------------------------------

#: Connections sending garbage, from this many threads, for this long.
STORM_THREADS = 8
STORM_SECONDS = 3.0


def test_a_malformed_connection_storm_cannot_grow_the_log_past_its_bound(tmp_path):
    log = tmp_path / "dc.log"
    with dc_server("-log", str(log)) as server:
        host, port = server.listen.removeprefix("IP:").rsplit(":", 1)
        sent = [0] * STORM_THREADS  # connections that sent garbage and were closed
        tried = [0] * STORM_THREADS
        stop_at = time.monotonic() + STORM_SECONDS
        started = time.monotonic()

        def storm(index: int) -> None:
            while time.monotonic() < stop_at:
                tried[index] += 1
                try:
                    with socket.create_connection((host, int(port)), timeout=5) as sock:
                        sock.sendall(b"\x00\x12\x00\x00garbage")
                        sock.recv(1)
                    sent[index] += 1
                except OSError:
                    pass

        threads = [threading.Thread(target=storm, args=(n,)) for n in range(STORM_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(sent) >= 200, sent  # hundreds of malformed connections
        size_after_storm = log.stat().st_size
        # The summary comes when the window that held lines back ends.
        _wait_for(lambda: "more like this" in log.read_text(), WINDOW_SECONDS + 5)
        elapsed = time.monotonic() - started
        text = log.read_text()
    windows = int(elapsed // WINDOW_SECONDS) + 2  # fixed windows: a part window at each end
    assert log.stat().st_size <= windows * MAX_BYTES_PER_WINDOW
    lines = text.splitlines()
    summaries = [line for line in lines if "more like this" in line]
    errors = [x for x in lines if "protocol error bad_version" in x and x not in summaries]
    assert len(errors) <= windows * KIND_LINES_PER_WINDOW
    assert len(summaries) >= 1
    held = sum(int(line.split(": ", 1)[1].split()[0]) for line in summaries)
    # Every malformed connection was written or counted (a few may have failed to connect).
    assert sum(sent) <= len(errors) + held <= sum(tried), (len(errors), held, sent, tried)
    assert size_after_storm < 20 * 1024, size_after_storm  # one kind: a few lines, not MBs


def test_a_forked_process_logs_to_the_same_file_with_its_own_bound(tmp_path):
    """What a worker process gets: the parent's destination, its own pid, its own windows."""
    script = f"""
import logging, os, sys
from distcache.monitoring import setup_logging
setup_logging("dc_server", {str(tmp_path / "w.log")!r}, "INFO")
log = logging.getLogger("distcache.server")
log.warning("parent %d", os.getpid())
pid = os.fork()
for n in range(30):
    log.warning("storm %d", n)
logging.shutdown()  # writes the pending summary
if pid:
    os.waitpid(pid, 0)
os._exit(0)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "w.log").read_text().splitlines()
    pids = {line.split("[", 1)[1].split("]", 1)[0] for line in lines}
    assert len(pids) == 2  # parent and child, each tagged with its own pid
    for pid in pids:
        own = [line for line in lines if f"[{pid}]" in line]
        storm = [line for line in own if ": storm " in line and "more like" not in line]
        assert len(storm) == KIND_LINES_PER_WINDOW
        assert any(f"{30 - KIND_LINES_PER_WINDOW} more like this" in line for line in own)


def test_the_startup_line_never_shows_a_store_password():
    closed = f"127.0.0.1:{free_port()}"  # the store need not answer for the server to start
    with dc_server("-engine", f"redis://u:hunter2@{closed}/0") as server:
        server.stop()
        stderr = server.stderr
    startup = next(line for line in stderr.splitlines() if "serving on" in line)
    assert f"engine RedisStore('redis://{closed}/0'" in startup
    assert "hunter2" not in stderr


def test_a_syslog_socket_that_does_not_answer_stops_the_start(tmp_path):
    missing = tmp_path / "no-syslog"
    result = run_dc_server("-listen", f"UNIX:{tmp_path / 's'}", "-log", f"syslog:{missing}")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error, can't reach syslog at '{missing}': ")
    assert "Traceback" not in result.stderr


def test_a_daemonised_proxy_logs_to_its_file(tmp_path):
    log, pidfile = tmp_path / "proxy.log", tmp_path / "proxy.pid"
    path = tmp_path / "proxy.sock"
    with dc_server() as server:
        result = run_program(
            "dc_client",
            *("-listen", f"UNIX:{path}", "-server", server.listen, "-daemon"),
            *("-pidfile", str(pidfile), "-log", str(log)),
        )
        assert result.returncode == 0, result.stderr
        _wait_for(pidfile.exists)
        pid = int(pidfile.read_text())
        try:
            _wait_for(lambda: log.exists() and "serving on" in log.read_text())
            server.stop()
            _wait_for(lambda: "lost the server connection" in log.read_text())
        finally:
            os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    text = log.read_text()
    assert f"dc_client[{pid}] INFO distcache.proxy: dc_client " in text
    assert f"dc_client[{pid}] WARNING distcache.proxy: lost the server connection" in text


def test_with_tls_sighup_reloads_the_certificates_and_reopens_the_log(tmp_path):
    """The event loop takes SIGHUP over to re-read the TLS files: the server stays up, and a
    rotated log goes on in a new file that holds the reload's line."""
    from tlspki import PKI

    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    log = tmp_path / "dc.log"
    tls = f"TLS:127.0.0.1:{free_port()}"
    with dc_server(*pki.server_flags(), "-log", str(log), listen=tls) as server:
        _wait_for(lambda: "serving on" in log.read_text())
        log.rename(tmp_path / "dc.log.1")
        server.signal(signal.SIGHUP)
        _wait_for(lambda: log.exists() and "TLS certificates reloaded" in log.read_text())
        assert server.process.poll() is None
    assert "reloaded" not in (tmp_path / "dc.log.1").read_text()


# -- one line per notable event ------------------------------------------------------------------


def test_the_proxy_logs_the_upstream_lost_then_regained(tmp_path):
    from proxyproc import dc_client

    listen = f"IP:127.0.0.1:{free_port()}"
    with (
        dc_server(listen=listen) as server,
        dc_client(str(tmp_path / "p.sock"), listen, "-retry", "100") as proxy,
    ):
        _wait_for(lambda: "(upstream up)" in proxy.stderr)
        server.stop()
        _wait_for(lambda: "lost the server connection" in proxy.stderr)
        assert "connected to the server" not in proxy.stderr
        with dc_server(listen=listen):
            _wait_for(lambda: "connected to the server" in proxy.stderr)
        lines = proxy.stderr.splitlines()
        lost = next(i for i, line in enumerate(lines) if "lost the server connection" in line)
        regained = next(i for i, line in enumerate(lines) if "connected to the server" in line)
        assert lost < regained
        assert lines[lost].split()[3] == "WARNING" and lines[regained].split()[3] == "INFO"
        assert lines[regained].endswith(f"INFO distcache.proxy: connected to the server {listen}")


def test_a_connection_over_the_cap_while_all_are_busy_is_refused_with_a_line(tmp_path):
    """Two local clients wait on an upstream that never answers (busy, so none can be reclaimed):
    the third is refused and the log says why."""
    from proxyproc import connect_unix, dc_client

    from distcache.protocol import get_request

    path = str(tmp_path / "p.sock")
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        address = f"IP:127.0.0.1:{upstream.getsockname()[1]}"
        with dc_client(path, address, "-maxconns", "2") as proxy:
            link, _ = upstream.accept()
            with link, connect_unix(path) as first, connect_unix(path) as second:
                request = get_request(1, b"k")
                first.sendall(request)
                second.sendall(request)
                received = b""
                link.settimeout(10)
                while len(received) < 2 * len(request):  # both are at the server: busy
                    received += link.recv(65536)
                with connect_unix(path) as third:
                    third.settimeout(10)
                    assert third.recv(1) == b""  # closed at once
                _wait_for(lambda: "refused" in proxy.stderr)
    refusals = [line for line in proxy.stderr.splitlines() if "refused" in line]
    assert len(refusals) == 1
    assert " WARNING distcache.proxy" in refusals[0]
    assert refusals[0].endswith("refused, all 2 connections are busy (the maximum)")


_SYSLOG_IN_NAMESPACE = r"""
exec 4</dev
mount -t tmpfs tmpfs /dev
for node in null zero random urandom; do
  touch "/dev/$node" && mount --no-canonicalize --bind "/proc/self/fd/4/$node" "/dev/$node"
done
exec 4<&-
"$PYTHON" - <<'PY'
import socket, subprocess, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
    syslog.bind("/dev/log")
    syslog.settimeout(30)
    server = subprocess.Popen(
        [sys.executable, "-m", "distcache.cli.dc_server", "-listen", "IP:127.0.0.1:9001",
         "-log", "syslog"], stdin=subprocess.DEVNULL)
    try:
        print(syslog.recv(4096).decode())
    finally:
        server.terminate()
        print("exit", server.wait(30))
PY
"""


@needs_namespaces
def test_syslog_without_an_address_reaches_dev_log():
    """``-log syslog`` writes to the datagram socket at /dev/log (here a private one, in a mount
    namespace of its own, so the host's syslog sees nothing)."""
    result = run_in_namespace(_SYSLOG_IN_NAMESPACE)
    first, status = result.stdout.splitlines()
    assert first.startswith("<30>dc_server[") and "INFO distcache.server: dc_server " in first
    assert status == "exit 0", result.stderr
