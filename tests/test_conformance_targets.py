"""The conformance runner's targets and verdicts, with an independent server written from the spec.

* no false failures: a second, independent server (``independent_server.py``, which makes the
  other choices the spec allows) passes the default profile, started by the runner and running;
* a running target gets a real verdict: most cases run against it, and what cannot run makes the
  run INCOMPLETE (exit status 3), never "passed";
* targets in any language: ``{host}``, ``{port}``, ``{path}`` and ``--ports``;
* nothing outlives the runner: SIGINT, SIGTERM, SIGHUP, its parent's death, a case deadline
  cancelling a target that is still starting. Each leaves no process and no file behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from distcache.conformance import launch
from distcache.conformance.fresh_ids import SHORT_ID, IdReservations, with_fresh_ids
from distcache.conformance.registry import all_cases
from distcache.conformance.runner import Runner
from distcache.conformance.targets import CommandSetup, free_tcp_address
from distcache.conformance.vector_cases import touched_ids, vector_plans
from distcache.conformance.vectors import Send

HERE = Path(__file__).parent
PYTHON = shlex.quote(sys.executable)
HANG_GUARD = 120
START_GUARD = 10


def independent_cmd(server: Path = HERE / "independent_server.py") -> str:
    return f"{PYTHON} {shlex.quote(str(server))} --host {{host}} --port {{port}} --sessions {{sessions}}"


def conformance(*args: str, tmp_path: Path, env: dict | None = None):
    """Run the suite as a program; (exit status, JSON report, process)."""
    output = tmp_path / "report.json"
    command = [sys.executable, "-m", "distcache", "conformance", *args]
    command += ["--format", "json", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    report = json.loads(output.read_text()) if output.exists() else None
    return done.returncode, report, done


def not_passing(report: dict) -> list:
    return [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]


def wait_accepting(port: int) -> None:
    deadline = time.monotonic() + START_GUARD
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing accepts on port {port}")


def marked_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


# -- no false failures ------------------------------------------------------------------------


def test_the_independent_server_passes_every_profile_when_started_by_the_runner(tmp_path):
    code, report, done = conformance(
        "--server-cmd", independent_cmd(), "--profile", "all", tmp_path=tmp_path
    )
    assert code == 0 and not not_passing(report), not_passing(report) or done.stderr
    assert report["verdict"] == "passed" and report["complete"]
    oversize = {r["id"]: r for r in report["results"]}[
        "ROBUST-3/oversize-message-refused-on-its-header"
    ]
    assert oversize["outcome"] == "closed once the crossing frame's data arrived"


def test_the_reference_server_shows_the_other_allowed_outcome(tmp_path):
    code, report, _ = conformance("--case", "ROBUST-3", tmp_path=tmp_path)
    (result,) = report["results"]
    assert code == 0 and result["grade"] == "PASS"
    assert result["outcome"] == "closed on the crossing frame's header"
    assert set(result["acceptable_outcomes"]) == {
        "closed on the crossing frame's header",
        "closed once the crossing frame's data arrived",
    }


def test_a_server_declining_a_should_passes_and_is_non_strict_in_strict_mode(tmp_path):
    """CONN-7 only recommends answering the requests before a protocol error: a server that
    does not is conforming, and the vectors that show it grade NON-STRICT, not FAIL."""
    command = independent_cmd() + " --drop-replies-on-error"
    args = ("--server-cmd", command, "--case", "vector/server-stream-03", "--case", "CONN-7")
    code, report, _ = conformance(*args, tmp_path=tmp_path)
    grades = {r["id"]: r["grade"] for r in report["results"]}
    assert grades["vector/server-stream-038"] == grades["vector/server-stream-039"] == "NON-STRICT"
    deviating = {"vector/server-stream-038", "vector/server-stream-039"}
    assert {g for i, g in grades.items() if i not in deviating} == {"PASS"}
    assert code == 0, not_passing(report)
    code, _, _ = conformance(*args, "--profile", "all", tmp_path=tmp_path)
    assert code == 1


class _BlackHole:
    """A server that reads everything and never answers nor closes: ROBUST-3 must fail it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"IP:127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with open(os.devnull, "wb") as sink:
            while data := conn.recv(65536):
                sink.write(data)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_server_that_never_refuses_an_oversize_message_fails(tmp_path):
    hole = _BlackHole()
    try:
        code, report, _ = conformance(hole.address, "--case", "ROBUST-3", tmp_path=tmp_path)
    finally:
        hole.close()
    (result,) = report["results"]
    assert code == 1 and result["grade"] == "FAIL", result
    assert result["requirement"]["id"] == "ROBUST-3"


