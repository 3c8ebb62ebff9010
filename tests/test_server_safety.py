"""Where the legacy server crashed, flooded, lost answers or buffered without bound, ours is safe."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time

import pytest
from serverproc import ServerThread, address_of, dc_server, rss_kib

from distcache.cache import MemoryStore
from distcache.cache.errors import StoreUnavailableError
from distcache.protocol import (
    NEED_DATA,
    MessageDecoder,
    add_request,
    get_request,
    have_request,
    remove_request,
)
from distcache.server import Server, bind_listeners
from distcache.wire import Direction, Operation, Status

OK = bytes([Status.OK])
NOTOK = bytes([Status.NOTOK])
BIG_SESSION = bytes(range(256)) * 117 + b"tail"  # 29 956 bytes: a 15-frame GET answer
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def servers():
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture
def server(servers):
    server = servers.start()
    yield server
    servers.stop(server)


def connect(server) -> socket.socket:
    host, port = server.sockets[0].getsockname()[:2]
    return socket.create_connection((host, port), timeout=TIMEOUT)


def read_responses(sock: socket.socket, count: int) -> list:
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    responses = []
    while len(responses) < count:
        event = decoder.next_event()
        if event is NEED_DATA:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(responses)} of {count} answers"
            decoder.receive_data(chunk)
        else:
            responses.append(event)
    return responses


def ask(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    return read_responses(sock, 1)[0].payload


def assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b"", "the connection should be closed"


def test_bad_version_closes_only_that_connection(server):
    bystander = connect(server)
    assert ask(bystander, add_request(1, b"id", b"data", 60_000)) == OK
    for garbage in (b"\x00\x12\x00\x00\x00", b"GET / HTTP/1.0\r\n\r\n", b"SSH-2.0-x\r\n"):
        offender = connect(server)
        offender.sendall(garbage)
        assert_closed(offender)
        offender.close()
    assert ask(bystander, get_request(2, b"id")) == b"data"
    newcomer = connect(server)
    assert ask(newcomer, have_request(3, b"id")) == OK


def test_large_answer_pipelined_with_a_request_in_one_write(server):
    sock = connect(server)
    assert ask(sock, add_request(1, b"big", BIG_SESSION, 60_000)) == OK
    sock.sendall(get_request(2, b"big") + have_request(3, b"big") + get_request(4, b"none"))
    answers = read_responses(sock, 3)
    assert [a.request_uid for a in answers] == [2, 3, 4]
    assert [a.payload for a in answers] == [BIG_SESSION, OK, NOTOK]
    assert answers[0].frames == 15


def test_answers_to_requests_before_a_half_close_are_delivered(server):
    sock = connect(server)
    sock.sendall(add_request(1, b"k", b"v", 60_000) + get_request(2, b"k"))
    sock.shutdown(socket.SHUT_WR)
    assert [a.payload for a in read_responses(sock, 2)] == [OK, b"v"]
    assert_closed(sock)


def test_answers_before_a_corrupt_frame_are_delivered_then_closed(server):
    sock = connect(server)
    corrupt = bytearray(have_request(9, b"x"))
    corrupt[9] = 1  # op_class 1
    sock.sendall(add_request(1, b"k", b"v", 60_000) + have_request(2, b"k") + bytes(corrupt))
    assert [a.payload for a in read_responses(sock, 2)] == [OK, OK]
    assert_closed(sock)


def test_withheld_last_bytes_get_no_answer_until_they_arrive(server):
    sock = connect(server)
    request = get_request(5, b"session-id")
    for withheld in (1, 2, 3, 4, 5, len(request) - 1):
        sock.sendall(request[:-withheld])
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(TIMEOUT)
        sock.sendall(request[-withheld:])
        assert ask(sock, b"") == NOTOK
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # exactly one answer
        sock.settimeout(TIMEOUT)


def test_short_add_payload_closes_the_connection_without_an_answer(server):
    from distcache.protocol import encode_request

    sock = connect(server)
    sock.sendall(have_request(1, b"a") + encode_request(2, Operation.ADD, b"\x00" * 7))
    assert [a.payload for a in read_responses(sock, 1)] == [NOTOK]
    assert_closed(sock)


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(servers):
    server = servers.start(max_connections=2)
    try:
        first, second = connect(server), connect(server)
        assert ask(first, have_request(1, b"a")) == NOTOK
        time.sleep(0.05)
        assert ask(second, have_request(1, b"a")) == NOTOK
        third = connect(server)
        assert ask(third, have_request(2, b"a")) == NOTOK  # served, not refused
        assert_closed(first)  # the longest idle one made room
        assert ask(second, have_request(3, b"a")) == NOTOK
        assert server.connection_count == 2
    finally:
        servers.stop(server)


def test_a_client_that_never_reads_costs_bounded_memory():
    with dc_server() as proc:
        feeder = proc.connect()
        assert ask(feeder, add_request(1, b"big", BIG_SESSION, 600_000)) == OK
        baseline = rss_kib(proc.pid)
        hog = proc.connect()
        hog.settimeout(0.5)
        flood = get_request(7, b"big") * 500_000  # 8.5 MB of requests, 15 GB of answers
        sent = 0
        try:
            while sent < len(flood):
                sent += hog.send(flood[sent : sent + 65536])
        except TimeoutError:
            pass  # the server stopped reading: back-pressure reached the client
        assert sent < len(flood), "the server read every request without being read from"
        time.sleep(0.3)
        grown_kib = rss_kib(proc.pid) - baseline
        assert grown_kib < 32 * 1024, f"server grew by {grown_kib} KiB"
        assert ask(feeder, get_request(2, b"big")) == BIG_SESSION
        hog.close()
        assert ask(feeder, have_request(3, b"big")) == OK


class _SlowStore(MemoryStore):
    """A store whose every call yields to the event loop a random number of times, as a remote
    engine would; replies must still come back in request order."""

    __slots__ = ("_random",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._random = random.Random(7)

    async def _pause(self):
        for _ in range(self._random.randrange(4)):
            await asyncio.sleep(0)


for _name in ("add", "get", "remove", "have"):

    def _slow(name):
        async def method(self, *args):
            await self._pause()
            return await getattr(MemoryStore, name)(self, *args)

        return method

    setattr(_SlowStore, _name, _slow(_name))


def test_an_asynchronous_engine_answers_pipelined_requests_in_order(servers):
    store = _SlowStore(512)
    server = servers.call(_start_with(store))
    assert server._handler.sync_core is None  # the awaited path is the one under test
    try:
        sock = connect(server)
        batch = b"".join(
            add_request(4 * i, b"k%d" % i, b"v%d" % i, 60_000)
            + get_request(4 * i + 1, b"k%d" % i)
            + remove_request(4 * i + 2, b"k%d" % (i - 1))
            + have_request(4 * i + 3, b"k%d" % i)
            for i in range(200)
        )
        sock.sendall(batch)
        answers = read_responses(sock, 800)
        assert [a.request_uid for a in answers] == list(range(800))
        for i in range(200):
            add, get, remove, have = (a.payload for a in answers[4 * i : 4 * i + 4])
            assert (add, get, have) == (OK, b"v%d" % i, OK)
            assert remove == (NOTOK if i == 0 else OK)
    finally:
        servers.stop(server)


class _FailingStore(MemoryStore):
    """An engine with coroutines only, failing on chosen ids: "down" as an unreachable store
    does, "boom" with an error no engine should raise."""

    async def get(self, session_id):
        if session_id == b"down":
            raise StoreUnavailableError("store down")
        if session_id == b"boom":
            raise RuntimeError("engine bug")
        return await super().get(session_id)


class _RefusingStore(MemoryStore):
    """A ``CallbackStore`` whose ``submit`` raises for one id, as a closed engine would."""

    in_order = False

    def submit(self, method, args, done):
        if args == (b"refused",):
            raise RuntimeError("engine refused the call")
        call = asyncio.ensure_future(getattr(self, method)(*args))
        call.add_done_callback(lambda call: done(call.result()))


@pytest.mark.parametrize(
    ("store", "fatal_request", "logged"),
    [
        (_FailingStore, get_request(2, b"boom"), "engine bug"),
        (_RefusingStore, have_request(2, b"refused"), "engine refused the call"),
    ],
)
def test_engine_failures_answer_or_close_only_their_own_connection(
    servers, caplog, store, fatal_request, logged
):
    server = servers.call(_start_with(store(64)))
    try:
        broken, other = connect(server), connect(server)
        assert ask(other, add_request(1, b"id", b"session", 60_000)) == OK
        broken.sendall(fatal_request)
        assert_closed(broken)
        if store is _FailingStore:  # a failure answer, and the connection stays
            assert ask(other, get_request(3, b"down")) == NOTOK
        assert ask(other, get_request(4, b"id")) == b"session"
        assert "storage engine failed" in caplog.text and logged in caplog.text
    finally:
        servers.stop(server)


async def _start_with(store):
    server = Server(store)
    await server.start(bind_listeners("IP:127.0.0.1:0"))
    return server


def test_many_concurrent_clients_against_a_model(server):
    """50 clients, each with its own ids, mix every operation; each checks against its model."""
    host, port = server.sockets[0].getsockname()[:2]

    async def client(number: int) -> int:
        rng = random.Random(number)
        reader, writer = await asyncio.open_connection(host, port)
        model: dict[bytes, bytes] = {}
        checked = 0
        try:
            for uid in range(150):
                sid = b"c%d-%d" % (number, rng.randrange(6))
                op = rng.choice(list(Operation))
                if op is Operation.ADD:
                    session = rng.randbytes(rng.randrange(1, 3000))
                    request = add_request(uid, sid, session, 600_000)
                    expected = OK if sid not in model else bytes([Status.ADD_MATCHING_SESSION])
                    model.setdefault(sid, session)
                elif op is Operation.GET:
                    request, expected = get_request(uid, sid), model.get(sid, NOTOK)
                elif op is Operation.REMOVE:
                    request = remove_request(uid, sid)
                    expected = OK if model.pop(sid, None) is not None else NOTOK
                else:
                    request, expected = have_request(uid, sid), OK if sid in model else NOTOK
                writer.write(request)
                decoder = MessageDecoder(receives=Direction.RESPONSE)
                while (event := decoder.next_event()) is NEED_DATA:
                    decoder.receive_data(await asyncio.wait_for(reader.read(65536), TIMEOUT))
                assert (event.request_uid, event.operation) == (uid, op)
                assert event.payload == expected, (number, uid, op)
                checked += 1
        finally:
            writer.close()
        return checked

    async def everyone():
        return await asyncio.gather(*(client(n) for n in range(50)))

    assert sum(asyncio.run(everyone())) == 50 * 150


def test_concurrent_adds_of_one_id_store_it_exactly_once(server):
    results = []

    def racer(n):
        sock = connect(server)
        results.append(ask(sock, add_request(n, b"contested", b"%d" % n, 60_000)))
        sock.close()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results) == [OK] + [bytes([Status.ADD_MATCHING_SESSION])] * 19


def test_in_process_address_helper(server):
    assert address_of(server).startswith("IP:127.0.0.1:")
