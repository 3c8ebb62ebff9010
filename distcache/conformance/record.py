"""Recording the safe-behaviour vectors from the reference implementation (``distcache
conformance --record DIR``).

For each legacy vector that pins a defect, the recorder plays the same client bytes against a
fresh reference target and writes down what it does instead: every ``send`` is followed by what
arrived (one ``expect`` per frame), a silence, or a close. Server vectors play against an
in-process reference server; proxy vectors against our ``dc_client`` started as a process in front
of one (or of nothing, when the vector's upstream is absent), exactly as the proxy cases start
the proxy under test. Two additions make the safe behaviour explicit: a frame left incomplete at
the end of the legacy vector (the flood vectors) is completed, so the recording shows exactly one
answer once the bytes arrive; and a vector whose connection ends closed (where the legacy process
died) goes on with a new connection and a HAVE, showing that the target still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError, have_request
from ..wire import HEADER_SIZE, PROTOCOL_LEVEL, Direction, fastcodec
from . import launch
from .probe import Probe
from .targets import InProcessSetup, ProxySetup, RefusingAddress, TargetUnavailable
from .vectors import (
    FORMAT,
    Expect,
    ExpectClose,
    ExpectSilence,
    Reconnect,
    Send,
    Sleep,
    Step,
    Vector,
    legacy_vector_files,
    step_to_json,
)

__all__ = ["record_reference_vectors", "record_vector"]

#: Quiet time that ends an observation, and the silence written for "nothing arrived".
QUIET_MS = 100
#: Header of an empty GET (uid 0): completes a header the legacy vector left unfinished.
_HEADER_TEMPLATE = fastcodec.encode_header(0, 0, 1, 1, 0, PROTOCOL_LEVEL)
_PROBE_ID = b"still-serving"
#: This project's proxy, started the way ``--proxy-cmd`` starts the proxy under test.
REFERENCE_PROXY_COMMAND = (
    f"{shlex.quote(sys.executable)} -m distcache.cli.dc_client -listen {{listen}} "
    "-server {upstream} -retry {retry_ms} -idle {idle_ms}"
)
RECORDED_FROM = {
    "server": "distcache reference server (Python), in-process, loopback TCP",
    "proxy": "distcache dc_client (Python) in front of the reference server, loopback TCP",
}


def _frames(data: bytes) -> list[bytes]:
    """Cut received bytes into frames (for one ``expect`` each); a torn tail stays whole."""
    frames, pos = [], 0
    while len(data) - pos >= HEADER_SIZE:
        size = fastcodec.frame_size_at(data, pos)
        frames.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        frames.append(data[pos:])
    return frames


def _completion(data: bytes) -> bytes:
    """Bytes that complete the last frame of ``data`` (empty when it ends on a frame boundary)."""
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        end = pos + fastcodec.frame_size_at(data, pos)
        if end > len(data):
            return bytes(end - len(data))
        pos = end
    partial = len(data) - pos
    if partial == 0:
        return b""
    return _HEADER_TEMPLATE[partial:]  # the template announces no data


def _torn(data: bytes) -> bool:
    """Whether ``data`` ends inside a frame (the reference targets only ever send whole ones)."""
    return bool(_completion(data))


def _answer_due(decoder: MessageDecoder, sent: bytes) -> bool:
    """Whether ``sent`` completes a request or breaks the protocol: an answer or a close is due."""
    decoder.receive_data(sent)
    due = False
    try:
        while (event := decoder.next_event()) is not NEED_DATA:
            due = True
            if type(event) is Closed:
                break
    except RemoteProtocolError:
        due = True
    return due


async def _observe(probe: Probe, steps: list[Step], *, due: bool, patience: float) -> bool:
    """Record what arrives after a send; True while the connection stays open.

    Nothing arriving for ``QUIET_MS`` ends the observation, except that an answer the target
    owes (``due``) or the rest of a frame it has begun is awaited for up to ``patience``
    seconds: a busy machine must not turn a late answer into a recorded silence.
    """
    if due:
        await probe.await_bytes(patience)
    data, how = await probe.drain_for(QUIET_MS / 1000)
    while data and how is None:
        if _torn(data):
            await probe.await_bytes(patience)
        more, how = await probe.drain_for(QUIET_MS / 1000)
        if not more:
            break
        data += more
    steps.extend(Expect(frame) for frame in _frames(data))
    if how is not None:
        steps.append(ExpectClose())
        return False
    if not data:
        steps.append(ExpectSilence(QUIET_MS))
    return True


async def record_vector(vector: Vector, address: str, *, timeout: float = 1.0) -> Vector:
    """Play ``vector``'s client side against ``address`` and return the observed exchange."""
    steps: list[Step] = []
    probe = await Probe.open(address, timeout=timeout)
    requests = MessageDecoder(receives=Direction.REQUEST)  # what the target owes an answer to
    is_open, sent = True, b""

    async def send(data: bytes) -> bool:
        steps.append(Send(data))
        await probe.send(data)
        due = _answer_due(requests, data)
        return await _observe(probe, steps, due=due, patience=timeout)

    try:
        for step in vector.steps:
            if isinstance(step, Send) and is_open:
                sent += step.data
                is_open = await send(step.data)
            elif isinstance(step, Sleep):
                steps.append(step)
                await asyncio.sleep(step.ms / 1000)
            elif isinstance(step, Reconnect):
                steps.append(step)
                await probe.aclose()
                probe = await Probe.open(address, timeout=timeout)
                requests = MessageDecoder(receives=Direction.REQUEST)
                is_open, sent = True, b""
        rest = _completion(sent) if is_open else b""
        if rest:
            is_open = await send(rest)
            if is_open and not isinstance(steps[-1], ExpectSilence):
                # Exactly one answer: nothing more follows it.
                await asyncio.sleep(QUIET_MS / 1000)
                is_open = await _observe(probe, steps, due=False, patience=timeout)
        if not is_open:
            steps.append(Reconnect())
            await probe.aclose()
            probe = await Probe.open(address, timeout=timeout)
            requests = MessageDecoder(receives=Direction.REQUEST)
            await send(have_request(1, _PROBE_ID))
    finally:
        await probe.aclose()
    what = vector.why.split(":", 1)[0] if vector.why else "legacy defect"
    return Vector(
        id=vector.id,
        title=f"{vector.title} -- safe behaviour",
        why=(
            f"Replaces legacy vector {vector.id} ({', '.join(sorted(vector.flags))}; {what}). "
            "Recorded from the reference implementation: the same client bytes, answered as the "
            "specification requires."
        ),
        flags=frozenset(),
        setup=dict(vector.setup),
        steps=tuple(steps),
        group=vector.group,
        target_kind=vector.target_kind,
    )