# -- a running target gets a real verdict -------------------------------------------------------


@pytest.fixture
def running_independent_server():
    address = free_tcp_address()
    port = int(address.rsplit(":", 1)[1])
    argv = [sys.executable, str(HERE / "independent_server.py"), "--port", str(port)]
    process = subprocess.Popen(argv)
    try:
        wait_accepting(port)
        yield address
    finally:
        process.terminate()
        process.wait(10)


def test_a_running_server_gets_a_real_verdict_twice_in_a_row(running_independent_server, tmp_path):
    # Twice: the second run meets every id of the first, so its ids must really be fresh.
    for _ in range(2):
        code, report, _ = conformance(running_independent_server, tmp_path=tmp_path)
        grades = report["summary"]
        ran = len(report["results"]) - grades["UNSUPPORTED"]
        assert {"FAIL", "ERROR", "XPASS"}.isdisjoint(g for g, n in grades.items() if n), (
            not_passing(report)
        )
        assert ran >= 0.75 * len(report["results"]), grades
        assert report["not_run"] == grades["UNSUPPORTED"]
        expected = ("incomplete", 3) if report["not_run"] else ("passed", 0)
        assert (report["verdict"], code) == expected
        # What --list announces is what a run gives: no case is UNSUPPORTED unannounced.
        unannounced = [
            r["id"] for r in report["results"] if r["grade"] not in announced_grades(r["id"])
        ]
        assert not unannounced, unannounced


def announced_grades(case_id: str) -> set[str]:
    from distcache.conformance.possible import possible_grades
    from distcache.conformance.registry import all_cases

    [case] = [c for c in all_cases() if c.id == case_id]
    return {g.value for g in possible_grades(case).grades}


def test_an_incomplete_run_says_so_and_exits_3(running_independent_server, tmp_path):
    # CACHE-5 needs a full cache of 64 sessions: not available from a running server.
    code, report, done = conformance(
        running_independent_server, "--case", "CACHE-5", tmp_path=tmp_path
    )
    assert code == 3 and report["verdict"] == "incomplete" and report["not_run"] >= 1
    assert "INCOMPLETE: " in done.stdout and "verdict: INCOMPLETE (exit status 3)" in done.stdout
    # The JUnit report carries the same verdict, and each case its grade.
    junit = tmp_path / "report.xml"
    command = [sys.executable, "-m", "distcache", "conformance", running_independent_server]
    command += ["--case", "CACHE-5", "--format", "junit", "--output", str(junit)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)
    root = ET.parse(junit).getroot()
    assert done.returncode == 3
    assert (root.get("verdict"), root.get("exit_status")) == ("incomplete", "3")
    for suite in root.iter("testsuite"):
        run = {p.get("name"): p.get("value") for p in suite.find("properties")}
        assert run["verdict"] == "incomplete" and run["complete"] == "false"
        assert run["not_run"] == str(report["not_run"])
        assert "verdict: INCOMPLETE (exit status 3)" in run["verdict_line"]
    grades = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.find("properties")}["grade"]
        for case in root.iter("testcase")
    }
    assert grades == {r["id"]: r["grade"] for r in report["results"]}
    assert "UNSUPPORTED" in grades.values()


def test_eviction_order_is_judged_on_a_running_server_too(tmp_path):
    """The running-server variant of CACHE-2 reads the capacity from behaviour: it passes the
    correct servers (above) and fails one that evicts the most recently added sessions."""
    address = free_tcp_address()
    argv = [sys.executable, str(HERE / "faulty_servers.py"), "-listen", address]
    process = subprocess.Popen([*argv, "-fault", "evict_wrong"], stderr=subprocess.DEVNULL)
    try:
        wait_accepting(int(address.rsplit(":", 1)[1]))
        code, report, _ = conformance(address, "--case", "CACHE-2", tmp_path=tmp_path)
    finally:
        process.terminate()
        process.wait(10)
    [result] = [r for r in report["results"] if r["id"] == "CACHE-2/eviction-order"]
    assert code == 1 and result["grade"] == "FAIL", result
    assert result["requirement"]["id"] == "CACHE-2"


