"""The blocking client against servers that misbehave: silent ones (timeouts), ones that answer
with the wrong uid, operation or direction, malformed or undefined replies, and proxy answers.
After every protocol error the next operation on the same persistent client must not hang."""

from __future__ import annotations

import time

import pytest
from test_client_support import ScriptedServer, SilentListener, correct

from distcache.client import (
    Client,
    ConnectionLost,
    Mode,
    NoUpstream,
    OperationTimeout,
    ProtocolViolation,
    Status,
    UpstreamDisconnected,
)
from distcache.protocol import encode_message, encode_request
from distcache.wire import Direction, Operation

P = Mode.PERSISTENT
TIMEOUT = 0.5


def reply(request, payload: bytes, *, uid_delta: int = 0, operation=None, direction=None) -> bytes:
    return encode_message(
        Direction.RESPONSE if direction is None else direction,
        (request.request_uid + uid_delta) & 0xFFFFFFFF,
        request.operation if operation is None else operation,
        payload,
    )


def first_connection_only(fault):
    """A script that misbehaves on the first connection and answers correctly afterwards."""

    def respond(index, request):
        return fault(request) if index == 0 else correct(index, request)

    return respond


@pytest.mark.parametrize("mode", [Mode.TEMPORARY, P, P | Mode.RETRY])
def test_a_server_that_never_answers_times_out_every_operation(mode):
    with SilentListener() as silent:
        client = Client(silent.address, mode, timeout=TIMEOUT)
        for _ in range(2):  # the next operation times out too: nothing hangs
            started = time.monotonic()
            with pytest.raises(OperationTimeout) as caught:
                client.have(b"k")
            assert isinstance(caught.value, TimeoutError)
            assert time.monotonic() - started < 10 * TIMEOUT + 5


def test_a_connect_that_never_completes_times_out():
    with SilentListener(backlog_full=True) as silent:
        client = Client(silent.address, Mode.TEMPORARY, timeout=TIMEOUT)
        with pytest.raises(OperationTimeout, match="connecting"):
            client.get(b"k")


FAULTS = {
    "unknown_uid": lambda request: reply(request, b"\x01", uid_delta=1),
    "operation_mismatch": lambda request: reply(request, b"\x01", operation=Operation.ADD),
    "wrong_direction": lambda request: reply(request, b"\x01", direction=Direction.REQUEST),
    "malformed_reply": lambda request: reply(request, b"\x00\x00"),
    "undefined_status": lambda request: reply(request, b"\x07"),
    # The B15 scenario: a rejected reply followed by the right one on the same connection.
    "then_right": lambda request: reply(request, b"\x01", uid_delta=5) + correct(0, request),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("mode", [P, P | Mode.LATE])
def test_a_protocol_violation_drops_the_connection_and_the_next_operation_works(fault, mode):
    reason = "unknown_uid" if fault == "then_right" else fault
    with ScriptedServer(first_connection_only(FAULTS[fault])) as server:
        client = Client(server.address, mode, timeout=5)
        with pytest.raises(ProtocolViolation) as caught:
            client.have(b"k")
        assert caught.value.reason == reason
        assert not client.connected
        assert client.have(b"k") is False  # a new connection; no hang, no stale reply
        assert server.connections == 2
        client.close()


def test_a_server_closing_mid_reply_is_a_lost_connection():
    def half_reply(index, request):
        return reply(request, b"x" * 3000)[:2100]  # one whole frame and part of the next

    with ScriptedServer(half_reply, hang_up=True) as server:
        client = Client(server.address, P, timeout=5)
        with pytest.raises(ConnectionLost):
            client.get(b"k")
        assert not client.connected


@pytest.mark.parametrize("mode", [P, P | Mode.RETRY])
def test_a_server_closing_without_reply_is_a_lost_connection_unless_retry_resends(mode):
    # Each connection answers its first request and closes at its second, unanswered.
    with ScriptedServer(correct, close_after=2) as server:
        client = Client(server.address, mode, timeout=5)
        assert client.have(b"a") is False
        if mode & Mode.RETRY:
            assert client.have(b"b") is False  # resent on a new connection
            assert server.connections == 2
        else:
            with pytest.raises(ConnectionLost):
                client.have(b"b")
            assert client.have(b"c") is False  # the next operation reconnects
        client.close()


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"", NoUpstream), (b"\x02", UpstreamDisconnected)],
)
@pytest.mark.parametrize("operation", ["add", "get", "remove", "have"])
def test_proxy_failure_replies_raise_and_keep_the_connection(payload, error, operation):
    def proxy(index, request):
        return reply(request, payload)

    with ScriptedServer(proxy) as server:
        client = Client(server.address, P, timeout=5)
        args = (b"k", b"session", 60_000) if operation == "add" else (b"k",)
        for _ in range(2):
            with pytest.raises(error):
                getattr(client, operation)(*args)
        assert client.connected
        assert server.connections == 1
        client.close()


@pytest.mark.parametrize(
    ("payload", "expected", "legacy"),
    [
        (b"\x01", None, None),
        (b"\x00", b"\x00", None),
        (b"\x03", b"\x03", None),
        (b"\xff", b"\xff", None),
        (b"ab", b"ab", None),
        (b"abcd", b"abcd", None),
        (b"abcde", b"abcde", b"abcde"),
    ],
)
def test_get_reply_semantics(payload, expected, legacy):
    def respond(index, request):
        return reply(request, payload)

    with ScriptedServer(respond) as server:
        assert Client(server.address, P, timeout=5).get(b"k") == expected
        legacy_client = Client(server.address, P, timeout=5, legacy_get_semantics=True)
        assert legacy_client.get(b"k") == legacy


def test_add_status_reports_each_refusal():
    codes = iter([Status.OK, Status.ADD_MATCHING_SESSION, Status.ADD_ID_RANGE])

    def respond(index, request):
        return request.respond_status(next(codes))

    with ScriptedServer(respond) as server:
        client = Client(server.address, P, timeout=5)
        assert client.add_status(b"k", b"v", 60_000) is Status.OK
        assert client.add_status(b"k", b"v", 60_000) is Status.ADD_MATCHING_SESSION
        assert client.add(b"k", b"v", 60_000) is False


def test_uids_count_from_one_per_client_across_reconnects():
    with ScriptedServer(correct) as server:
        for _ in range(2):
            client = Client(server.address, Mode.TEMPORARY, timeout=5)
            client.have(b"a")
            client.get(b"b")
            client.remove(b"c")
        server.wait_for_requests(6)
        uids = [request.request_uid for _, request in server.requests]
        assert uids == [1, 2, 3, 1, 2, 3]
        assert server.connections == 6


def test_requests_are_encoded_exactly_and_sent_in_one_piece():
    with ScriptedServer(correct) as server:
        Client(server.address, P, timeout=5).add(b"k1", b"v", 1000)
        server.wait_for_requests(1)
        _, request = server.requests[0]
        assert request.payload == bytes.fromhex("000003e8000000026b3176")
        assert encode_request(1, Operation.ADD, request.payload).hex() == (
            "00110000000000000100000100" + "0b" + "000003e8000000026b3176"
        )
