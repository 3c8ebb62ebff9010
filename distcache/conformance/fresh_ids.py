"""Fresh session ids for recorded vectors, so that they can run against a shared, running server.

A vector was recorded on an empty server with fixed session ids. Replayed as recorded against a
server that is already running (and may have seen the same vector in an earlier run), those ids
may be taken. :func:`with_fresh_ids` rewrites every session id the vector's requests name into a
new one of the same length, in place, so frame sizes, frame boundaries and the segmentation of
every write stay exactly as recorded; replies never carry an id, so the recorded expectations
still hold. Ids shorter than :data:`SHORT_ID` bytes cannot be made unique by chance alone: they are
drawn so that no two cases running at once hold the same one (:class:`IdReservations`), and the
case removes them from the server before it replays.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from ..protocol import MessageDecoder, RemoteProtocolError, Request, check_add
from ..wire import ADD_PREFIX_SIZE, HEADER_SIZE, Direction, Operation, fastcodec
from .vectors import Reconnect, Send, Vector

__all__ = ["SHORT_ID", "IdReservations", "with_fresh_ids"]

#: Ids shorter than this are reserved and removed first rather than trusted to chance.
SHORT_ID = 8


class IdReservations:
    """Short ids held by the cases running now, so that no two of them draw the same one."""

    def __init__(self) -> None:
        self._held: set[bytes] = set()

    def draw(self, length: int) -> bytes:
        if length >= SHORT_ID:
            return secrets.token_bytes(length)
        for _ in range(10_000):
            candidate = secrets.token_bytes(length)
            if candidate not in self._held:
                self._held.add(candidate)
                return candidate
        raise RuntimeError(f"no free {length}-byte session id left")

    def release(self, ids) -> None:
        self._held.difference_update(ids)


def _id_spans(stream: bytes) -> list[tuple[list[tuple[int, int]], int, int]]:
    """For each request the server will execute in ``stream`` (one connection's bytes): the
    payload's pieces as (stream offset, length), and where the session id lies in the payload."""
    decoder = MessageDecoder(receives=Direction.REQUEST)
    requests = []
    try:
        for event in decoder.events(stream):
            if isinstance(event, Request):
                requests.append(event)
    except RemoteProtocolError:
        pass  # the server stops at the error: only what came before it is executed
    spans = []
    pieces: list[tuple[int, int]] = []
    position = 0
    for request in requests:
        # Walk the frames of this message (headers were validated by the decoder above).
        while True:
            header = fastcodec.HEADER_STRUCT.unpack_from(stream, position)
            fields = dict(zip(fastcodec.HEADER_FIELDS, header, strict=True))
            size = fields["data_len"]
            pieces.append((position + HEADER_SIZE, size))
            position += HEADER_SIZE + size
            if fields["complete"]:
                break
        where = _id_in(request)
        if where is not None:
            spans.append((pieces, *where))
        pieces = []
    return spans


def _id_in(request: Request) -> tuple[int, int] | None:
    """(start, end) of the session id within the payload, when the request names one."""
    if request.operation is Operation.ADD:
        try:
            checked = check_add(request.payload)
        except RemoteProtocolError:
            return None
        session_id = getattr(checked, "session_id", None)
        if session_id is None:
            return None  # refused by the ADD checks: nothing is stored under it
        return ADD_PREFIX_SIZE, ADD_PREFIX_SIZE + len(session_id)
    return (0, len(request.payload)) if request.payload else None


def _payload_to_stream(pieces: list[tuple[int, int]], offset: int) -> int:
    for start, size in pieces:
        if offset < size:
            return start + offset
        offset -= size
    raise IndexError(offset)


def with_fresh_ids(vector: Vector, draw) -> tuple[Vector, dict[bytes, bytes]]:
    """``vector`` with every session id replaced by ``draw(length)``, consistently across its
    connections; returns it and the mapping (old id -> new id)."""
    mapping: dict[bytes, bytes] = {}
    steps = list(vector.steps)
    connection: list[int] = []  # indexes of the Send steps of the current connection

    def rewrite(indexes: list[int]) -> None:
        stream = bytearray(b"".join(steps[i].data for i in indexes))
        for pieces, start, end in _id_spans(bytes(stream)):
            offsets = [_payload_to_stream(pieces, n) for n in range(start, end)]
            old = bytes(stream[o] for o in offsets)
            new = mapping.setdefault(old, draw(len(old)))
            for offset, byte in zip(offsets, new, strict=True):
                stream[offset] = byte
        position = 0
        for i in indexes:
            size = len(steps[i].data)
            steps[i] = Send(bytes(stream[position : position + size]))
            position += size

    for index, step in enumerate(vector.steps):
        if isinstance(step, Reconnect):
            rewrite(connection)
            connection = []
        elif isinstance(step, Send):
            connection.append(index)
    rewrite(connection)
    return replace(vector, steps=tuple(steps)), mapping