def test_fresh_ids_keep_every_write_and_rename_every_id_consistently():
    reservations = IdReservations()
    for plan in vector_plans():
        vector = plan.played
        if vector is None or vector.target_kind != "server":
            continue
        fresh, mapping = with_fresh_ids(vector, reservations.draw)
        before, after = touched_ids(vector), touched_ids(fresh)
        assert set(mapping) == {i for i in before if i}, vector.id
        assert after == {mapping.get(i, i) for i in before}, vector.id
        # Long ids are new by chance; short ones are reserved and removed before the replay.
        assert before.isdisjoint(v for v in mapping.values() if len(v) >= SHORT_ID), vector.id
        for old, new in zip(vector.steps, fresh.steps, strict=True):
            assert type(old) is type(new), vector.id
            if isinstance(old, Send):
                assert len(old.data) == len(new.data), vector.id
            else:
                assert old == new, vector.id  # expectations are untouched


def test_short_ids_are_never_held_by_two_cases_at_once():
    reservations = IdReservations()
    drawn = [reservations.draw(1) for _ in range(256)]
    assert len(set(drawn)) == 256
    reservations.release(drawn[:1])
    assert reservations.draw(1) == drawn[0]


# -- targets in any language --------------------------------------------------------------------


def test_a_unix_socket_target_via_path(tmp_path):
    command = f"{PYTHON} {shlex.quote(str(HERE / 'independent_server.py'))} --unix {{path}}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    code, report, done = conformance(
        "--server-cmd", command, "--case", "GET", "--case", "FRAG-3", tmp_path=tmp_path, env=env
    )
    assert code == 0 and not not_passing(report), not_passing(report) or done.stderr
    assert list(scratch.iterdir()) == []


def test_ports_are_drawn_from_the_given_range(tmp_path):
    low = int(free_tcp_address().rsplit(":", 1)[1]) // 100 * 100
    record = tmp_path / "ports"
    command = (
        f'sh -c \'echo {{port}} >> {shlex.quote(str(record))}; exec "$0" "$@"\' '
        + independent_cmd()
    )
    code, report, done = conformance(
        "--server-cmd",
        command,
        "--ports",
        f"{low}-{low + 99}",
        "--case",
        "CACHE",
        "--case",
        "GET",
        tmp_path=tmp_path,
    )
    assert code == 0, not_passing(report) or done.stderr
    ports = [int(p) for p in record.read_text().split()]
    assert len(ports) >= 2 and all(low <= p <= low + 99 for p in ports), ports


def test_a_proxy_template_may_spell_addresses_as_hosts_and_ports(tmp_path):
    proxy = (
        f"{PYTHON} -m distcache.cli.dc_client -listen IP:{{host}}:{{port}} "
        "-server IP:{upstream_host}:{upstream_port} -retry {retry_ms}"
    )
    code, report, done = conformance("--proxy-cmd", proxy, "--case", "PROXY-3", tmp_path=tmp_path)
    assert report["results"] and code == 0, not_passing(report) or done.stderr


@pytest.mark.parametrize("ports", ["9000", "9000-", "x-y", "0-10", "10-5", "65000-70000"])
def test_a_bad_port_range_is_a_usage_error(ports, tmp_path):
    code, _, done = conformance("--ports", ports, "--case", "GET", tmp_path=tmp_path)
    assert code == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- nothing outlives the runner ---------------------------------------------------------------


