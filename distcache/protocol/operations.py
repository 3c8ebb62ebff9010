"""The four operations: building their payloads, the server's ADD checks in the legacy order, and
what a response payload means. Layouts come from :mod:`distcache.wire.schema`."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..wire.enums import Operation, Status
from ..wire.limits import (
    ADD_PREFIX_SIZE,
    MAX_SESSION_DATA,
    MAX_SESSION_ID,
    MAX_TIMEOUT_MS,
)
from ..wire.schema import AddRequest, fields_of
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Request
from .framing import encode_request

# The fixed prefix of an ADD payload (timeout_ms, id_len), taken from the schema's field formats.
_ADD_PREFIX = struct.Struct(">" + "".join(f.fmtstr.lstrip(">") for f in fields_of(AddRequest)[:2]))
assert _ADD_PREFIX.size == ADD_PREFIX_SIZE
_unpack_add_prefix = _ADD_PREFIX.unpack_from


def add_prefix(payload: bytes) -> tuple[int, int]:
    """``(timeout_ms, id_len)`` from the start of an ADD payload (at least ADD_PREFIX_SIZE bytes)."""
    return _unpack_add_prefix(payload)


@dataclass(frozen=True, slots=True)
class AddArgs:
    """A well-formed ADD request's arguments."""

    timeout_ms: int
    session_id: bytes
    session: bytes


def check_add(payload: bytes) -> AddArgs | Status:
    """Apply the ADD checks in the legacy order (ADD-1, ADD-2); the first failure wins.

    Returns the arguments of a storable ADD, or the status code to answer. A payload too short for
    the two 4-byte fields is a protocol error (the connection is closed without a reply). The
    duplicate check (101) is the store's, and comes after these.
    """
    checked = check_add_fields(payload)
    return checked if type(checked) is not tuple else AddArgs(*checked)


def check_add_fields(payload: bytes) -> tuple[int, bytes, bytes] | Status:
    """:func:`check_add` returning ``(timeout_ms, session_id, session)`` as a plain tuple, which
    servers build several times faster than an :class:`AddArgs`."""
    size = len(payload)
    if size < ADD_PREFIX_SIZE:
        raise _add_too_short(size)
    timeout_ms, id_len = _unpack_add_prefix(payload)
    if timeout_ms > MAX_TIMEOUT_MS:
        return Status.ADD_TIMEOUT_RANGE
    rest = size - ADD_PREFIX_SIZE
    if id_len >= rest:
        return Status.ADD_CORRUPT
    if id_len == 0 or id_len > MAX_SESSION_ID:
        return Status.ADD_ID_RANGE
    session_len = rest - id_len
    if session_len == 0 or session_len > MAX_SESSION_DATA:
        return Status.ADD_DATA_RANGE
    end = ADD_PREFIX_SIZE + id_len
    return timeout_ms, payload[ADD_PREFIX_SIZE:end], payload[end:]


def _add_too_short(size: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        "add_payload_too_short",
        f"ADD payload of {size} bytes cannot hold its {ADD_PREFIX_SIZE}-byte prefix",
    )


def check_forwardable(request: Request) -> None:
    """Raise the :class:`RemoteProtocolError` for which a server would close the connection on
    this whole, well-framed request (the decoder has applied every framing rule before).

    A proxy calls it before forwarding, so that one local client's error closes that client's
    connection and never the link that every other client shares (PROXY-14). The rules are
    those of :func:`check_add_fields`: an ADD payload shorter than its fixed prefix (the other
    ADD checks are answered with a status and keep the connection).
    """
    if request.operation is Operation.ADD and len(request.payload) < ADD_PREFIX_SIZE:
        raise _add_too_short(len(request.payload))


def add_payload(session_id: bytes, session: bytes, timeout_ms: int) -> bytes:
    """The payload of an ADD request (no range checks: a client may send what a server refuses)."""
    if not 0 <= timeout_ms <= 0xFFFFFFFF:
        raise LocalProtocolError(f"timeout {timeout_ms} ms does not fit in 32 bits")
    return _ADD_PREFIX.pack(timeout_ms, len(session_id)) + session_id + session


def add_request(request_uid: int, session_id: bytes, session: bytes, timeout_ms: int) -> bytes:
    """An encoded ADD request."""
    return encode_request(request_uid, Operation.ADD, add_payload(session_id, session, timeout_ms))


def get_request(request_uid: int, session_id: bytes) -> bytes:
    """An encoded GET request."""
    return encode_request(request_uid, Operation.GET, session_id)


def remove_request(request_uid: int, session_id: bytes) -> bytes:
    """An encoded REMOVE request."""
    return encode_request(request_uid, Operation.REMOVE, session_id)


def have_request(request_uid: int, session_id: bytes) -> bytes:
    """An encoded HAVE request."""
    return encode_request(request_uid, Operation.HAVE, session_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a response payload means.

    Exactly one of ``status``/``code`` (a status byte) or ``session`` (a GET hit) is set, unless the
    payload is empty (``empty``: a proxy without upstream answers so) or malformed (``malformed``:
    a status response that is not exactly one byte). A 1-byte GET reply holding 0x01 or 0x02 is
    reported as that status with ``ambiguous`` set: the wire cannot tell it from a stored 1-byte
    session; any other single byte can only be a session.
    """

    code: int | None = None
    session: bytes | None = None
    empty: bool = False
    ambiguous: bool = False
    malformed: bool = False

    @property
    def status(self) -> Status | None:
        """The status code as an enum member, or None (no status, or an undefined value)."""
        if self.code is None:
            return None
        try:
            return Status(self.code)
        except ValueError:
            return None

    @property
    def status_name(self) -> str | None:
        """The status' name, ``UNKNOWN_<code>`` for undefined values, None without a status."""
        if self.code is None:
            return None
        status = self.status
        return status.name if status is not None else f"UNKNOWN_{self.code}"


#: Status bytes a GET response can carry instead of a session (a miss, or a proxy's failure). A
#: 1-byte GET response holding one of them is ambiguous: a stored 1-byte session looks the same.
GET_STATUS_CODES = frozenset((Status.NOTOK, Status.DISCONNECTED))


def interpret_response(operation: Operation, payload: bytes) -> Outcome:
    """Interpret a response payload for the given operation."""
    size = len(payload)
    if size == 0:
        return Outcome(empty=True)
    if operation is Operation.GET:
        if size == 1 and payload[0] in GET_STATUS_CODES:
            return Outcome(code=payload[0], ambiguous=True)
        return Outcome(session=payload)
    if size == 1:
        return Outcome(code=payload[0])
    return Outcome(session=payload, malformed=True)
