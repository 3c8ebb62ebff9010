"""The blocking client's connection modes against a real dc_server, connections counted by a relay
between them: temporary, PERSISTENT, LATE, RETRY across server restarts, PIDCHECK across fork."""

from __future__ import annotations

import os
import pickle
import time
import warnings

import pytest
from serverproc import DcServer, dc_server, free_port
from test_client_support import Relay

from distcache.client import Client, ConnectionFailed, ConnectionLost, Mode, TransportError

P = Mode.PERSISTENT
#: Generous: these tests are about modes, not speed, and may share a busy machine.
LONG = 20.0


@pytest.fixture(scope="module")
def server():
    with dc_server() as running:
        yield running


@pytest.fixture
def relay(server):
    with Relay(server.listen) as counting:
        yield counting


def exercise(client: Client, key: bytes) -> None:
    assert client.add(key, b"session-" + key, 60_000)
    assert client.have(key)
    assert client.get(key) == b"session-" + key
    assert client.remove(key)
    assert not client.have(key)


def test_temporary_mode_opens_one_connection_per_operation(relay):
    client = Client(relay.address, Mode.TEMPORARY, timeout=LONG)
    assert relay.connections == 0 and not client.connected
    exercise(client, b"temporary")
    assert relay.connections == 5
    assert not client.connected


def test_persistent_mode_connects_at_once_and_reuses(relay):
    with Client(relay.address, P, timeout=LONG) as client:
        assert client.connected
        exercise(client, b"persistent")
    assert wait_for(lambda: relay.connections == 1)


def test_late_mode_connects_at_the_first_operation(relay):
    client = Client(relay.address, P | Mode.LATE, timeout=LONG)
    assert not client.connected
    assert relay.connections == 0
    exercise(client, b"late")
    assert relay.connections == 1
    client.close()


def test_persistent_without_late_reports_a_dead_server_at_construction():
    with pytest.raises(ConnectionFailed, match="refused"):
        Client(f"IP:127.0.0.1:{free_port()}", P)


@pytest.mark.parametrize("mode", [P, P | Mode.LATE])
def test_without_retry_a_restart_fails_cleanly_until_the_server_is_back(mode):
    listen = f"IP:127.0.0.1:{free_port()}"
    first = DcServer([], listen=listen)
    client = Client(listen, mode, timeout=LONG)
    assert client.add(b"k", b"v", 60_000)
    first.stop()
    with pytest.raises(ConnectionLost):  # the old connection is found dead...
        client.have(b"k")
    for _ in range(3):  # ...and while the server is down every operation fails the same way
        with pytest.raises(ConnectionFailed):
            client.have(b"k")
    second = DcServer([], listen=listen)
    try:
        assert client.have(b"k") is False  # back: a new connection, an empty cache
        assert client.add(b"k", b"v", 60_000)
    finally:
        second.stop()
        client.close()


@pytest.mark.parametrize("mode", [P | Mode.RETRY, P | Mode.RETRY | Mode.LATE])
def test_retry_reconnects_and_resends_after_a_restart(mode):
    listen = f"IP:127.0.0.1:{free_port()}"
    first = DcServer([], listen=listen)
    client = Client(listen, mode, timeout=LONG)
    assert client.add(b"k", b"v", 60_000)
    first.stop()
    second = DcServer([], listen=listen)
    try:
        assert client.add(b"k", b"v2", 60_000)  # resent on a new connection, transparently
        assert client.get(b"k") == b"v2"
    finally:
        second.stop()
    # A failed reconnect raises (the legacy crashed on the next operation) and stays usable.
    for _ in range(3):
        with pytest.raises(ConnectionFailed):
            client.have(b"k")
    third = DcServer([], listen=listen)
    try:
        assert client.have(b"k") is False
    finally:
        third.stop()
        client.close()


def run_in_child(work) -> object:
    """Fork; run ``work()`` in the child; return its result (or raise its error) in the parent."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: child is tiny
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            try:
                outcome = ("ok", work())
            except Exception as error:
                outcome = ("error", repr(error))
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(outcome, pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


def test_pidcheck_child_reconnects_once_then_reuses(relay):
    client = Client(relay.address, P | Mode.PIDCHECK, timeout=LONG)
    assert client.add(b"fork", b"shared", 60_000)
    assert relay.connections == 1

    def child():
        return [client.have(b"fork"), client.get(b"fork"), client.have(b"nope")]

    assert run_in_child(child) == [True, b"shared", False]
    assert relay.connections == 2  # one new connection for three operations in the child
    assert client.get(b"fork") == b"shared"  # the parent's connection was not disturbed
    assert relay.connections == 2
    client.close()


def test_without_pidcheck_a_child_shares_the_parents_connection(relay):
    client = Client(relay.address, P, timeout=LONG)
    assert client.add(b"shared-socket", b"v", 60_000)
    assert run_in_child(lambda: client.have(b"shared-socket")) is True
    assert client.have(b"shared-socket")
    assert relay.connections == 1
    client.close()


def test_modifiers_without_persistent_are_refused():
    for mode in (Mode.RETRY, Mode.LATE, Mode.PIDCHECK, 0x10):
        with pytest.raises(ValueError):
            Client("IP:127.0.0.1:9", mode)


def test_listen_only_address_is_refused_before_any_traffic():
    with pytest.raises(ValueError, match="listen-only"):
        Client("IP:9001", P)


def test_every_failure_is_a_transport_error_subclass():
    with pytest.raises(TransportError):
        Client(f"IP:127.0.0.1:{free_port()}", Mode.TEMPORARY).have(b"x")
    with pytest.raises(TransportError):
        Client("UNIX:/nonexistent/socket", Mode.TEMPORARY).have(b"x")


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
