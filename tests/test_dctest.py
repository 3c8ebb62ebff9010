"""dc_test as a program, against our server directly, through our proxy, and against a server
that lies (which it must catch)."""

from __future__ import annotations

import json
import random
import subprocess

import pytest
from proxyproc import dc_client
from scripted_upstream import CLOSE, ScriptedUpstream
from serverproc import ServerThread, dc_server, run_program

from distcache.loadtest import Presence, SessionModel
from distcache.wire import MIN_CACHE_SESSIONS, Operation


def run_dc_test(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_program("dc_test", *args, timeout=timeout)


@pytest.fixture
def server():
    """A fresh 64-session server: sessions left by another run could fill it, and a full
    server evicts what expires first, whoever stored it."""
    with dc_server("-sessions", "64") as running:
        yield running


@pytest.mark.parametrize(
    "args",
    [
        ["-ops", "400"],
        ["-persistent", "-ops", "2000", "-clients", "4"],
        # 4-byte sessions: the legacy failed these (its client took them for misses).
        ["-persistent", "-datamin", "4", "-datamax", "4", "-ops", "1000"],
        # More sessions than the 64-session server holds: evictions are not failures.
        ["-persistent", "-sessions", "200", "-ops", "3000", "-clients", "8"],
        # Timeouts of 1..2 s against a run that outlasts them: expiry is not a failure.
        [
            "-persistent",
            "-sessions",
            "5",
            "-ops",
            "600",
            "-timeout",
            "2",
            "-timevar",
            "1",
            "-clients",
            "2",
        ],
    ],
    ids=["temporary", "persistent-4-clients", "4-byte-sessions", "eviction", "expiry"],
)
def test_passes_against_our_server(server, args):
    result = run_dc_test("-connect", server.listen, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Info, ") and "sessions generated, will run" in lines[0]
    assert lines[-1] == "Info, all tests complete"
    assert "requests per second" in result.stdout


def test_model_expects_expiry_and_eviction():
    """The model's expectations for a session added at t = 10.0 s with a 1000 ms timeout and
    answered 5 ms later: certainly there before its expiry window, either way inside it,
    certainly gone after it; and either way once a later ADD may have evicted it."""
    model = SessionModel(random.Random(1), 3, 4, 8)
    session = model.sessions[0]
    assert model.presence(session, 9.0, 9.1) is Presence.ABSENT
    model.stored(session, 1000, 10.0, 10.005)
    assert model.presence(session, 10.5, 10.6) is Presence.PRESENT
    assert model.presence(session, 10.97, 10.99) is Presence.UNKNOWN
    assert model.presence(session, 11.1, 11.2) is Presence.ABSENT
    big = SessionModel(random.Random(1), MIN_CACHE_SESSIONS + 1, 4, 8)
    first, second = big.sessions[:2]
    big.stored(first, 60_000, 10.0, 10.005)
    assert big.presence(first, 11.0, 11.1) is Presence.PRESENT
    big.stored(second, 60_000, 12.0, 12.005)
    assert big.presence(first, 13.0, 13.1) is Presence.UNKNOWN  # the ADD may have evicted it
    big.found(first)
    assert big.presence(first, 14.0, 14.1) is Presence.PRESENT


def test_through_our_proxy(tmp_path, server):
    path = str(tmp_path / "px")
    with dc_client(path, server.listen):
        for extra in ([], ["-persistent", "-clients", "4"]):
            result = run_dc_test("-connect", f"UNIX:{path}", "-ops", "600", *extra, "-json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert [row["test"] for row in report][-1] == "ALL"
            assert sum(row["rps"] for row in report[:-1]) == pytest.approx(report[-1]["rps"], 0.01)


def test_a_lying_server_fails_the_run():
    """A server that stores sessions but answers GET hits with altered data."""
    thread = ServerThread()
    stored: dict[bytes, bytes] = {}

    def liar(request, number):
        payload = request.payload
        if request.operation is Operation.ADD:
            id_len = int.from_bytes(payload[4:8], "big")
            key, data = payload[8 : 8 + id_len], payload[8 + id_len :]
            if key in stored:
                return request.respond(b"\x65")
            stored[key] = data
            return request.respond(b"\x00")
        if request.operation is Operation.GET:
            data = stored.get(payload)
            return request.respond(b"\x01" if data is None else data[:-1] + b"?")
        present = (
            stored.pop(payload, None)
            if request.operation is Operation.REMOVE
            else stored.get(payload)
        )
        return request.respond(b"\x01" if present is None else b"\x00")

    upstream = ScriptedUpstream(thread, liar)
    try:
        result = run_dc_test(
            "-connect", upstream.start(), "-persistent", "-ops", "500", "-seed", "2"
        )
    finally:
        upstream.stop()
        thread.close()
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "Error, received mismatched session" in lines
    assert lines[-1].startswith("Info, ") and lines[-1].endswith(
        "tests succeeded before the first failure"
    )


def test_a_server_that_hangs_up_is_a_transaction_failure():
    """A server that answers 20 requests and then drops every connection: one verdict line,
    never a traceback (Python before 3.11.4 wrapped a failure raised in ``except*``)."""
    thread = ServerThread()
    stored: dict[bytes, bytes] = {}
    answered = 0

    def hang_up(request, number):
        nonlocal answered
        answered += 1
        if answered > 20:
            return CLOSE
        payload = request.payload
        if request.operation is Operation.ADD:
            id_len = int.from_bytes(payload[4:8], "big")
            key = payload[8 : 8 + id_len]
            if key in stored:
                return request.respond(b"\x65")
            stored[key] = payload[8 + id_len :]
            return request.respond(b"\x00")
        if request.operation is Operation.GET:
            return request.respond(stored.get(payload, b"\x01"))
        if request.operation is Operation.REMOVE:
            present = stored.pop(payload, None)
        else:
            present = stored.get(payload)
        return request.respond(b"\x01" if present is None else b"\x00")

    upstream = ScriptedUpstream(thread, hang_up)
    try:
        result = run_dc_test("-connect", upstream.start(), "-persistent", "-ops", "500")
    finally:
        upstream.stop()
        thread.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert "Error, transaction failure" in lines, lines
    assert lines[-1].startswith("Info, ") and lines[-1].endswith(
        "tests succeeded before the first failure"
    )


def test_same_seed_same_tests(server):
    def sessions_line(seed: str) -> str:
        result = run_dc_test("-connect", server.listen, "-ops", "0", "-seed", seed, "-csv")
        assert result.returncode == 0
        return result.stderr

    assert sessions_line("5") == sessions_line("5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error, must provide -connect"),
        (["-connect"], "Error, --connect requires an argument"),
        (["-sessions", "0"], "Error, --sessions given an invalid argument"),
        (["-sessions", "513"], "Error, --sessions given an invalid argument"),
        (["-ops", "1000001"], "Error, --ops given an invalid argument"),
        (["-datamin", "3"], "Error, -datamin should be at least 4"),
        (["-datamax", "4097"], "Error, -datamax should be at most 4096"),
        (
            ["-connect", "UNIX:/x", "-timevar", "60"],
            "Error, -timevar must be strictly smaller than -timeout",
        ),
        (["-withcert", "1"], "Error, no OpenSSL support compiled in, -with-cert not available."),
        (["-connect", "IP:9001"], "Error, 'DC_CTX' creation failed"),
        (["-bogus"], 'Error, "-bogus" not recognised'),
    ],
)
def test_command_line_errors(args, message):
    result = run_dc_test(*args)
    assert result.returncode == 1
    assert message in result.stderr.splitlines()
    assert result.stdout == ""


def test_help():
    result = run_dc_test("-h")
    assert result.returncode == 0
    assert "-persistent" in result.stdout
