"""The asyncio client: pipelining on one connection against a real dc_server, replies matched by
uid in any order, bounded in-flight requests, and every pending request failing with a typed error
when its connection goes."""

from __future__ import annotations

import asyncio

import pytest
from serverproc import DcServer, dc_server, free_port
from test_client_support import Relay, ScriptedServer, SilentListener, correct

from distcache.client import (
    AsyncClient,
    ConnectionFailed,
    ConnectionLost,
    InvalidRequest,
    Mode,
    NoUpstream,
    OperationTimeout,
    ProtocolViolation,
    Status,
)
from distcache.protocol import encode_message
from distcache.wire import Direction

P = Mode.PERSISTENT
LONG = 20.0


@pytest.fixture(scope="module")
def server():
    with dc_server("-sessions", "1000") as running:
        yield running


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_200_concurrent_requests_share_one_connection(server):
    async def scenario(address):
        async with AsyncClient(address, timeout=LONG) as client:
            ids = [b"pipelined-%d" % i for i in range(200)]
            stored = await asyncio.gather(*(client.add(i, i * 50, 60_000) for i in ids))
            found = await asyncio.gather(*(client.get(i) for i in ids))
            present = await asyncio.gather(*(client.have(i) for i in ids))
            removed = await asyncio.gather(*(client.remove(i) for i in ids))
            return stored, found, present, removed, ids

    with Relay(server.listen) as relay:
        stored, found, present, removed, ids = run(scenario(relay.address))
        assert all(stored) and all(present) and all(removed)
        assert found == [i * 50 for i in ids]
        assert relay.connections == 1


def test_replies_in_reverse_order_are_matched_by_uid():
    # The script answers only once 200 requests wait, last first: a client that waited for each
    # reply before sending the next request would time out here.
    def echo_id(index, request):
        return encode_message(
            Direction.RESPONSE, request.request_uid, request.operation, b"value-" + request.payload
        )

    async def scenario(address):
        async with AsyncClient(address, timeout=LONG) as client:
            return await asyncio.gather(*(client.get(b"%d" % i) for i in range(200)))

    with ScriptedServer(echo_id, batch=200) as scripted:
        assert run(scenario(scripted.address)) == [b"value-%d" % i for i in range(200)]
        assert scripted.connections == 1


def test_in_flight_requests_are_bounded():
    async def scenario(address, scripted):
        client = AsyncClient(address, timeout=LONG, max_in_flight=5)
        calls = [asyncio.create_task(client.have(b"%d" % i)) for i in range(12)]
        await asyncio.to_thread(scripted.wait_for_requests, 5)
        await asyncio.sleep(0.3)  # room for a sixth request to go out, if the bound leaked
        sent = len(scripted.requests)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        return sent

    with ScriptedServer(lambda index, request: None) as scripted:  # never answers
        assert run(scenario(scripted.address, scripted)) == 5
        assert scripted.connections == 1


def test_close_fails_requests_in_flight_without_resending():
    async def scenario(address):
        client = AsyncClient(address, Mode.PERSISTENT | Mode.RETRY, timeout=LONG)
        await client.open()
        calls = [asyncio.create_task(client.get(b"%d" % i)) for i in range(3)]
        await asyncio.sleep(0.2)
        await client.close()
        return await asyncio.gather(*calls, return_exceptions=True)

    with ScriptedServer(lambda index, request: None) as scripted:
        results = run(scenario(scripted.address))
        assert all(isinstance(r, ConnectionLost) for r in results), results
        assert scripted.connections == 1


def test_connection_loss_fails_every_pending_request():
    async def scenario(address, mode):
        client = AsyncClient(address, mode, timeout=LONG)
        await client.have(b"warm")  # a reused connection from here on
        results = await asyncio.gather(
            *(client.have(b"%d" % i) for i in range(10)), return_exceptions=True
        )
        await client.close()
        return results

    def first_answered_then_silent(index, request):
        # The first connection answers its first request only, and closes (close_after) once
        # 11 have arrived: ten requests in flight when it goes. Later connections answer all.
        if index == 0 and request.payload != b"warm":
            return None
        return correct(index, request)

    with ScriptedServer(first_answered_then_silent, close_after=11) as scripted:
        results = run(scenario(scripted.address, P))
        assert all(isinstance(r, ConnectionLost) for r in results), results
    with ScriptedServer(first_answered_then_silent, close_after=11) as scripted:
        assert run(scenario(scripted.address, P | Mode.RETRY)) == [False] * 10
        assert scripted.connections == 2


