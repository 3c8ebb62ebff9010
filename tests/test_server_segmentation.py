"""Segmentation torture: however the request bytes are cut into writes, the answers are the same.

Each plain request/answer vector (no sleeps, no reconnects, no defect flags) is replayed as one
byte stream: one byte per write, and cut at every offset inside every frame header; hypothesis
adds arbitrary cut points on a sample. The answers must be exactly the vector's recorded bytes.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverproc import ServerThread, address_of

from distcache.conformance import legacy_vector_files
from distcache.conformance.vectors import Expect, ExpectClose, Reconnect, Send, Sleep
from distcache.wire import HEADER_SIZE, MAX_FRAME_DATA

READ_TIMEOUT = 5.0
#: Pause after each write so that the server reads each piece separately.
PAUSE = 0.002
BYTE_BY_BYTE_LIMIT = 400  # longer streams are only cut inside headers


def _plain(vector) -> bool:
    kinds = {type(step) for step in vector.steps}
    return not vector.unsafe and not kinds & {Sleep, Reconnect} and Send in kinds


CASES = [
    (
        vector.id,
        vector.sessions or 512,
        b"".join(s.data for s in vector.steps if isinstance(s, Send)),
        b"".join(s.data for s in vector.steps if isinstance(s, Expect)),
        any(isinstance(s, ExpectClose) for s in vector.steps),
    )
    for file in legacy_vector_files()
    if file.target_kind == "server"
    for vector in file
    if _plain(vector)
]


def _header_cuts(stream: bytes) -> list[int]:
    """Every offset 1..13 inside every frame header of the stream (as far as it parses)."""
    cuts, pos = [], 0
    while pos + HEADER_SIZE <= len(stream):
        cuts += range(pos + 1, pos + HEADER_SIZE)
        data_len = int.from_bytes(stream[pos + 12 : pos + 14], "big")
        if data_len > MAX_FRAME_DATA:
            break
        pos += HEADER_SIZE + data_len
    return [cut for cut in cuts if cut < len(stream)]


def _pieces(stream: bytes, cuts) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


async def _exchange(address: str, pieces: list[bytes], expected_size: int, closes: bool) -> bytes:
    host, port = address.split(":")[1:]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(PAUSE)
        received = await asyncio.wait_for(reader.readexactly(expected_size), READ_TIMEOUT)
        if closes:
            assert await asyncio.wait_for(reader.read(1), READ_TIMEOUT) == b"", "no close"
        return received
    finally:
        writer.close()


@pytest.fixture(scope="module")
def servers():
    thread = ServerThread()
    yield thread
    thread.close()


def _run_all(servers, cut_for) -> dict[str, bytes | str]:
    async def one(case):
        _vector_id, sessions, stream, expected, closes = case
        server = servers.start(sessions)
        try:
            pieces = _pieces(stream, cut_for(stream))
            return await _exchange(address_of(server), pieces, len(expected), closes)
        except (AssertionError, OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            return f"{type(error).__name__}: {error}"
        finally:
            servers.stop(server)

    async def everything():
        return await asyncio.gather(*(one(case) for case in CASES))

    return dict(zip([c[0] for c in CASES], asyncio.run(everything()), strict=True))


@pytest.fixture(scope="module")
def one_byte_per_write(servers):
    def cuts(stream):
        if len(stream) <= BYTE_BY_BYTE_LIMIT:
            return range(1, len(stream))
        return _header_cuts(stream)

    return _run_all(servers, cuts)


@pytest.fixture(scope="module")
def cut_in_headers(servers):
    return _run_all(servers, _header_cuts)


def test_there_are_enough_plain_vectors():
    assert len(CASES) > 100
    assert sum(len(c[2]) <= BYTE_BY_BYTE_LIMIT for c in CASES) > 70


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_one_byte_per_write(one_byte_per_write, case):
    assert one_byte_per_write[case[0]] == case[3]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_cut_at_every_header_offset(cut_in_headers, case):
    assert cut_in_headers[case[0]] == case[3]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_arbitrary_cut_points(servers, data):
    vector_id, sessions, stream, expected, closes = data.draw(st.sampled_from(CASES))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))
    server = servers.start(sessions)
    try:
        got = asyncio.run(
            _exchange(address_of(server), _pieces(stream, cuts), len(expected), closes)
        )
    finally:
        servers.stop(server)
    assert got == expected, vector_id
