"""Framing and fragmentation cases: header validation, segmentation, reassembly, reply frames."""

from __future__ import annotations

from ...protocol import add_request, get_request
from ...wire import (
    MAX_FRAME_DATA,
    MAX_FRAMES_NOMINAL,
    MAX_PAYLOAD,
    PROTOCOL_LEVEL,
    PROTOCOL_VERSION,
    Complete,
    Direction,
    Operation,
    Status,
)
from ..probe import ProbeError
from ..registry import case
from ._frames import frame, read_raw_frames, unfinished

# Header fields a server must reject, each as the keyword arguments of a crafted frame.
MALFORMED_HEADERS = {
    "is-response-1": {"is_response": 1},
    "is-response-2": {"is_response": 2},
    "op-class-1": {"op_class": 1},
    "operation-4": {"operation": 4},
    "operation-255": {"operation": 255},
    "complete-2": {"complete": 2},
    "data-len-2049": {"data_len": MAX_FRAME_DATA + 1},
    "nonfinal-short": {"complete": Complete.MORE},
}


def _malformed_case(name: str, fields: dict):
    @case(
        id=f"FRAME-5/malformed-{name}",
        requirements=["FRAME-5", "CONN-1"],
        title=f"a frame with {name.replace('-', ' ')} closes only its connection, no reply",
    )
    async def run(t):
        data = t.new_id()
        bad = frame(data=data, uid=t.uid(), **{"operation": Operation.GET, **fields})
        if "data_len" in fields:
            bad = bad + bytes(fields["data_len"] - len(data))
        probe = await t.connect()
        await probe.send(bad)
        await t.expect_closed(probe, "after a malformed header", "FRAME-5")
        await t.still_served("a new connection after the malformed frame", "CONN-1")


for _name, _fields in MALFORMED_HEADERS.items():
    _malformed_case(_name, _fields)


@case(
    id="FRAME-3/patch-level-ignored",
    requirements=["FRAME-3", "FRAME-2"],
    title="any patch level is accepted; the reply carries 0x00110000",
)
async def patch_level(t):
    probe = await t.connect()
    for patch in (0x0001, 0x8000, 0xFFFF):
        uid = t.uid()
        level = (PROTOCOL_VERSION << 16) | patch
        await probe.send(frame(Operation.HAVE, t.new_id(), uid=uid, proto_level=level))
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.HAVE)
        t.expect_status(reply, [Status.NOTOK], f"HAVE with patch level {patch:#06x}")


@case(
    id="FRAME-6/segmentation-every-offset",
    requirements=["FRAME-6"],
    title="a request split at every offset is answered exactly as if sent whole",
    steps=80,
)
async def segmentation_every_offset(t):
    session_id, session = t.new_id(), t.new_session(20)
    probe = await t.connect()
    await t.stored(probe, session_id, session)
    # The same connection throughout: bytes of earlier frames must not leak into the checks.
    for split in range(1, len(get_request(0, session_id))):
        uid = t.uid()
        whole = get_request(uid, session_id)
        await probe.send(whole[:split])
        await t.sleep(0.003)
        await probe.send(whole[split:])
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.GET)
        if reply.payload != session:
            t.fail(f"GET split after byte {split}: got {reply.payload[:16].hex()}")


@case(
    id="FRAME-6/one-byte-at-a-time",
    requirements=["FRAME-6"],
    title="a two-frame ADD and a GET sent one byte per write are answered normally",
    steps=12,
)
async def one_byte_at_a_time(t):
    session_id = t.new_id()
    session = t.new_session(MAX_FRAME_DATA)  # the ADD payload spans two frames
    probe = await t.connect()
    uid = t.uid()
    whole = add_request(uid, session_id, session, 3_600_000)
    # Byte by byte through both headers and the frame boundary; the bulk of the data at once.
    edge = 40
    boundary = 14 + MAX_FRAME_DATA
    pieces = [whole[i : i + 1] for i in range(edge)]
    pieces.append(whole[edge : boundary - edge])
    pieces += [whole[i : i + 1] for i in range(boundary - edge, boundary + edge)]
    pieces.append(whole[boundary + edge :])
    assert b"".join(pieces) == whole
    for piece in pieces:
        await probe.send(piece)
    reply = await t.response(probe)
    t.check_header(reply, uid, Operation.ADD)
    t.expect_status(reply, [Status.OK], "ADD sent byte by byte")
    uid = t.uid()
    for byte in get_request(uid, session_id):
        await probe.send(bytes((byte,)))
    reply = await t.response(probe)
    t.check_header(reply, uid, Operation.GET)
    if reply.payload != session:
        t.fail("GET sent byte by byte did not return the stored session")


