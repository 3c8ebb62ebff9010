"""Encoding: a message cut into frames exactly as the legacy sender cuts it (FRAG-1), returned as
one bytes object so that callers write it in one call (legacy receivers mishandle frames split
inside their header)."""

from __future__ import annotations

import struct

from ..wire.enums import Complete, Direction, Operation, Status
from ..wire.fastcodec import HEADER_STRUCT
from ..wire.limits import HEADER_SIZE, MAX_FRAME_DATA, MAX_PAYLOAD, MAX_REQUEST_UID, PROTOCOL_LEVEL
from .errors import LocalProtocolError

_pack_header = HEADER_STRUCT.pack
_USER = 0
_LAST = int(Complete.LAST)
_MORE = int(Complete.MORE)


def frame_count(payload_len: int) -> int:
    """Frames a payload of this length is sent in: chunks of 2048, at least one, never a trailing
    empty frame."""
    return max(1, -(-payload_len // MAX_FRAME_DATA))


def wire_size(payload_len: int) -> int:
    """Bytes a message with a payload of this length occupies on the wire."""
    return payload_len + HEADER_SIZE * frame_count(payload_len)


def encode_message(
    direction: Direction,
    request_uid: int,
    operation: Operation,
    payload: bytes,
    *,
    proto_level: int = PROTOCOL_LEVEL,
) -> bytes:
    """Encode one whole message: 2048-byte frames, the last one (complete = 1) carrying the rest."""
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {size} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    if not 0 <= request_uid <= MAX_REQUEST_UID:
        raise LocalProtocolError(f"request_uid {request_uid} does not fit in 32 bits")
    if size <= MAX_FRAME_DATA:
        return (
            _pack_header(proto_level, direction, request_uid, _USER, operation, _LAST, size)
            + payload
        )
    view = memoryview(payload)
    parts = []
    for start in range(0, size, MAX_FRAME_DATA):
        chunk = view[start : start + MAX_FRAME_DATA]
        last = start + MAX_FRAME_DATA >= size
        parts.append(
            _pack_header(
                proto_level,
                direction,
                request_uid,
                _USER,
                operation,
                _LAST if last else _MORE,
                len(chunk),
            )
        )
        parts.append(chunk)
    return b"".join(parts)


def encode_request(request_uid: int, operation: Operation, payload: bytes) -> bytes:
    """Encode a request message."""
    return encode_message(Direction.REQUEST, request_uid, operation, payload)


def encode_response(request_uid: int, operation: Operation, payload: bytes) -> bytes:
    """Encode a response message."""
    return encode_message(Direction.RESPONSE, request_uid, operation, payload)


_STATUS_BYTES = {status: bytes((status,)) for status in Status}
_RESPONSE = int(Direction.RESPONSE)


def encode_status(request_uid: int, operation: Operation, status: Status) -> bytes:
    """Encode a one-byte status response (the commonest reply: a single frame, packed directly)."""
    try:
        header = _pack_header(PROTOCOL_LEVEL, _RESPONSE, request_uid, _USER, operation, _LAST, 1)
    except struct.error:
        raise LocalProtocolError(f"request_uid {request_uid} does not fit in 32 bits") from None
    return header + _STATUS_BYTES[status]
