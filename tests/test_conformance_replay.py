"""The vector loader and the replayer, against a real server process over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distcache.conformance import (
    VectorFormatError,
    legacy_vector_files,
    load_vector_file,
    reference_vector_files,
    replay_sync,
)
from distcache.conformance.record import record_vector
from distcache.conformance.targets import free_tcp_address
from distcache.conformance.vectors import (
    Expect,
    ExpectClose,
    ExpectSilence,
    ExpectTargetDies,
    Send,
    Vector,
)
from distcache.protocol import encode_status, have_request
from distcache.wire import Operation, Status

HERE = Path(__file__).parent


@pytest.fixture
def server():
    address = free_tcp_address()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "faulty_servers.py"), "-listen", address],
        stderr=subprocess.DEVNULL,
    )
    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield address
    process.terminate()
    process.wait(5)


def _vector(vector_id: str):
    for vector_file in legacy_vector_files():
        for vector in vector_file:
            if vector.id == vector_id:
                return vector
    raise KeyError(vector_id)


def test_every_shipped_vector_file_loads():
    files = legacy_vector_files()
    assert sum(len(f.vectors) for f in files) == 239
    assert {f.target_kind for f in files} == {"server", "proxy"}
    assert all(v.steps for f in files for v in f)
    reference = reference_vector_files()
    assert reference, "the safe-behaviour recordings ship with the package"
    unsafe = {v.id for f in files for v in f if v.unsafe}
    assert {v.id for f in reference for v in f} == unsafe


def test_bad_files_give_typed_one_line_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(VectorFormatError, match="not JSON"):
        load_vector_file(path)
    document = {"format": "distcache-vectors/1", "group": "g", "target_kind": "server"}
    document["vectors"] = [{"id": "x", "steps": [{"send": "zz"}]}]
    path.write_text(json.dumps(document))
    with pytest.raises(VectorFormatError, match="not valid hex"):
        load_vector_file(path)
    document["vectors"] = [{"id": "x", "steps": [{"teleport": True}]}]
    path.write_text(json.dumps(document))
    with pytest.raises(VectorFormatError, match="unknown step kind"):
        load_vector_file(path)


def test_a_recorded_vector_replays_cleanly(server):
    result = replay_sync(_vector("server-ops-001"), server)
    assert result.passed, result.mismatch
    assert result.mismatch is None
    assert [e.dir for e in result.wire.entries].count("sent") == 2


def test_a_wrong_expectation_reports_step_and_both_hex_strings(server):
    vector = _vector("server-ops-003")
    steps = list(vector.steps)
    index = next(i for i, s in enumerate(steps) if isinstance(s, Expect))
    wrong = bytes(steps[index].data[:-1]) + b"\x7f"
    steps[index] = Expect(wrong)
    result = replay_sync(dataclasses.replace(vector, steps=tuple(steps)), server)
    assert not result.passed
    assert result.mismatch.step == index
    assert result.mismatch.expected == wrong.hex()
    assert result.mismatch.got == vector.steps[index].data.hex()


def test_expect_close_accepts_end_of_file(server):
    vector = _vector("server-corrupt-001")
    assert any(isinstance(s, ExpectClose) for s in vector.steps)
    assert replay_sync(vector, server).passed


def test_a_missing_reply_times_out_at_the_step_timeout(server):
    vector = dataclasses.replace(
        _vector("server-ops-003"), steps=(Send(b"\x00\x11\x00\x00\x00"), Expect(b"x" * 15))
    )
    started = time.monotonic()
    result = replay_sync(vector, server, step_timeout=0.3)
    assert not result.passed and "nothing for 0.3 s" in result.mismatch.reason
    assert time.monotonic() - started < 5


def test_expect_target_dies_is_left_to_the_caller(server):
    vector = _vector("server-version-002")
    assert isinstance(vector.steps[-1], ExpectTargetDies)
    result = replay_sync(vector, server)
    assert result.reached_death == len(vector.steps) - 1


def test_an_unreachable_target_is_a_mismatch_not_an_exception():
    result = replay_sync(_vector("server-ops-003"), free_tcp_address(), step_timeout=0.5)
    assert not result.passed and "cannot connect" in result.mismatch.reason


def test_the_recorder_waits_for_a_late_answer_instead_of_recording_silence():
    """A target on a busy machine: the answer comes 300 ms after the request (three times the
    recorder's quiet time), in two halves 300 ms apart. The recording still shows the request
    answered by one whole frame, and nothing recorded where nothing was owed."""
    answer = encode_status(7, Operation.HAVE, Status.NOTOK)

    async def slow_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(request))
        await asyncio.sleep(0.3)
        writer.write(answer[:5])
        await asyncio.sleep(0.3)
        writer.write(answer[5:])
        await reader.read()  # until the recorder hangs up
        writer.close()

    request = have_request(7, b"id")
    vector = Vector("late-1", "late", "", frozenset(), {}, (Send(request[:6]), Send(request[6:])))

    async def record():
        server = await asyncio.start_server(slow_target, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await record_vector(vector, f"IP:127.0.0.1:{port}", timeout=2.0)

    steps = asyncio.run(record()).steps
    assert steps == (Send(request[:6]), ExpectSilence(100), Send(request[6:]), Expect(answer))