@case(
    id="FRAME-7/withheld-last-bytes",
    requirements=["FRAME-7", "FRAME-6", "RESP-2"],
    title="a request missing its last 1..5 bytes gets no reply until they come, then one",
    steps=20,
)
async def withheld_last_bytes(t):
    session_id, session = t.new_id(), t.new_session(30)
    probe = await t.connect()
    await t.stored(probe, session_id, session)
    quiet = min(0.1, t.timeout)
    for withheld in range(1, 6):
        uid = t.uid()
        whole = get_request(uid, session_id)
        await probe.send(whole[:-withheld])
        await t.expect_silence(
            probe, quiet, f"with the last {withheld} bytes withheld, nothing may arrive", "FRAME-7"
        )
        await probe.send(whole[-withheld:])
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.GET)
        if reply.payload != session:
            t.fail(f"GET completed after {withheld} withheld bytes returned wrong data")
    await t.expect_silence(probe, quiet, "after the last reply nothing more may arrive", "RESP-2")


@case(
    id="FRAG-2/uid-change-mid-message",
    requirements=["FRAG-2"],
    title="a continuation frame with another uid closes the connection without a reply",
)
async def uid_change(t):
    probe = await t.connect()
    uid = t.uid()
    first = unfinished(uid)
    second = frame(Operation.GET, b"x", uid=uid ^ 1)
    await probe.send(first + second)
    await t.expect_closed(probe, "after a uid change inside a message", "FRAG-2")


@case(
    id="FRAG-2/operation-change-mid-message",
    requirements=["FRAG-2"],
    title="a continuation frame with another operation closes the connection",
)
async def operation_change(t):
    probe = await t.connect()
    uid = t.uid()
    first = unfinished(uid)
    second = frame(Operation.HAVE, b"x", uid=uid)
    await probe.send(first + second)
    await t.expect_closed(probe, "after an operation change inside a message", "FRAG-2")


def _seventeen_frames(uid: int, payload: bytes) -> bytes:
    assert len(payload) == MAX_PAYLOAD
    frames = [
        frame(Operation.ADD, payload[i : i + MAX_FRAME_DATA], uid=uid, complete=Complete.MORE)
        for i in range(0, MAX_PAYLOAD, MAX_FRAME_DATA)
    ]
    return b"".join(frames) + frame(Operation.ADD, b"", uid=uid)


@case(
    id="FRAG-3/largest-message-17-frames",
    requirements=["FRAG-3", "FRAG-4"],
    title="16 full frames plus an empty final frame (32768 bytes) are accepted",
    steps=6,
)
async def seventeen_frames(t):
    session_id = t.new_id(32)
    prefix = (3_600_000).to_bytes(4, "big") + len(session_id).to_bytes(4, "big") + session_id
    session = t.new_session(MAX_PAYLOAD - len(prefix))
    probe = await t.connect()
    uid = t.uid()
    await probe.send(_seventeen_frames(uid, prefix + session))
    reply = await t.response(probe)
    t.check_header(reply, uid, Operation.ADD)
    t.expect_status(reply, [Status.OK], "ADD of 32768 bytes in 17 frames")
    reply = await t.get(probe, session_id, malformed="FRAG-4")
    if reply.payload != session:
        t.fail("the 32 KB session did not come back byte for byte", "GET-1")


@case(
    id="FRAG-3/one-byte-too-many",
    requirements=["FRAG-3"],
    title="16 full frames plus a 1-byte final frame (32769 bytes) close the connection",
)
async def one_byte_too_many(t):
    probe = await t.connect()
    uid = t.uid()
    body = unfinished(uid, MAX_FRAMES_NOMINAL)
    await probe.send(body + frame(Operation.GET, b"x", uid=uid))
    await t.expect_closed(probe, "after a 32769-byte message", "FRAG-3")


@case(
    id="FRAG-4/reply-fragmentation",
    requirements=["FRAG-4", "RESP-1", "FRAG-1"],
    title="GET replies are cut into 2048-byte frames, the last one carrying the rest",
    steps=12,
)
async def reply_fragmentation(t):
    probe = await t.connect()
    for size in (2048, 2049, 4096, 30000):
        session_id, session = t.new_id(), t.new_session(size)
        await t.stored(probe, session_id, session)
        uid = t.uid()
        await probe.send(get_request(uid, session_id))
        try:
            frames = await read_raw_frames(probe, t.timeout)
        except ProbeError as error:
            t.fail(f"{size}-byte GET reply incomplete: {error}", "FRAG-4")
        lengths = [fields["data_len"] for fields, _ in frames]
        expected = [MAX_FRAME_DATA] * (size // MAX_FRAME_DATA) + (
            [size % MAX_FRAME_DATA] if size % MAX_FRAME_DATA else []
        )
        if lengths != expected:
            t.fail(f"{size}-byte session came back in frames of {lengths}, expected {expected}")
        for number, (fields, _) in enumerate(frames):
            last = number == len(frames) - 1
            if fields["complete"] != (Complete.LAST if last else Complete.MORE):
                t.fail(f"frame {number + 1} of {len(frames)} has complete = {fields['complete']}")
            if fields["request_uid"] != uid or fields["operation"] != Operation.GET:
                t.fail(f"frame {number + 1} does not carry the request's uid/operation", "RESP-1")
            if fields["is_response"] != Direction.RESPONSE or fields["proto_level"] != (
                PROTOCOL_LEVEL
            ):
                t.fail(f"frame {number + 1} has a wrong is_response or proto_level", "RESP-1")
        if b"".join(data for _, data in frames) != session:
            t.fail(f"{size}-byte session altered in transit", "GET-1")