def _vector_json(vector: Vector) -> dict:
    return {
        "id": vector.id,
        "title": vector.title,
        "why": vector.why,
        "flags": sorted(vector.flags),
        "setup": vector.setup,
        "steps": [step_to_json(s) for s in vector.steps],
        "decoded": [],
    }


async def _record_all(directory: Path, timeout: float) -> int:
    try:
        return await _record_each(directory, timeout)
    finally:
        await launch.stop_all()  # no proxy left running, no temporary file left behind


async def _record_each(directory: Path, timeout: float) -> int:
    servers, proxies = InProcessSetup(), ProxySetup(REFERENCE_PROXY_COMMAND)
    count = 0
    directory.mkdir(parents=True, exist_ok=True)
    for vector_file in legacy_vector_files():
        recorded = []
        for vector in vector_file:
            if not vector.unsafe:
                continue
            async with _reference_target(vector, servers, proxies) as address:
                recorded.append(await record_vector(vector, address, timeout=timeout))
        if not recorded:
            continue
        document = {
            "format": FORMAT,
            "recorded_from": RECORDED_FROM[vector_file.target_kind],
            "target_kind": vector_file.target_kind,
            "group": vector_file.group,
            "vectors": [_vector_json(v) for v in recorded],
        }
        path = directory / vector_file.path.name
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        count += len(recorded)
        print(f"{path.name}: {len(recorded)} vectors")
    return count


@contextlib.asynccontextmanager
async def _reference_target(
    vector: Vector, servers: InProcessSetup, proxies: ProxySetup
) -> AsyncIterator[str]:
    """The address of a fresh reference target set up as ``vector`` says; stopped afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        if vector.upstream_running:  # always, for a server vector
            server = await servers.start_instance(vector.sessions)
            stack.push_async_callback(server.stop)
            address = server.address
        else:
            refusing = RefusingAddress()
            stack.push_async_callback(refusing.close)
            address = refusing.address
        if vector.target_kind == "proxy":
            proxy = await proxies.start(address, **vector.proxy_timers)
            stack.push_async_callback(proxy.stop)
            address = proxy.address
        yield address


def record_reference_vectors(directory: Path, *, timeout: float = 1.0) -> int:
    """CLI entry: record into ``directory``; returns an exit status."""
    try:
        count = asyncio.run(_record_all(directory, timeout))
    except TargetUnavailable as error:
        print(f"distcache conformance: error: {error}")
        return 2
    print(f"{count} safe-behaviour vectors recorded")
    return 0
