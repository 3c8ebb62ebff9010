"""The frames of a reply as sent: their layout (FRAME-1), their limits (FRAME-12), and when a
receiver judges a frame's direction (FRAME-9)."""

from __future__ import annotations

from ...protocol import get_request
from ...wire import (
    HEADER_SIZE,
    MAX_FRAME_DATA,
    PROTOCOL_VERSION,
    Complete,
    Direction,
    Operation,
    fastcodec,
)
from ..probe import ProbeError
from ..registry import case
from ._frames import frame, read_raw_frames


async def _raw_reply(t, size: int):
    """Store a session of ``size`` bytes, GET it, and return (session, raw reply frames)."""
    probe = await t.connect()
    sid, session = t.new_id(), t.new_session(size)
    await t.stored(probe, sid, session)
    uid = t.uid()
    await probe.send(get_request(uid, sid))
    try:
        frames = await read_raw_frames(probe, t.timeout)
    except ProbeError as error:
        t.fail(f"the GET reply is incomplete: {error}")
    return probe, uid, session, frames


@case(
    id="FRAME-1/reply-frames-back-to-back",
    requirements=["FRAME-1", "GET-1"],
    title="a 5000-byte GET reply is 14-byte headers each followed by exactly data_len bytes, "
    "with nothing between or after its frames",
)
async def reply_layout(t):
    probe, uid, session, frames = await _raw_reply(t, 5000)
    for number, (fields, _) in enumerate(frames, start=1):
        if fields["proto_level"] >> 16 != PROTOCOL_VERSION or fields["request_uid"] != uid:
            t.fail(
                f"frame {number} of the reply does not start with a header (bytes between "
                "frames, or a data_len that does not match the data)"
            )
    if b"".join(data for _, data in frames) != session:
        t.fail("the reply's data bytes are not the session", "GET-1")
    await t.expect_silence(probe, 0.3, "bytes after the reply's last frame")


@case(
    id="FRAME-12/reply-frames-within-limits",
    requirements=["FRAME-12", "FRAG-1"],
    title="every frame of a 32000-byte GET reply carries legal header values, at most 2048 "
    "data bytes, and exactly 2048 unless it is the last",
)
async def reply_limits(t):
    _, _, session, frames = await _raw_reply(t, 32_000)
    last = len(frames)
    for number, (fields, _) in enumerate(frames, start=1):
        header = fastcodec.HEADER_STRUCT.pack(*(fields[name] for name in fastcodec.HEADER_FIELDS))
        failed = fastcodec.first_failure(header)
        problems = [f"{failed.field}: {failed.reason}"] if failed else []
        if fields["is_response"] != Direction.RESPONSE:
            problems.append("is_response is not 1")
        if fields["data_len"] > MAX_FRAME_DATA:
            problems.append(f"data_len {fields['data_len']} > {MAX_FRAME_DATA}")
        final = fields["complete"] == Complete.LAST
        if final != (number == last):
            problems.append("complete = 1 only on the last frame")
        if not final and fields["data_len"] != MAX_FRAME_DATA:
            problems.append(f"a non-final frame with {fields['data_len']} data bytes")
        if problems:
            t.fail(f"frame {number} of {last} of the reply: {'; '.join(problems)}")
    if b"".join(data for _, data in frames) != session:
        t.fail("the reply's data bytes are not the session", "GET-1")


@case(
    id="FRAME-9/direction-judged-after-the-header",
    requirements=["FRAME-9", "FRAME-5"],
    level="SHOULD",
    profile="strict",
    title="the first 5 bytes of a response header leave the connection open: its direction is "
    "judged after the header checks; the whole header then closes it",
)
async def direction_after_header(t):
    probe = await t.connect()
    response_header = frame(Operation.GET, b"", is_response=Direction.RESPONSE, data_len=0)
    await probe.send(response_header[:5])
    await t.expect_silence(
        probe,
        min(t.timeout, 0.5),
        "5 bytes of a response header: only the version and the is_response range can be "
        "checked yet, and both pass",
    )
    await probe.send(response_header[5:HEADER_SIZE])
    await t.expect_closed(probe, "a whole response header sent to a server", "FRAME-5")


@case(
    id="FRAG-1/reply-split-at-2048",
    requirements=["FRAG-1", "FRAG-4"],
    title="GET replies of 2048 and 4096 bytes come in 1 and 2 full frames, with no empty frame "
    "after them",
)
async def split_at_frame_size(t):
    for size in (MAX_FRAME_DATA, 2 * MAX_FRAME_DATA):
        _, _, session, frames = await _raw_reply(t, size)
        lengths = [fields["data_len"] for fields, _ in frames]
        expected = [MAX_FRAME_DATA] * (size // MAX_FRAME_DATA)
        if lengths != expected:
            t.fail(f"a {size}-byte reply came in frames of {lengths} bytes, expected {expected}")
        if b"".join(data for _, data in frames) != session:
            t.fail("the reply's data bytes are not the session", "GET-1")
