"""The four operations as calls: local validation, encoding, and what each reply means.

Sans-IO and shared by both clients. Validation happens when a call is built, so a refused call
sends nothing. See the package docstring for the reply rules (notably the 1-byte GET reply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..protocol import add_request, get_request, have_request, remove_request
from ..wire import (
    ADD_PREFIX_SIZE,
    CLIENT_MIN_TIMEOUT_MS,
    LEGACY_CLIENT_MIN_SESSION,
    MAX_PAYLOAD,
    MAX_TIMEOUT_MS,
    Operation,
    Status,
)
from .errors import InvalidRequest, NoUpstream, ProtocolViolation, UpstreamDisconnected

#: Largest value the 4-byte timeout field can carry.
_MAX_TIMEOUT_FIELD = 0xFFFFFFFF
#: One-byte sessions a GET could never read back: they look like a miss or a proxy failure.
AMBIGUOUS_SESSIONS = frozenset({bytes((Status.NOTOK,)), bytes((Status.DISCONNECTED,))})

_STATUSES = {int(status): status for status in Status}
_ENCODERS: dict[Operation, Callable[[int, bytes], bytes]] = {
    Operation.GET: get_request,
    Operation.REMOVE: remove_request,
    Operation.HAVE: have_request,
}


@dataclass(frozen=True, slots=True)
class Call:
    """One validated operation, ready to be encoded with any uid and to interpret its reply.

    ``interpret`` turns the reply payload into the operation's result, or raises
    :class:`UpstreamError` (a proxy answered) or :class:`ProtocolViolation` (drop the connection).
    """

    operation: Operation
    session_id: bytes
    session: bytes = b""
    timeout_ms: int = 0
    interpret: Callable[[bytes], Any] = lambda payload: payload

    def encode(self, request_uid: int) -> bytes:
        """The whole encoded request (always written in one call)."""
        if self.operation is Operation.ADD:
            return add_request(request_uid, self.session_id, self.session, self.timeout_ms)
        return _ENCODERS[self.operation](request_uid, self.session_id)


# -- building calls -------------------------------------------------------------------------------


def add_call(
    session_id: bytes,
    session: bytes,
    timeout_ms: int,
    *,
    strict_timeouts: bool = True,
    allow_ambiguous: bool = False,
) -> Call:
    """An ADD whose result is the reply's :class:`Status` (OK or the server's refusal).

    Raises InvalidRequest (a ValueError) for an empty id or session, a timeout outside the 4-byte
    field (or, with ``strict_timeouts``, outside ``CLIENT_MIN_TIMEOUT_MS < t <= MAX_TIMEOUT_MS``),
    a payload over MAX_PAYLOAD, or, unless ``allow_ambiguous``, a 1-byte session 0x01 or 0x02.
    """
    session_id = _checked_id(session_id)
    session = _as_bytes("session", session)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        raise TypeError(f"timeout_ms must be an int, not {type(timeout_ms).__name__}")
    if not session:
        raise InvalidRequest("the session is empty; the server stores only non-empty sessions")
    if not 0 <= timeout_ms <= _MAX_TIMEOUT_FIELD:
        raise InvalidRequest(f"timeout_ms {timeout_ms} does not fit in the 32-bit timeout field")
    if strict_timeouts and not CLIENT_MIN_TIMEOUT_MS < timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidRequest(
            f"the timeout {timeout_ms} ms is outside {CLIENT_MIN_TIMEOUT_MS + 1}..{MAX_TIMEOUT_MS}"
            " ms, which strict timeout checking refuses",
            override="strict_timeouts=False",
        )
    size = ADD_PREFIX_SIZE + len(session_id) + len(session)
    if size > MAX_PAYLOAD:
        raise InvalidRequest(
            f"the ADD payload would be {size} bytes (8 + id + session); the limit is {MAX_PAYLOAD}"
        )
    if session in AMBIGUOUS_SESSIONS and not allow_ambiguous:
        raise InvalidRequest(
            f"the 1-byte session {session.hex()} could never be read back: a GET reply of that "
            "byte means a miss or a proxy failure",
            override="allow_ambiguous=True",
        )
    return Call(Operation.ADD, session_id, session, timeout_ms, _add_status)


def get_call(session_id: bytes, *, legacy_get_semantics: bool = False) -> Call:
    """A GET whose result is the session, or None on a miss."""
    interpret = _legacy_get_session if legacy_get_semantics else _get_session
    return Call(Operation.GET, _checked_id(session_id), interpret=interpret)


def remove_call(session_id: bytes) -> Call:
    """A REMOVE whose result is True if a session was removed, False if there was none."""
    return Call(
        Operation.REMOVE, _checked_id(session_id), interpret=partial(_presence, Operation.REMOVE)
    )


def have_call(session_id: bytes) -> Call:
    """A HAVE whose result is True if a session is stored, False if not."""
    return Call(
        Operation.HAVE, _checked_id(session_id), interpret=partial(_presence, Operation.HAVE)
    )


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def _checked_id(session_id: Any) -> bytes:
    session_id = _as_bytes("session_id", session_id)
    if not session_id:
        raise InvalidRequest("the session id is empty; no session can be stored under it")
    if len(session_id) > MAX_PAYLOAD:
        raise InvalidRequest(
            f"the session id is {len(session_id)} bytes; a request carries at most {MAX_PAYLOAD}"
        )
    return session_id


# -- interpreting replies -------------------------------------------------------------------------


def _status_byte(operation: Operation, payload: bytes) -> Status:
    """The reply's single status byte; raise for a proxy's failure answers and malformed replies."""
    if not payload:
        raise NoUpstream(f"the proxy has no upstream cache server; {operation.name} not forwarded")
    if len(payload) != 1:
        raise ProtocolViolation(
            "malformed_reply",
            f"a {operation.name} reply must be one status byte, got {len(payload)} bytes",
        )
    status = _STATUSES.get(payload[0])
    if status is None:
        raise ProtocolViolation(
            "undefined_status", f"{operation.name} reply carries undefined status {payload[0]}"
        )
    if status is Status.DISCONNECTED:
        raise UpstreamDisconnected(
            f"the proxy lost its upstream cache server while the {operation.name} was in flight"
        )
    return status


def _add_status(payload: bytes) -> Status:
    return _status_byte(Operation.ADD, payload)


def _presence(operation: Operation, payload: bytes) -> bool:
    # REMOVE and HAVE share one reply rule: 0x00 yes, 0x01 no.
    status = _status_byte(operation, payload)
    if status not in (Status.OK, Status.NOTOK):
        raise ProtocolViolation(
            "undefined_status", f"status {status.name} is not a {operation.name} answer"
        )
    return status is Status.OK


_MISS = bytes((Status.NOTOK,))
_PROXY_FAILURES = (b"", bytes((Status.DISCONNECTED,)))


def _get_session(payload: bytes) -> bytes | None:
    if payload in _PROXY_FAILURES:
        _status_byte(Operation.GET, payload)  # raises the proxy's failure
    if payload == _MISS:
        return None
    return payload  # any other single byte can only be a stored 1-byte session


def _legacy_get_session(payload: bytes) -> bytes | None:
    if payload in _PROXY_FAILURES:
        _status_byte(Operation.GET, payload)  # proxy failures still raise
    return payload if len(payload) >= LEGACY_CLIENT_MIN_SESSION else None
