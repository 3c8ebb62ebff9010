"""Helpers shared by the cases: crafting frames (valid or not) and reading raw reply frames."""

from __future__ import annotations

from ...protocol import encode_message
from ...wire import (
    HEADER_SIZE,
    MAX_FRAME_DATA,
    PROTOCOL_LEVEL,
    Complete,
    Direction,
    Operation,
    fastcodec,
)


def frame(
    operation: int = Operation.GET,
    data: bytes = b"",
    *,
    uid: int = 1,
    is_response: int = Direction.REQUEST,
    complete: int = Complete.LAST,
    data_len: int | None = None,
    proto_level: int = PROTOCOL_LEVEL,
    op_class: int = 0,
) -> bytes:
    """One frame with any header values (``data_len`` defaults to the data's length)."""
    size = len(data) if data_len is None else data_len
    header = fastcodec.encode_header(
        is_response, uid, operation, complete, size, proto_level, op_class=op_class
    )
    return header + data


def unfinished(uid: int, frames: int = 1) -> bytes:
    """``frames`` full GET frames marked MORE: a message that the next frame must continue."""
    return frame(Operation.GET, bytes(MAX_FRAME_DATA), uid=uid, complete=Complete.MORE) * frames


def request(uid: int, operation: Operation, payload: bytes) -> bytes:
    return encode_message(Direction.REQUEST, uid, operation, payload)


async def read_raw_frames(probe, timeout: float) -> list[tuple[tuple, bytes]]:
    """Read the frames of one reply as sent: [(header tuple, data)], up to the complete one.

    Headers are unpacked without validation so that a case can judge them itself.
    """
    frames = []
    while True:
        header_bytes = await probe.read_exact(HEADER_SIZE, timeout)
        header = fastcodec.HEADER_STRUCT.unpack(header_bytes)
        fields = dict(zip(fastcodec.HEADER_FIELDS, header, strict=True))
        data = await probe.read_exact(min(fields["data_len"], 1 << 16), timeout)
        frames.append((fields, data))
        if fields["complete"] != Complete.MORE or len(frames) > 40:
            return frames
