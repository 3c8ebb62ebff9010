"""dc_client as a program: real proxy processes in front of real or scripted servers.

Covers what the vectors cannot: many clients at once, the server restarted under load, every
trigger that made the legacy proxy abort, the in-flight and connection bounds, idle and retry
timing (with short values and generous margins), and the command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest
from proxyproc import dc_client, run_dc_client
from scripted_upstream import CLOSE, ScriptedUpstream
from serverproc import ServerThread, dc_server, free_port

from distcache.protocol import (
    NEED_DATA,
    MessageDecoder,
    add_request,
    encode_message,
    encode_request,
    get_request,
    have_request,
)
from distcache.wire import Direction, Operation

EMPTY = b""
DISCONNECTED = b"\x02"


@pytest.fixture(scope="module")
def loop_thread():
    thread = ServerThread()
    yield thread
    thread.close()


def ask(sock: socket.socket, request: bytes, timeout: float = 5.0):
    """Send one request and return its decoded reply (None if the proxy closed instead)."""
    sock.settimeout(timeout)
    sock.sendall(request)
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    while True:
        event = decoder.next_event()
        if event is not NEED_DATA:
            return event if hasattr(event, "payload") else None
        decoder.receive_data(sock.recv(65536))


def ask_until(sock: socket.socket, payload: bytes, timeout: float = 15.0) -> None:
    """Ask HAVE until the answer is ``payload`` (a reconnect whose time a loaded host decides)."""
    deadline = time.monotonic() + timeout
    uid = 1000
    while (reply := ask(sock, have_request(uid, b"x")).payload) != payload:
        assert time.monotonic() < deadline, f"still answered {reply!r}"
        uid += 1
        time.sleep(0.05)


def ok(request, number):
    """A scripted server that answers every request with the status OK."""
    return request.respond(b"\x00")


# -- transparency and multiplexing ------------------------------------------------------------


async def _connect_unix(path: str):
    """Connect, waiting while the listen backlog is full (the kernel refuses UNIX connects with
    EAGAIN then, and hundreds arrive at once here)."""
    for _ in range(100):
        try:
            return await asyncio.open_unix_connection(path)
        except BlockingIOError:
            await asyncio.sleep(0.02)
    raise AssertionError("the proxy never accepted")


async def _client_session(path: str, index: int) -> None:
    reader, writer = await _connect_unix(path)
    session_id = f"client-{index}".encode()
    session = os.urandom(50 + index)
    decoder = MessageDecoder(receives=Direction.RESPONSE)

    async def call(request: bytes):
        writer.write(request)
        while (event := decoder.next_event()) is NEED_DATA:
            decoder.receive_data(await reader.read(65536))
        return event

    uid = 1000 * index
    reply = await call(add_request(uid, session_id, session, 60_000))
    assert (reply.request_uid, reply.operation, reply.payload) == (uid, Operation.ADD, b"\x00")
    reply = await call(get_request(uid + 1, session_id))
    assert (reply.request_uid, reply.payload) == (uid + 1, session)
    writer.close()


def test_three_hundred_clients_at_once(tmp_path):
    path = str(tmp_path / "px")
    with dc_server() as server, dc_client(path, server.listen):

        async def all_clients():
            await asyncio.gather(*(_client_session(path, i) for i in range(300)))

        asyncio.run(all_clients())


def test_upstream_sees_fresh_distinct_uids(loop_thread, tmp_path):
    upstream = ScriptedUpstream(loop_thread, ok)
    address = upstream.start()
    path = str(tmp_path / "px")
    with dc_client(path, address) as proxy:
        first, second = proxy.connect(), proxy.connect()
        for uid in (5, 5, 0xFFFFFFFF):  # clients may reuse uids; upstream must not see that
            for sock in (first, second):
                reply = ask(sock, have_request(uid, b"x"))
                assert reply.request_uid == uid
    upstream.stop()
    assert [request.request_uid for _, request in upstream.requests] == [1, 2, 3, 4, 5, 6]


def test_pipelined_requests_answered_in_order_behind_large_replies(tmp_path):
    big = os.urandom(30_000)
    path = str(tmp_path / "px")
    with dc_server() as server, dc_client(path, server.listen) as proxy:
        sock = proxy.connect()
        assert ask(sock, add_request(1, b"big", big, 60_000)).payload == b"\x00"
        burst = b"".join(
            get_request(10 + i, b"big") if i % 2 == 0 else have_request(10 + i, b"big")
            for i in range(20)
        )
        sock.sendall(burst)
        decoder = MessageDecoder(receives=Direction.RESPONSE)
        replies = []
        while len(replies) < 20:
            decoder.receive_data(sock.recv(65536))
            replies += list(decoder.events())
        assert [r.request_uid for r in replies] == list(range(10, 30))
        assert all(r.payload == (big if i % 2 == 0 else b"\x00") for i, r in enumerate(replies))


# -- the server going away ----------------------------------------------------------------------


def test_no_server_means_empty_replies_then_forwarding_once_it_appears(tmp_path):
    port = free_port()
    path = str(tmp_path / "px")
    with dc_client(path, f"IP:127.0.0.1:{port}", "-retry", "200") as proxy:
        sock = proxy.connect()
        assert ask(sock, have_request(3, b"k")).payload == EMPTY
        with dc_server(listen=f"IP:127.0.0.1:{port}"):
            deadline = time.monotonic() + 15
            while (payload := ask(sock, have_request(4, b"k")).payload) == EMPTY:
                assert time.monotonic() < deadline, "never reconnected"
                time.sleep(0.05)
            assert payload == b"\x01"  # a real answer: absent


def test_server_restarted_mid_run_loses_and_mixes_nothing(tmp_path):
    """Clients keep sending while the server is stopped and started again. Every request gets
    exactly one reply with its own uid and operation: a real answer, EMPTY (no server) or
    DISCONNECTED (in flight when the server went); sessions read back are always the right ones;
    and forwarding resumes."""
    port = free_port()
    listen = f"IP:127.0.0.1:{port}"
    path = str(tmp_path / "px")
    outcomes: dict[str, int] = {"real": 0, "empty": 0, "disconnected": 0}

    async def client(index: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        decoder = MessageDecoder(receives=Direction.RESPONSE)
        session = f"session-{index}".encode() * 4
        uid = index << 20
        while not stop.is_set():
            uid += 1
            operation = (Operation.ADD, Operation.GET, Operation.HAVE)[uid % 3]
            if operation is Operation.ADD:
                request = add_request(uid, b"id-%d" % index, session, 60_000)
            else:
                request = encode_request(uid, operation, b"id-%d" % index)
            writer.write(request)
            while (reply := decoder.next_event()) is NEED_DATA:
                decoder.receive_data(await reader.read(65536))
            assert (reply.request_uid, reply.operation) == (uid, operation)
            if reply.payload == EMPTY:
                outcomes["empty"] += 1
            elif reply.payload == DISCONNECTED:
                outcomes["disconnected"] += 1
            else:
                outcomes["real"] += 1
                if operation is Operation.GET and len(reply.payload) > 1:
                    assert reply.payload == session
            await asyncio.sleep(0.002)
        writer.close()

    async def run(server_control) -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(i, stop)) for i in range(20)]
        await asyncio.to_thread(server_control)
        stop.set()
        await asyncio.gather(*clients)

    def restart_twice() -> None:
        for _ in range(2):
            with dc_server(listen=listen):
                time.sleep(0.6)
            time.sleep(0.3)
        with dc_server(listen=listen):
            served_before = outcomes["real"]  # the previous server is gone: any more are new
            deadline = time.monotonic() + 15
            while outcomes["real"] <= served_before:
                assert time.monotonic() < deadline, "forwarding did not resume"
                time.sleep(0.05)

    with dc_client(path, listen, "-retry", "100") as proxy:
        try:
            asyncio.run(run(restart_twice))
        finally:
            print(proxy.stderr)
        assert proxy.alive
    assert outcomes["real"] and outcomes["empty"]


# -- what made the legacy proxy abort -----------------------------------------------------------


def test_client_leaving_with_a_request_in_flight(loop_thread, tmp_path):
    async def slow(request, number):
        await asyncio.sleep(0.3)
        return request.respond(b"\x00")

    upstream = ScriptedUpstream(loop_thread, slow)
    path = str(tmp_path / "px")
    with dc_client(path, upstream.start()) as proxy:
        leaver = proxy.connect()
        leaver.sendall(have_request(1, b"x"))
        time.sleep(0.05)
        leaver.close()  # the reply arrives 250 ms later, for nobody
        other = proxy.connect()
        time.sleep(0.4)
        assert ask(other, have_request(2, b"y")).payload == b"\x00"
        assert proxy.alive
    upstream.stop()


@pytest.mark.parametrize(
    "misbehaviour",
    ["unknown uid", "wrong operation", "bad version", "garbage", "request instead of reply"],
)
def test_misbehaving_server_is_dropped_and_reconnected(loop_thread, tmp_path, misbehaviour):
    def script(request, number):
        if number > 1:
            return request.respond(b"\x00")  # behaves after the reconnect
        if misbehaviour == "unknown uid":
            return encode_message(
                Direction.RESPONSE, request.request_uid + 7, request.operation, b"\x00"
            )
        if misbehaviour == "wrong operation":
            return encode_message(Direction.RESPONSE, request.request_uid, Operation.ADD, b"\x00")
        if misbehaviour == "bad version":
            return b"\x00\x12" + request.respond(b"\x00")[2:]
        if misbehaviour == "garbage":
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        return encode_message(Direction.REQUEST, request.request_uid, request.operation, b"")

    upstream = ScriptedUpstream(loop_thread, script)
    path = str(tmp_path / "px")
    # -retry long enough that the next request surely comes before the retry, even on a loaded
    # host; the reconnect after it is waited for.
    with dc_client(path, upstream.start(), "-retry", "2000") as proxy:
        sock = proxy.connect()
        reply = ask(sock, have_request(9, b"x"))
        assert (reply.request_uid, reply.payload) == (9, DISCONNECTED)
        assert ask(sock, have_request(10, b"x")).payload == EMPTY  # dropped, not yet retried
        ask_until(sock, b"\x00")
        assert proxy.alive
    upstream.stop()
    assert "server" in proxy.stderr  # the drop was logged


def test_a_lost_link_is_reconnected_at_once_not_after_the_retry_delay(loop_thread, tmp_path):
    def script(request, number):
        return CLOSE if number == 1 else request.respond(b"\x00")

    upstream = ScriptedUpstream(loop_thread, script)
    path = str(tmp_path / "px")
    with dc_client(path, upstream.start(), "-retry", "60000") as proxy:
        sock = proxy.connect()
        reply = ask(sock, have_request(9, b"x"))
        assert (reply.request_uid, reply.payload) == (9, DISCONNECTED)
        assert ask(sock, have_request(10, b"x")).payload == b"\x00"  # not EMPTY for 60 s
        assert proxy.alive
    upstream.stop()


def test_in_flight_requests_answered_disconnected_when_server_drops(loop_thread, tmp_path):
    def script(request, number):
        if request.payload == b"drop":
            return CLOSE

        async def never():
            await asyncio.sleep(30)
            return b""

        return never()

    upstream = ScriptedUpstream(loop_thread, script)
    path = str(tmp_path / "px")
    with dc_client(path, upstream.start()) as proxy:
        waiting = [proxy.connect() for _ in range(5)]
        for uid, sock in enumerate(waiting):
            sock.sendall(get_request(uid, b"held"))
        # All five in flight upstream before the drop (else some would wait for the reconnect).
        deadline = time.monotonic() + 10
        while len(upstream.requests) < 5:
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.02)
        trigger = proxy.connect()
        assert ask(trigger, have_request(99, b"drop")).payload == DISCONNECTED
        for uid, sock in enumerate(waiting):
            reply = ask(sock, b"")
            assert (reply.request_uid, reply.operation, reply.payload) == (
                uid,
                Operation.GET,
                DISCONNECTED,
            )
    upstream.stop()


# -- bounds -----------------------------------------------------------------------------------


def test_in_flight_bound_makes_requests_wait(loop_thread, tmp_path):
    in_flight = []
    peak = [0]

    async def slow(request, number):
        in_flight.append(request)
        peak[0] = max(peak[0], len(in_flight))
        await asyncio.sleep(0.05)
        in_flight.remove(request)
        return request.respond(b"\x01")

    upstream = ScriptedUpstream(loop_thread, slow)
    path = str(tmp_path / "px")
    with dc_client(path, upstream.start(), "-maxinflight", "3") as proxy:
        socks = [proxy.connect() for _ in range(12)]
        for uid, sock in enumerate(socks):
            sock.sendall(have_request(uid, b"k"))
        for uid, sock in enumerate(socks):
            assert ask(sock, b"").request_uid == uid
    upstream.stop()
    assert peak[0] == 3
    assert len(upstream.requests) == 12


def test_at_the_connection_cap_the_longest_idle_local_connection_makes_room(tmp_path):
    path = str(tmp_path / "px")
    with dc_server() as server, dc_client(path, server.listen, "-maxconns", "3") as proxy:
        kept = [proxy.connect() for _ in range(3)]
        for sock in kept:  # kept[0] is now the longest idle
            assert ask(sock, have_request(1, b"k")).payload == b"\x01"
            time.sleep(0.05)
        extra = proxy.connect()
        assert ask(extra, have_request(2, b"k")).payload == b"\x01"
        kept[0].settimeout(3)
        assert kept[0].recv(10) == b""
        for sock in kept[1:]:
            assert ask(sock, have_request(3, b"k")).payload == b"\x01"
    assert "closing the longest idle one" in proxy.stderr


# -- timers -------------------------------------------------------------------------------------


def test_idle_connections_closed_but_not_busy_ones(loop_thread, tmp_path):
    async def slow(request, number):
        await asyncio.sleep(0.6)
        return request.respond(b"\x00")

    upstream = ScriptedUpstream(loop_thread, slow)
    path = str(tmp_path / "px")
    with dc_client(path, upstream.start(), "-idle", "250") as proxy:
        idle, busy = proxy.connect(), proxy.connect()
        started = time.monotonic()
        # A request in progress longer than -idle keeps its connection open until answered.
        assert ask(busy, have_request(1, b"k")).payload == b"\x00"
        idle.settimeout(3)
        assert idle.recv(10) == b""
        assert time.monotonic() - started >= 0.25
    upstream.stop()


def test_idle_zero_never_closes(tmp_path):
    path = str(tmp_path / "px")
    with dc_server() as server, dc_client(path, server.listen, "-idle", "0") as proxy:
        sock = proxy.connect()
        time.sleep(0.5)
        assert ask(sock, have_request(1, b"k")).payload == b"\x01"


def test_retry_waits_for_the_interval(tmp_path):
    port = free_port()
    path = str(tmp_path / "px")
    with dc_client(path, f"IP:127.0.0.1:{port}", "-retry", "3000") as proxy:
        sock = proxy.connect()
        assert ask(sock, have_request(1, b"k")).payload == EMPTY
        with dc_server(listen=f"IP:127.0.0.1:{port}"):
            # Up now, but the proxy only tries again on its 3 s timer (a loaded host's start-up
            # of the server may take longer, but falls on a tick only by a rare chance).
            assert ask(sock, have_request(2, b"k")).payload == EMPTY
            ask_until(sock, b"\x01")


# -- command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error, no server specified!"),
        (["-server", "UNIX:/a", "-server", "UNIX:/b"], "Error, too many servers"),
        (["-server", "UNIX:/a", "-retry", "0"], "Error, -retry given an invalid argument"),
        (["-server", "UNIX:/a", "-retry", "3600001"], "Error, -retry given an invalid argument"),
        (["-server", "UNIX:/a", "-idle", "x"], "Error, -idle given an invalid argument"),
        (["-server"], "Error, -server requires an argument"),
        (["-deamon"], 'Error, "-deamon" not recognised'),
        (["-server", "IP:9001"], "Error, internal initialisation problems"),
        (["-server", "UNIX:/a", "-listen", "nonsense"], "Error, bad listen address"),
    ],
)
def test_start_up_errors(args, message):
    result = run_dc_client(*args)
    assert result.returncode == 1
    assert message in result.stderr.splitlines()


def test_help_is_processed_in_order():
    assert run_dc_client("-h", "-bogus").returncode == 0
    assert run_dc_client("-bogus", "-h").returncode == 1


def test_killable_and_pidfile(tmp_path):
    path = str(tmp_path / "px")
    pidfile = tmp_path / "pid"
    with dc_server() as server:
        plain = dc_client(path, server.listen, "-pidfile", str(pidfile))
        with plain as proxy:
            assert pidfile.read_text() == str(proxy.process.pid)
            proxy.process.send_signal(signal.SIGUSR1)
            time.sleep(0.3)
            assert proxy.alive  # not killable: ignored
        assert not pidfile.exists(), "a clean exit removes the pid file"
        path2 = str(tmp_path / "px2")
        with dc_client(path2, server.listen, "-killable") as proxy:
            time.sleep(0.2)
            proxy.process.send_signal(signal.SIGUSR2)
            assert proxy.process.wait(5) == 0
            assert not os.path.exists(path2)