def test_protocol_violation_fails_pending_requests_and_the_next_operation_works():
    arrived = []

    def wrong_uid_first(index, request):
        if index == 0:  # silent until all five are in flight: then one answer, to nobody
            arrived.append(request)
            if len(arrived) < 5:
                return None
            return encode_message(
                Direction.RESPONSE, request.request_uid ^ 0x8000, request.operation, b"\x01"
            )
        return correct(index, request)

    async def scenario(address):
        client = AsyncClient(address, P, timeout=LONG)
        results = await asyncio.gather(
            *(client.have(b"%d" % i) for i in range(5)), return_exceptions=True
        )
        after = await client.have(b"next")
        await client.close()
        return results, after

    with ScriptedServer(wrong_uid_first) as scripted:
        results, after = run(scenario(scripted.address))
        assert all(isinstance(r, ProtocolViolation) for r in results), results
        assert after is False
        assert scripted.connections == 2


def test_a_silent_server_times_out_and_the_next_operation_too():
    async def scenario(address):
        client = AsyncClient(address, P, timeout=0.3)
        errors = []
        for _ in range(2):
            try:
                await client.get(b"k")
            except OperationTimeout as error:
                errors.append(error)
        await client.close()
        return errors

    with SilentListener() as silent:
        errors = run(scenario(silent.address))
        assert len(errors) == 2 and all(isinstance(e, TimeoutError) for e in errors)


def test_server_restart_with_and_without_retry():
    async def scenario(listen, mode):
        client = AsyncClient(listen, mode, timeout=LONG)
        server = DcServer([], listen=listen)
        await client.open()
        assert await client.add(b"k", b"v", 60_000)
        server.stop()
        with pytest.raises(ConnectionFailed):
            for _ in range(3):  # the loss may be noticed by the reader already, or by this call
                try:
                    await client.have(b"k")
                except ConnectionLost:
                    continue
        server = DcServer([], listen=listen)
        try:
            assert await client.have(b"k") is False
        finally:
            server.stop()
            await client.close()

    for mode in (P, P | Mode.RETRY, P | Mode.RETRY | Mode.LATE):
        run(scenario(f"IP:127.0.0.1:{free_port()}", mode))


def test_temporary_mode_opens_one_connection_per_operation(server):
    async def scenario(address):
        client = AsyncClient(address, Mode.TEMPORARY, timeout=LONG)
        await client.open()
        assert not client.connected
        assert await client.add(b"temp", b"v", 60_000)
        assert await client.get(b"temp") == b"v"
        assert await client.remove(b"temp")

    with Relay(server.listen) as relay:
        run(scenario(relay.address))
        assert relay.connections == 3


def test_status_results_and_local_validation(server):
    async def scenario(address):
        async with AsyncClient(address, P | Mode.LATE, timeout=LONG) as client:
            assert not client.connected  # LATE: open() did not connect
            assert await client.add_status(b"s", b"v", 60_000) is Status.OK
            assert await client.add_status(b"s", b"v", 60_000) is Status.ADD_MATCHING_SESSION
            assert await client.add_status(b"x" * 65, b"v", 60_000) is Status.ADD_ID_RANGE
            with pytest.raises(InvalidRequest):
                await client.add(b"s", b"", 60_000)
            assert await client.remove(b"s")

    run(scenario(server.listen))


def test_a_proxy_without_upstream_answers_empty():
    async def scenario(address):
        async with AsyncClient(address, timeout=LONG) as client:
            with pytest.raises(NoUpstream):
                await client.get(b"k")
            assert client.connected

    with ScriptedServer(lambda index, request: request.respond(b"")) as scripted:
        run(scenario(scripted.address))


def test_open_times_out_on_a_connect_that_never_completes():
    async def scenario(address):
        with pytest.raises(OperationTimeout, match="connecting"):
            await AsyncClient(address, timeout=0.3).open()

    with SilentListener(backlog_full=True) as silent:
        run(scenario(silent.address))
