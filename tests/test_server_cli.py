"""The dc_server program: legacy flags and messages, signals, exit statuses, pid file, progress
line, listeners. Each test runs the real program as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import time

import pytest
from serverproc import ask, connect_to, dc_server, free_port, run_dc_server

from distcache.protocol import add_request, have_request
from distcache.server import bind_listeners, format_progress
from distcache.server.daemon import remove_pidfile, write_pidfile
from distcache.server.progress import ProgressReporter
from distcache.wire import Status

OK = bytes([Status.OK])
NOTOK = bytes([Status.NOTOK])


# -- command line ------------------------------------------------------------------------------


def test_the_console_script_is_installed():
    assert shutil.which("dc_server"), "pip install -e . declares the dc_server script"


@pytest.mark.parametrize("word", ["-h", "-help", "-?"])
def test_help_prints_usage_and_exits_0(word):
    result = run_dc_server(word, "-bogus")  # words after it are never looked at
    assert result.returncode == 0
    # Asked-for usage is output: stdout, nothing on stderr.
    assert "-listen" in result.stdout and "-sessions" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-bogus"], 'Error, "-bogus" not recognised'),
        (["-bogus", "-h"], 'Error, "-bogus" not recognised'),
        (["-deamon"], 'Error, "-deamon" not recognised'),
        (["-listen"], "Error, --listen requires an argument"),
        (["-listen", "IP:1", "-sessions"], "Error, --sessions requires an argument"),
        (["-listen", "IP:1", "-sessions", "abc"], "Error, --sessions given an invalid argument"),
        (["-listen", "IP:1", "-sessions", "63"], "Error, --sessions given an invalid argument"),
        (["-listen", "IP:1", "-sessions", "60001"], "Error, --sessions given an invalid argument"),
        (
            ["-listen", "IP:1", "-progress", "1000001"],
            "Error, --progress given an invalid argument",
        ),
        (["-listen", "IP:1", "-progress", "-1"], "Error, --progress given an invalid argument"),
        (["-listen", "IP:1", "-maxconns", "0"], "Error, -maxconns given an invalid argument"),
    ],
)
def test_bad_flags_exit_1_with_the_legacy_message_and_usage(args, message):
    result = run_dc_server(*args)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == message
    assert "Usage: dc_server" in result.stderr


def test_missing_listen():
    result = run_dc_server("-sessions", "100")
    assert (result.returncode, result.stderr.strip()) == (1, "Error, must provide -listen")


@pytest.mark.parametrize(
    "address", ["IP:127.0.0.1:99999", "TCP:9001", "IP:nosuch.invalid:9001", "UNIX:"]
)
def test_unusable_listen_address_exits_1(address):
    result = run_dc_server("-listen", address)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"Error, can't listen on '{address}'"


def test_port_in_use_exits_1():
    with dc_server() as server:
        result = run_dc_server("-listen", server.listen)
        assert result.returncode == 1
        assert "can't listen" in result.stderr


def test_unknown_engine_exits_1():
    result = run_dc_server("-listen", f"IP:127.0.0.1:{free_port()}", "-engine", "nosuch://x")
    assert result.returncode == 1
    assert "unknown storage engine" in result.stderr


# -- running and stopping ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_shut_down_cleanly(signum):
    with dc_server() as server:
        sock = server.connect()
        assert ask(sock, add_request(1, b"id", b"x", 60_000)) == OK
        server.signal(signum)
        assert server.wait() == 0
        assert "Traceback" not in server.stderr


def test_sigusr1_is_ignored_without_killable():
    with dc_server() as server:
        for signum in (signal.SIGUSR1, signal.SIGUSR2):
            server.signal(signum)
        time.sleep(0.3)
        assert server.process.poll() is None
        assert ask(server.connect(), have_request(1, b"x")) == NOTOK


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_killable_stops_on_sigusr(signum):
    with dc_server("-killable") as server:
        server.signal(signum)
        assert server.wait() == 0


def _after_startup(stderr: str) -> list[str]:
    """The lines of ``stderr`` but the start-up line (which must be there)."""
    lines = [line for line in stderr.splitlines() if line]
    startup = [line for line in lines if " INFO distcache.server: dc_server " in line]
    assert len(startup) == 1 and " serving on IP:127.0.0.1:" in startup[0], stderr
    return [line for line in lines if line not in startup]


def test_only_the_startup_line_is_printed_at_start_connect_or_disconnect():
    with dc_server() as server:
        sock = server.connect()
        assert ask(sock, have_request(1, b"x")) == NOTOK
        sock.close()
        time.sleep(0.2)
        assert server.stop() == 0
        assert _after_startup(server.stderr) == []
        assert "engine memory: (512 sessions); at most 1024 connections" in server.stderr


def test_the_startup_line_is_printed_at_debug_level_too():
    with dc_server("-log-level", "DEBUG", "-sessions", "100", "-maxconns", "7") as server:
        server.stop()
        _after_startup(server.stderr)
        assert "engine memory: (100 sessions); at most 7 connections" in server.stderr


def test_protocol_error_is_logged_in_one_line_and_the_server_keeps_serving():
    with dc_server() as server:
        bad = server.connect()
        bad.sendall(b"\x00\x12\x00\x00\x00")
        assert bad.recv(1) == b""
        assert ask(server.connect(), have_request(1, b"x")) == NOTOK
        server.stop()
        lines = _after_startup(server.stderr)
        assert len(lines) == 1
        assert "distcache.server" in lines[0] and "bad_version" in lines[0]
        assert "offset 0" in lines[0] and "127.0.0.1:" in lines[0]


def test_log_level_can_silence_protocol_errors():
    with dc_server("-log-level", "error") as server:
        bad = server.connect()
        bad.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert bad.recv(1) == b""
        server.stop()
        assert server.stderr == ""


def test_pidfile_holds_the_pid_without_a_newline(tmp_path):
    pidfile = tmp_path / "dc.pid"
    with dc_server("-pidfile", str(pidfile)) as server:
        # dc_server() returns once the port accepts: the pid file must be complete by then.
        assert pidfile.read_text() == str(server.pid)
    assert not pidfile.exists(), "a clean exit removes the pid file"
    assert list(tmp_path.iterdir()) == [], "no temporary file is left beside it"


@pytest.mark.parametrize("listen", ["IP:127.0.0.1:0", "UNIX"])
def test_bound_listeners_accept_nothing_until_served(tmp_path, listen):
    """Programs bind, then detach and write the pid file, then serve: until they serve, a client
    is refused, so whoever sees the port accept can read the pid file."""
    if listen == "UNIX":
        listen = f"UNIX:{tmp_path / 'sock'}"
    [sock] = bind_listeners(listen)
    try:
        if sock.family == socket.AF_UNIX:
            address = f"UNIX:{sock.getsockname()}"
        else:
            address = "IP:{}:{}".format(*sock.getsockname()[:2])
        with pytest.raises(ConnectionRefusedError):
            connect_to(address).close()
    finally:
        sock.close()


def test_a_pidfile_naming_another_process_is_left_alone(tmp_path):
    pidfile = tmp_path / "dc.pid"
    pidfile.write_text("1")
    remove_pidfile(str(pidfile))
    assert pidfile.read_text() == "1"
    write_pidfile(str(pidfile))
    assert pidfile.read_text() == str(os.getpid())
    remove_pidfile(str(pidfile))
    assert not pidfile.exists()


def test_daemon_detaches_and_writes_a_relative_pidfile_from_the_start_directory(tmp_path):
    listen = f"IP:127.0.0.1:{free_port()}"
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run_dc_server("-listen", listen, "-daemon", "-pidfile", "dc.pid", "-killable")
    finally:
        os.chdir(previous)
    assert result.returncode == 0
    pid = int((tmp_path / "dc.pid").read_text())
    try:
        sock = _connect_when_ready(listen)
        assert ask(sock, have_request(1, b"x")) == NOTOK
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.getsid(pid) != os.getsid(0)  # a session of its own, no terminal
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")
    assert not (tmp_path / "dc.pid").exists(), "the daemon removes its pid file on a clean exit"


def _connect_when_ready(listen: str) -> socket.socket:
    deadline = time.monotonic() + 5
    while True:
        try:
            return connect_to(listen)
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.02)


# -- listeners ---------------------------------------------------------------------------------


def test_unix_listener_with_socket_permissions(tmp_path):
    path = tmp_path / "dc.sock"
    with dc_server("-sockperms", "600", listen=f"UNIX:{path}") as server:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert ask(server.connect(), have_request(1, b"x")) == NOTOK
        assert [line for line in server.stderr.splitlines() if "serving on" not in line] == []


def test_unix_listener_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "precious"
    path.write_text("keep me")
    result = run_dc_server("-listen", f"UNIX:{path}")
    assert result.returncode == 1
    assert "can't listen" in result.stderr
    assert path.read_text() == "keep me"


def test_socket_file_settings_on_tcp_only_warn():
    with dc_server("-sockperms", "600", "-sockowner", "root") as server:
        assert ask(server.connect(), have_request(1, b"x")) == NOTOK
        server.stop()
        assert _after_startup(server.stderr) == [
            "Warning, can't set socket ownership to user 'root' and group '(null)', "
            "continuing anyway",
            "Warning, can't set socket permissions to '600', continuing anyway",
        ]


def test_sessions_sets_the_capacity():
    """64 sessions: the 65th distinct ADD evicts the two expiring soonest (64 // 30)."""
    with dc_server("-sessions", "64") as server:
        sock = server.connect()
        for n in range(65):
            assert ask(sock, add_request(n, b"id%d" % n, b"x", 100_000 + n)) == OK
        present = [ask(sock, have_request(n, b"id%d" % n)) == OK for n in range(65)]
        assert present == [False, False] + [True] * 63


# -- progress ----------------------------------------------------------------------------------

PROGRESS_LINE = re.compile(
    r"Info, total operations = [ 0-9]{7}  \(\+[ 0-9]{5}\), total sessions = [ 0-9]{5}  \([-+=][ 0-9]{3}\)"
)


def test_progress_line_format():
    assert format_progress(15, 3, 12, 0) == (
        "Info, total operations =      15  (+    3), total sessions =    12  (=  0)"
    )
    assert format_progress(1, 1, 1, 1).endswith("(+  1)")
    assert format_progress(9, 2, 0, -4).endswith("total sessions =     0  (-  4)")


def _wait_for_progress(server, text: str, timeout: float = 10.0) -> None:
    """Wait until a progress line containing ``text`` is printed (the line's timing is the
    server's; only a hung test is guarded against)."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in _after_startup(server.stderr)):
        assert time.monotonic() < deadline, server.stderr
        time.sleep(0.05)


def test_progress_is_printed_when_sessions_change_and_on_multiples():
    with dc_server("-progress", "5") as server:
        sock = server.connect()
        for n in range(3):
            assert ask(sock, add_request(n, b"id%d" % n, b"x", 60_000)) == OK
        _wait_for_progress(server, "total sessions =     3")
        for n in range(3, 6):
            assert ask(sock, have_request(n, b"nothing")) == NOTOK
        _wait_for_progress(server, "total operations =       6")
        server.stop()
        lines = _after_startup(server.stderr)
    assert lines, "no progress line"
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines), lines
    assert lines[0].endswith("total sessions =     3  (+  3)")
    assert any(line.startswith("Info, total operations =       6  (+    ") for line in lines)


async def _count(value):
    return value


@pytest.mark.parametrize(
    ("every", "steps", "expected"),
    [
        # (time, operations, sessions) -> printed?
        (0, [(0.5, 10, 0), (1.5, 20, 0), (2.0, 30, 1)], [False, False, True]),
        (0, [(0.5, 1, 1), (1.1, 2, 1), (1.6, 3, 2), (2.1, 3, 2)], [False, True, False, True]),
        (10, [(0.5, 9, 0), (0.7, 10, 0), (0.9, 19, 0), (1.0, 25, 0)], [False, True, False, True]),
    ],
)
def test_progress_timing_rules(every, steps, expected):
    import asyncio

    reporter = ProgressReporter(every, start_time=0.0)
    printed = [
        asyncio.run(reporter.evaluate(now, ops, lambda s=sessions: _count(s))) is not None
        for now, ops, sessions in steps
    ]
    assert printed == expected


def test_a_slow_count_is_not_repeated_until_it_has_paid_for_itself():
    """A count that takes 20 ms (a SCAN of a big shared store) is not made again for 2 s; the
    line printed meanwhile on the -progress rule shows the last count."""
    import asyncio

    counts = []

    async def slow_count():
        await asyncio.sleep(0.02)
        counts.append(len(counts) + 1)
        return counts[-1]

    reporter = ProgressReporter(10, start_time=0.0)
    lines = [
        asyncio.run(reporter.evaluate(now, ops, slow_count))
        for now, ops in [(1.0, 1), (1.5, 10), (2.5, 11), (60.0, 12)]
    ]
    assert counts == [1, 2]  # at 1.0 s, then not before 1.0 + 100 x (at least 0.02 s) = 3.0 s
    assert lines[0] is not None and "total sessions =     1" in lines[0]
    assert lines[1] is not None and "total sessions =     1  (=  0)" in lines[1]
    assert lines[2] is None  # no count was due and no multiple of 10 crossed
    assert lines[3] is not None and "total sessions =     2" in lines[3]


def test_a_count_the_store_cannot_make_keeps_the_last_one():
    """A store out of reach (or the shared cache locked by a stopped worker) when the sessions
    are counted: the line keeps the last count and the reporting goes on."""
    import asyncio

    from distcache.cache.errors import StoreUnavailableError

    answers = iter([3, StoreUnavailableError("store down"), 5])

    async def count():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    reporter = ProgressReporter(10, start_time=0.0)
    lines = [
        asyncio.run(reporter.evaluate(now, ops, count)) for now, ops in [(1, 10), (2, 20), (3, 30)]
    ]
    assert "total sessions =     3" in lines[0]
    assert "total sessions =     3  (=  0)" in lines[1]
    assert "total sessions =     5" in lines[2]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_min_timeout_raises_short_add_timeouts(workers):
    """-min-timeout: the opt-in floor for clients that send too short a timeout (Apache's
    mod_socache_dc sends the millisecond-of-the-second field, 0..999)."""
    with dc_server("-min-timeout", "60000", "-workers", workers) as floored, dc_server() as plain:
        for server in (floored, plain):
            sock = server.connect()
            assert ask(sock, add_request(1, b"short-lived", b"session", 200)) == OK
            sock.close()
        time.sleep(0.5)
        floored_sock, plain_sock = floored.connect(), plain.connect()
        assert ask(floored_sock, have_request(2, b"short-lived")) == OK, "the floor kept it"
        assert ask(plain_sock, have_request(2, b"short-lived")) == NOTOK, "expired without it"


def test_min_timeout_is_range_checked():
    result = run_dc_server("-listen", "IP:127.0.0.1:1", "-min-timeout", "604800001")
    assert result.returncode == 1
    assert "min-timeout" in result.stderr
