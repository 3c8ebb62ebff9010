"""Every legacy server vector replayed against a fresh reference server.

Vectors that pin plain legacy behaviour must give identical bytes. Vectors flagged as legacy
defects (or as depending on the legacy machine's memory) get the safe behaviour instead, checked
explicitly: each request is answered exactly once, only once all of its bytes have arrived, in
order, with its own uid and operation, with the same answers as when the same bytes arrive in one
write; a corrupt frame closes only its connection (after the answers to the requests before it);
and the server keeps serving new connections.

The vectors run concurrently (each against its own server), so their sleeps overlap.
"""

from __future__ import annotations

import asyncio

import pytest
from serverproc import ServerThread, address_of

from distcache.conformance import legacy_vector_files, replay
from distcache.conformance.probe import Probe, ProbeError
from distcache.conformance.vectors import (
    Expect,
    ExpectClose,
    ExpectSilence,
    ExpectTargetDies,
    Reconnect,
    Send,
    Sleep,
)
from distcache.protocol import NEED_DATA, MessageDecoder, RemoteProtocolError, have_request
from distcache.wire import Direction, Status

STEP_TIMEOUT = 3.0  # generous: many vectors run at once
#: How long "no answer yet" is watched for while a request is incomplete.
QUIET_SECONDS = 0.05

SERVER_VECTORS = [
    vector for file in legacy_vector_files() if file.target_kind == "server" for vector in file
]
SAFE = [v for v in SERVER_VECTORS if not v.unsafe]
UNSAFE = [v for v in SERVER_VECTORS if v.unsafe]


def _sessions(vector) -> int:
    return vector.sessions or 512


@pytest.fixture(scope="module")
def servers():
    thread = ServerThread()
    yield thread
    thread.close()


async def _on_fresh_server(servers, vector, play):
    server = await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(_start(vector), servers.loop)
    )
    try:
        return await play(vector, address_of(server))
    finally:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.close(), servers.loop))


async def _start(vector):
    from distcache.cache import MemoryStore
    from distcache.server import Server, bind_listeners

    server = Server(MemoryStore(_sessions(vector)))
    await server.start(bind_listeners("IP:127.0.0.1:0"))
    return server


# -- the safe behaviour, for flagged vectors --------------------------------------------------


def _connections(vector) -> list[list]:
    """The vector's steps, cut at each reconnect; keeps sends and sleeps only."""
    parts: list[list] = [[]]
    for step in vector.steps:
        if isinstance(step, Reconnect):
            parts.append([])
        elif isinstance(step, Send | Sleep):
            parts[-1].append(step)
    return parts


def _split_requests(stream: bytes):
    """The requests a stream holds (with the byte count that completes each), and whether a
    protocol error follows them."""
    decoder = MessageDecoder(receives=Direction.REQUEST)
    requests = []
    for index in range(len(stream)):
        decoder.receive_data(stream[index : index + 1])
        try:
            event = decoder.next_event()
        except RemoteProtocolError:
            return requests, True
        if event is not NEED_DATA:
            requests.append((event, index + 1))
    return requests, False


async def _play_safely(vector, address) -> list[list[bytes]]:
    """Play the flagged vector's bytes, asserting the safe behaviour; return the answers."""
    answers = []
    for steps in _connections(vector):
        stream = b"".join(step.data for step in steps if isinstance(step, Send))
        requests, corrupt = _split_requests(stream)
        probe = await Probe.open(address, timeout=STEP_TIMEOUT)
        got: list[bytes] = []
        sent = 0
        try:
            for step in steps:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.ms / 1000)
                    continue
                await probe.send(step.data)
                sent += len(step.data)
                complete = [r for r, end in requests if end <= sent]
                while len(got) < len(complete):
                    response = await probe.response(STEP_TIMEOUT)
                    request = complete[len(got)]
                    assert (response.request_uid, response.operation) == (
                        request.request_uid,
                        request.operation,
                    ), f"{vector.id}: answer out of order or for another request"
                    got.append(response.payload)
                if sent < len(stream) and not corrupt:
                    # Nothing may answer an incomplete request (no flood, no early reply).
                    await probe.expect_silence(QUIET_SECONDS)
            assert len(got) == len(requests)
            if corrupt:
                await probe.expect_close(STEP_TIMEOUT)
            else:
                await probe.expect_silence(QUIET_SECONDS)
        finally:
            await probe.aclose()
        answers.append(got)
    # The server survived whatever the connections sent: a new client is served.
    probe = await Probe.open(address, timeout=STEP_TIMEOUT)
    try:
        reply = await probe.request(have_request(7, b"still-there?"), STEP_TIMEOUT)
        assert reply.payload in (bytes([Status.OK]), bytes([Status.NOTOK]))
    finally:
        await probe.aclose()
    return answers


async def _play_in_one_write(vector, address) -> list[list[bytes]]:
    """The answers when each connection's bytes arrive in a single write."""
    answers = []
    for steps in _connections(vector):
        stream = b"".join(step.data for step in steps if isinstance(step, Send))
        requests, _ = _split_requests(stream)
        probe = await Probe.open(address, timeout=STEP_TIMEOUT)
        try:
            await probe.send(stream)
            answers.append([(await probe.response(STEP_TIMEOUT)).payload for _ in requests])
        finally:
            await probe.aclose()
    return answers


# -- running everything once, concurrently ----------------------------------------------------


@pytest.fixture(scope="module")
def outcomes(servers):
    async def safe(vector):
        result = await _on_fresh_server(
            servers, vector, lambda v, a: replay(v, a, step_timeout=STEP_TIMEOUT)
        )
        return result.mismatch.describe() if not result.passed else None

    async def unsafe(vector):
        try:
            segmented = await _on_fresh_server(servers, vector, _play_safely)
            if any(isinstance(s, Sleep) for s in vector.steps):
                return None  # time-dependent answers: only the safe behaviour is checked
            whole = await _on_fresh_server(servers, vector, _play_in_one_write)
        except (AssertionError, ProbeError, OSError) as error:
            return f"{type(error).__name__}: {error}"
        if segmented != whole:
            return f"answers depend on segmentation: {segmented!r} != {whole!r}"
        return None

    async def everything():
        jobs = [safe(v) for v in SAFE] + [unsafe(v) for v in UNSAFE]
        results = await asyncio.gather(*jobs)
        return dict(zip([v.id for v in SAFE + UNSAFE], results, strict=True))

    return asyncio.run(everything())


def test_the_vector_set_is_complete():
    assert len(SERVER_VECTORS) == 195
    assert len(UNSAFE) >= 30


@pytest.mark.parametrize("vector", SAFE, ids=lambda v: v.id)
def test_safe_vector_gives_identical_bytes(outcomes, vector):
    assert outcomes[vector.id] is None, outcomes[vector.id]


@pytest.mark.parametrize("vector", UNSAFE, ids=lambda v: v.id)
def test_flagged_vector_gets_the_safe_behaviour(outcomes, vector):
    assert outcomes[vector.id] is None, outcomes[vector.id]


def test_flagged_vectors_cover_every_kind_of_legacy_defect():
    """The safe checks above meet: deaths, floods, closes of valid frames, lost answers."""
    kinds = {type(step) for v in UNSAFE for step in v.steps}
    assert {ExpectTargetDies, ExpectClose, ExpectSilence, Expect} <= kinds