def _start_runner(tmp_path: Path, *args: str, parent_shell: bool = False):
    """A runner process whose targets are marked by ``tmp_path``; its TMPDIR is private."""
    server = tmp_path / "marked_server.py"
    server.write_text((HERE / "independent_server.py").read_text())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    argv = [sys.executable, "-m", "distcache", "conformance", "--server-cmd"]
    argv += [independent_cmd(server), *args]
    if parent_shell:  # a parent that dies without a word to its child
        argv = ["sh", "-c", shlex.join(argv) + "; true"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return process, str(tmp_path), scratch


def _targets(marker: str) -> list[str]:
    return [c for c in marked_processes(marker) if "conformance" not in c]


def _wait_for_targets(marker: str, process) -> None:
    deadline = time.monotonic() + START_GUARD
    while time.monotonic() < deadline and len(_targets(marker)) < 3:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    assert len(_targets(marker)) >= 3  # several targets at once: fresh instances


def _nothing_left(marker: str, scratch: Path) -> None:
    deadline = time.monotonic() + START_GUARD
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_processes(marker) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stopped_runner_stops_every_target_it_started(signum, tmp_path):
    process, marker, scratch = _start_runner(tmp_path)
    try:
        _wait_for_targets(marker, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=HANG_GUARD)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    _nothing_left(marker, scratch)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_runner_whose_parent_dies_stops_every_target(tmp_path):
    shell, marker, scratch = _start_runner(tmp_path, parent_shell=True)
    try:
        _wait_for_targets(marker, shell)
        shell.kill()
        shell.wait()
        _nothing_left(marker, scratch)  # the runner included: its command names the marker
    finally:
        shell.kill()


def test_a_target_still_starting_at_the_case_deadline_leaves_nothing(tmp_path):
    """A slow target (emulation, a JVM, a container) cancelled by the case deadline."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    marker = f"8.{os.getpid() % 1000:03d}{time.monotonic_ns() % 1000:03d}"  # the sleep's
    proxy = (
        f'sh -c \'sleep {marker}; exec {PYTHON} -m distcache.cli.dc_client -listen "$1" '
        f'-server "$2"\' {shlex.quote(marker)} {{listen}} {{upstream}}'
    )
    env = {**os.environ, "TMPDIR": str(scratch)}
    code, report, _ = conformance(
        "--proxy-cmd",
        proxy,
        "--case",
        "PROXY-2/no-upstream-empty-reply",
        "--timeout",
        "0.2",
        tmp_path=tmp_path,
        env=env,
    )
    (result,) = report["results"]
    assert result["grade"] == "ERROR" and "deadline" in result["detail"], result
    assert code == 1  # ended by the case's deadline, not by the slow start
    _nothing_left(marker, scratch)


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """The runner's temporary files go to a directory of this test's own (in this process)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    launch.stop_all_now()  # whatever a failed test left


def _files_in(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if not path.is_dir()]


def test_a_start_cancelled_by_its_deadline_stops_the_target_at_once(private_tmpdir):
    """Not only when the run ends: the cancelled start itself stops the target and removes its
    log, so a long run does not keep its slow targets until the end."""
    marker = f"30.{os.getpid() % 1000:03d}{time.monotonic_ns() % 1000:03d}"
    setup = CommandSetup(f"sh -c 'sleep {marker}; exec sleep 60' {{listen}}")

    async def cancelled_start() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await setup.fresh(None)

    asyncio.run(cancelled_start())
    deadline = time.monotonic() + START_GUARD
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(marker) == []
    assert _files_in(private_tmpdir) == []  # the target's log is gone already


def test_an_exception_of_the_runner_itself_stops_every_target(private_tmpdir, tmp_path):
    """The runner's own failure (here its result callback raising) still stops what it started
    and removes its files."""
    server = tmp_path / "marked_server.py"
    server.write_text((HERE / "independent_server.py").read_text())
    marker = str(tmp_path)
    cases = [c for c in all_cases() if c.target == "server" and c.profile != "tls"]

    def broken(result, done, total) -> None:
        raise RuntimeError("the runner's own bug")

    async def run() -> None:
        runner = Runner(server=CommandSetup(independent_cmd(server)), on_result=broken)
        with pytest.raises(RuntimeError, match="own bug"):
            await runner.run(cases[:20], "marked")

    asyncio.run(run())
    deadline = time.monotonic() + START_GUARD
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(marker) == []
    assert list(private_tmpdir.iterdir()) == []


def test_every_target_is_stopped_when_a_start_fails(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    marker = f"60.{os.getpid() % 1000:03d}{time.monotonic_ns() % 1000:03d}"
    # Starts, never listens, and exits only when killed: the start-up times out.
    command = f"sh -c 'sleep {marker}; true' {{listen}}"
    code, _, done = conformance(
        "--server-cmd", command, "--case", "GET", tmp_path=tmp_path, env=env
    )
    assert code == 2 and "did not accept connections" in done.stderr
    _nothing_left(marker, scratch)


def test_the_runner_cleans_up_after_a_complete_run(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    code, _, _ = conformance(
        "--server-cmd",
        independent_cmd(),
        "--case",
        "CACHE",
        "--case",
        "ADD",
        tmp_path=tmp_path,
        env=env,
    )
    assert code == 0
    assert list(scratch.iterdir()) == []


def test_the_independent_server_imports_nothing_of_distcache():
    source = (HERE / "independent_server.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert imports and not [line for line in imports if "distcache" in line]
