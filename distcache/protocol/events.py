"""Events: what the decoder hands out. Small immutable values, as in h11."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..wire.enums import Direction, Operation, Status
from ..wire.limits import PROTOCOL_LEVEL
from .framing import encode_message, encode_status, wire_size


class _MessageFields(NamedTuple):
    request_uid: int
    operation: Operation
    payload: bytes
    #: Number of frames the message arrived in.
    frames: int = 1
    #: Stream offset of the first byte of its first frame.
    offset: int = 0
    #: proto_level of its first frame (patch levels vary; receivers ignore them).
    proto_level: int = PROTOCOL_LEVEL


class Message(_MessageFields):
    """One reassembled message: a request or a response.

    An immutable named tuple rather than a frozen dataclass: the decoder creates one per message
    on the server's hot path, and a tuple is built five times faster. Equality includes the class,
    so a request never equals a response with the same fields.
    """

    __slots__ = ()
    direction = Direction.REQUEST  # overridden per subclass

    def __eq__(self, other):
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((type(self), tuple(self)))

    @property
    def size(self) -> int:
        """Bytes the message occupied on the wire."""
        return wire_size(len(self.payload))


class Request(Message):
    """A request (``is_response`` = 0). Knows how to build its own response."""

    __slots__ = ()
    direction = Direction.REQUEST

    def respond(self, payload: bytes) -> bytes:
        """The encoded response to this request carrying ``payload`` (same uid and operation)."""
        return encode_message(Direction.RESPONSE, self.request_uid, self.operation, payload)

    def respond_status(self, status: Status) -> bytes:
        """The encoded one-byte status response to this request."""
        return encode_status(self.request_uid, self.operation, status)


class Response(Message):
    """A response (``is_response`` = 1)."""

    __slots__ = ()
    direction = Direction.RESPONSE


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed its sending side cleanly, between messages."""

    offset: int


class _NeedData:
    """Sentinel: the decoder needs more bytes before it can hand out another event."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
