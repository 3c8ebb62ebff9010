"""Rendering decoded messages for people and programs: the records of ``distcache decode``.

The JSON record keys are a public contract (documented in the user guide):

``direction``
    "request" or "response"
``request_uid``
    int
``op``
    "ADD", "GET", "REMOVE" or "HAVE"
``proto_level``
    int (as received; patch levels vary)
``frames``
    int, frames the message arrived in
``offset``
    int, stream offset of the message's first byte
``payload``
    object:

    - ADD request: ``timeout_ms``, ``session_id`` (hex), ``session`` (hex), and ``refused`` (a
      status name such as ``ADD_ID_RANGE``) when a server will refuse it;
    - GET/REMOVE/HAVE request: ``session_id`` (hex);
    - response with a status byte: ``status`` (name) and ``code`` (int);
    - GET hit: ``session`` (hex);
    - a 1-byte GET response 01 or 02 is reported as a status with ``"ambiguous": true`` (it is
      also what a stored 1-byte session 01 or 02 looks like); any other single byte is a session;
    - an empty response (a proxy without upstream): ``"empty": true``;
    - anything else that cannot be what it claims: ``malformed`` (why) and ``data`` (hex).

Errors are records too: ``error`` (a stable reason), ``detail``, ``offset`` (and ``field``).
"""

from __future__ import annotations

from collections.abc import Iterator

from .protocol import MessageDecoder, RemoteProtocolError, interpret_response
from .protocol.events import Closed, Message
from .protocol.operations import add_prefix, check_add
from .wire.enums import Direction, Operation
from .wire.limits import ADD_PREFIX_SIZE, PROTOCOL_LEVEL

DIRECTIONS = {"request": Direction.REQUEST, "response": Direction.RESPONSE, "auto": None}


def payload_record(message: Message) -> dict:
    """The ``payload`` object of a message's record."""
    data = message.payload
    if message.direction is Direction.REQUEST:
        if message.operation is not Operation.ADD:
            return {"session_id": data.hex()}
        return _add_record(data)
    outcome = interpret_response(message.operation, data)
    if outcome.empty:
        return {"empty": True}
    if outcome.malformed:
        return {"malformed": "a status response must be exactly 1 byte", "data": data.hex()}
    if outcome.session is not None:
        return {"session": outcome.session.hex()}
    record = {"status": outcome.status_name, "code": outcome.code}
    if outcome.ambiguous:
        record["ambiguous"] = True
    return record


def _add_record(data: bytes) -> dict:
    if len(data) < ADD_PREFIX_SIZE:
        return {"malformed": "ADD payload shorter than its 8-byte prefix", "data": data.hex()}
    timeout_ms, id_len = add_prefix(data)
    if id_len > len(data) - ADD_PREFIX_SIZE:
        return {
            "timeout_ms": timeout_ms,
            "malformed": f"id_len {id_len} runs past the payload",
            "data": data.hex(),
        }
    end = ADD_PREFIX_SIZE + id_len
    record = {
        "timeout_ms": timeout_ms,
        "session_id": data[ADD_PREFIX_SIZE:end].hex(),
        "session": data[end:].hex(),
    }
    verdict = check_add(data)
    if not hasattr(verdict, "session_id"):
        record["refused"] = verdict.name  # what a server will answer (e.g. ADD_ID_RANGE)
    return record


def message_record(message: Message) -> dict:
    """The JSON record of one message."""
    return {
        "direction": message.direction.name.lower(),
        "request_uid": message.request_uid,
        "op": message.operation.name,
        "proto_level": message.proto_level,
        "frames": message.frames,
        "offset": message.offset,
        "payload": payload_record(message),
    }


def shorten_hex(hex_text: str, keep: int = 16) -> str:
    """Hex of at most ``keep`` bytes, then an ellipsis and the full length."""
    size = len(hex_text) // 2
    if size <= keep:
        return f"{hex_text} ({size} B)" if size else "'' (0 B)"
    return f"{hex_text[: keep * 2]}… ({size} B)"


def payload_text(payload: dict) -> str:
    """A one-line human rendering of a ``payload`` object."""
    parts = []
    for key, value in payload.items():
        if key in ("session_id", "session", "data"):
            parts.append(f"{'id' if key == 'session_id' else key}={shorten_hex(value)}")
        elif key == "code":
            continue
        elif key == "status":
            parts.append(f"status={value}({payload.get('code')})")
        elif value is True:
            parts.append(key)
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def record_text(record: dict) -> str:
    """A one-line human rendering of a message record or an error record."""
    if "error" in record:
        field = f" field={record['field']}" if record.get("field") else ""
        return f"error {record['error']} at offset {record['offset']}{field}: {record['detail']}"
    level = (
        ""
        if record["proto_level"] == PROTOCOL_LEVEL
        else f" proto_level={record['proto_level']:#010x}"
    )
    return (
        f"{record['direction']:<8} uid={record['request_uid']:#010x} {record['op']:<6} "
        f"frames={record['frames']} offset={record['offset']}{level} "
        f"{payload_text(record['payload'])}"
    ).rstrip()


def decode_stream(data: bytes, direction: Direction | None = None) -> Iterator[dict]:
    """Records of every message in a complete byte stream; an error record ends the stream early.

    A stream that ends inside a frame or a message yields a ``truncated`` error record.
    """
    decoder = MessageDecoder(receives=direction)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    try:
        for event in decoder.events():
            if type(event) is not Closed:
                yield message_record(event)
    except RemoteProtocolError as error:
        yield error.as_dict()
