"""The construct schemas: the single source of truth for every byte of the protocol.

Each field carries a doc string; fields with restricted values are wrapped in :class:`Legal`, whose
test expression is what both construct (when parsing or building) and the generated hot-path codec
(:mod:`distcache.wire.fastcodec`) evaluate. The field order of :data:`FrameHeader` is also the order
in which receivers validate a header.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from construct import (
    Bytes,
    Construct,
    Container,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32ub,
    Struct,
    Subconstruct,
    ValidationError,
    this,
)

from .enums import Complete, Direction, OpClass, Operation, Status
from .limits import (
    MAX_FRAME_DATA,
    PROTOCOL_LEVEL,
    PROTOCOL_VERSION_MASK,
)


class FieldRuleError(ValidationError):
    """A field (or a rule over fields) holds a value the protocol forbids."""

    def __init__(self, message: str, *, field: str, reason: str, path=None):
        super().__init__(message, path=path)
        self.field = field
        self.reason = reason


class Legal(Subconstruct):
    """A field whose value must satisfy ``test``, a Python expression over ``v``.

    ``reason`` is the stable, machine-readable name of the violation; ``legal`` says in words which
    values are allowed; ``enum`` names the value table when there is one.
    """

    def __init__(
        self,
        subcon: Construct,
        *,
        test: str,
        reason: str,
        legal: str,
        enum: type[IntEnum] | None = None,
    ):
        super().__init__(subcon)
        self.test = test
        self.reason = reason
        self.legal = legal
        self.enum = enum
        self.predicate = eval(f"lambda v: {test}")

    def _check(self, obj, path, when):
        if not self.predicate(obj):
            raise FieldRuleError(
                f"{self.reason}: {obj!r} is not legal ({self.legal}) while {when}",
                field=path.rsplit(" -> ", 1)[-1],
                reason=self.reason,
                path=path,
            )

    def _parse(self, stream, context, path):
        obj = self.subcon._parsereport(stream, context, path)
        self._check(obj, path, "parsing")
        return obj

    def _build(self, obj, stream, context, path):
        self._check(obj, path, "building")
        return self.subcon._build(obj, stream, context, path)


def enum_legal(subcon: Construct, enum: type[IntEnum], reason: str) -> Legal:
    """A :class:`Legal` field that accepts exactly the members of ``enum`` (0..n, contiguous)."""
    values = sorted(int(member) for member in enum)
    assert values == list(range(len(values))), "enum_legal needs contiguous codes from 0"
    test = "v == 0" if len(values) == 1 else f"v <= {values[-1]}"
    legal = ", ".join(f"{int(m)} {m.name}" for m in enum)
    return Legal(subcon, test=test, reason=reason, legal=legal, enum=enum)


class Rule(Construct):
    """A zero-size check over earlier fields of the same struct (``test`` names them directly)."""

    def __init__(self, *, test: str, reason: str, field: str, legal: str, needs: tuple[str, ...]):
        super().__init__()
        self.test = test
        self.reason = reason
        self.field = field
        self.legal = legal
        self.needs = needs
        self.predicate = eval(f"lambda {', '.join(needs)}: {test}")
        self.flagbuildnone = True

    def _evaluate(self, context, path, when):
        if not self.predicate(*(context[name] for name in self.needs)):
            raise FieldRuleError(
                f"{self.reason}: {self.legal} (while {when})",
                field=self.field,
                reason=self.reason,
                path=path,
            )

    def _parse(self, stream, context, path):
        self._evaluate(context, path, "parsing")

    def _build(self, obj, stream, context, path):
        self._evaluate(context, path, "building")

    def _sizeof(self, context, path):
        return 0


# --------------------------------------------------------------------------------------------
# Frames

FrameHeader = Struct(
    "proto_level"
    / Legal(
        Int32ub,
        test=f"(v & {PROTOCOL_VERSION_MASK:#010x}) == {PROTOCOL_LEVEL & PROTOCOL_VERSION_MASK:#010x}",
        reason="bad_version",
        legal=f"upper 16 bits {PROTOCOL_LEVEL >> 16:#06x}, lower 16 bits (patch level) free",
    )
    * "Protocol level: version in the upper 16 bits (must be 0x0011), patch level in the lower 16"
    " bits (ignored by receivers). Senders write 0x00110000.",
    "is_response"
    / enum_legal(Int8ub, Direction, "bad_is_response")
    * "0 for a request, 1 for a response. A server refuses responses and a client refuses requests.",
    "request_uid"
    / Int32ub
    * "Opaque request identifier chosen by the requester and echoed verbatim in every frame of the"
    " response; it matches a response to its request.",
    "op_class"
    / enum_legal(Int8ub, OpClass, "bad_op_class")
    * "Operation class; only 0 (user) exists.",
    "operation"
    / enum_legal(Int8ub, Operation, "bad_operation")
    * "The operation: 0 ADD, 1 GET, 2 REMOVE, 3 HAVE. A response carries its request's operation.",
    "complete"
    / enum_legal(Int8ub, Complete, "bad_complete")
    * "1 on the last frame of a message, 0 when more frames of the same message follow.",
    "data_len"
    / Legal(
        Int16ub,
        test=f"v <= {MAX_FRAME_DATA}",
        reason="bad_data_len",
        legal=f"0..{MAX_FRAME_DATA}",
    )
    * f"Number of data bytes following the header: 0..{MAX_FRAME_DATA}.",
    Rule(
        test=f"complete == 1 or data_len == {MAX_FRAME_DATA}",
        reason="short_non_final_frame",
        field="data_len",
        legal=f"a frame with complete = 0 carries exactly {MAX_FRAME_DATA} data bytes",
        needs=("complete", "data_len"),
    )
    * f"A non-final frame (complete = 0) must be full: data_len = {MAX_FRAME_DATA}.",
)
FrameHeader.__doc__ = "The fixed 14-byte header that starts every frame (big-endian)."

Frame = Struct(
    "header" / FrameHeader * "The 14-byte frame header.",
    "data"
    / Bytes(this.header.data_len)
    * "This frame's share of the message payload: data_len bytes. A message's payload is the"
    " concatenation of the data of its frames.",
)
Frame.__doc__ = "One wire unit: a header and up to 2048 bytes of message payload."


# --------------------------------------------------------------------------------------------
# Message payloads (the concatenated data of a message's frames)


def _status_field(values: tuple[Status, ...], doc: str) -> Construct:
    allowed = {int(v) for v in values}
    legal = ", ".join(f"{int(v)} {v.name}" for v in values)
    field = Legal(Int8ub, test=f"v in {sorted(allowed)!r}", reason="bad_status", legal=legal)
    field.enum = Status
    return "status" / field * doc


AddRequest = Struct(
    "timeout_ms"
    / Int32ub
    * "Lifetime of the session in milliseconds from the server's receipt of the request;"
    " 0..604800000 (7 days). 0 stores an already expired session.",
    "id_len" / Int32ub * "Length of the session id that follows: 1..64 for a storable session.",
    "session_id" / Bytes(this.id_len) * "The session id: arbitrary bytes, compared exactly.",
    "session"
    / GreedyBytes
    * "The session data: the rest of the payload, at least 1 byte (at most 32759 on the wire).",
)
AddRequest.__doc__ = "ADD request payload: store a session under an id with a timeout."

AddResponse = Struct(
    _status_field(
        (
            Status.OK,
            Status.ADD_CORRUPT,
            Status.ADD_MATCHING_SESSION,
            Status.ADD_TIMEOUT_RANGE,
            Status.ADD_ID_RANGE,
            Status.ADD_DATA_RANGE,
        ),
        "0 when stored; otherwise the first failing ADD check (100, 102, 103, 104, then 101).",
    )
)
AddResponse.__doc__ = "ADD response payload: one status byte."

IdRequest = Struct(
    "session_id"
    / GreedyBytes
    * "The session id: the whole payload, any length (not length-checked; ids over 64 bytes"
    " simply miss)."
)
IdRequest.__doc__ = "GET, REMOVE and HAVE request payload: just the session id."

GetHitResponse = Struct(
    "session" / GreedyBytes * "The stored session data, byte for byte (1..32759 bytes)."
)
GetHitResponse.__doc__ = "GET response payload on a hit: the raw session data, no status byte."

GetMissResponse = Struct(_status_field((Status.NOTOK,), "1 (NOTOK): no such session."))
GetMissResponse.__doc__ = (
    "GET response payload on a miss: the single byte 0x01. A stored 1-byte session 0x01 looks the"
    " same: the wire cannot tell them apart."
)

PresenceResponse = Struct(
    _status_field((Status.OK, Status.NOTOK), "0 (OK) present / removed, 1 (NOTOK) absent.")
)
PresenceResponse.__doc__ = "REMOVE and HAVE response payload: one status byte."

DisconnectedResponse = Struct(
    _status_field((Status.DISCONNECTED,), "2 (DISCONNECTED): the proxy lost its upstream link.")
)
DisconnectedResponse.__doc__ = (
    "Any response from a proxy whose upstream link failed while the request was in flight."
)

EmptyResponse = Struct()
EmptyResponse.__doc__ = (
    "Any response from a proxy that has no upstream link at all: an empty payload (one frame,"
    " data_len 0)."
)


@dataclass(frozen=True)
class MessageSchema:
    """One entry of the message catalogue: which payload schema a message of an operation and a
    direction carries, in which situation."""

    name: str
    operation: Operation | None
    direction: Direction
    schema: Struct
    when: str


MESSAGES: tuple[MessageSchema, ...] = (
    MessageSchema("ADD request", Operation.ADD, Direction.REQUEST, AddRequest, "always"),
    MessageSchema("ADD response", Operation.ADD, Direction.RESPONSE, AddResponse, "always"),
    MessageSchema("GET request", Operation.GET, Direction.REQUEST, IdRequest, "always"),
    MessageSchema("GET response (hit)", Operation.GET, Direction.RESPONSE, GetHitResponse, "hit"),
    MessageSchema(
        "GET response (miss)", Operation.GET, Direction.RESPONSE, GetMissResponse, "miss"
    ),
    MessageSchema("REMOVE request", Operation.REMOVE, Direction.REQUEST, IdRequest, "always"),
    MessageSchema(
        "REMOVE response", Operation.REMOVE, Direction.RESPONSE, PresenceResponse, "always"
    ),
    MessageSchema("HAVE request", Operation.HAVE, Direction.REQUEST, IdRequest, "always"),
    MessageSchema("HAVE response", Operation.HAVE, Direction.RESPONSE, PresenceResponse, "always"),
    MessageSchema(
        "Proxy: upstream lost", None, Direction.RESPONSE, DisconnectedResponse, "proxy only"
    ),
    MessageSchema("Proxy: no upstream", None, Direction.RESPONSE, EmptyResponse, "proxy only"),
)


def parse_header(data: bytes) -> Container:
    """Parse a 14-byte header with construct (the reference path; slow, for tools and tests)."""
    return FrameHeader.parse(data)


# --------------------------------------------------------------------------------------------
# Introspection: what generators (hot-path codec, docs, dissector) read instead of restating


@dataclass(frozen=True)
class FieldInfo:
    """One element of a schema struct, unwrapped: a fixed-size field or a rule over fields."""

    name: str | None
    doc: str
    construct: Construct
    offset: int | None
    size: int | None
    fmtstr: str | None
    legal: Legal | None
    rule: Rule | None


def _unwrap(sc: Construct) -> tuple[str | None, str, Construct]:
    name, doc = sc.name, sc.docs or ""
    while type(sc).__name__ == "Renamed":
        name = name or sc.name
        doc = doc or sc.docs or ""
        sc = sc.subcon
    return name, doc, sc


def fields_of(struct: Struct) -> list[FieldInfo]:
    """The elements of ``struct`` in order, with byte offsets while they are fixed-size."""
    out: list[FieldInfo] = []
    offset: int | None = 0
    for element in struct.subcons:
        name, doc, inner = _unwrap(element)
        legal = inner if isinstance(inner, Legal) else None
        rule = inner if isinstance(inner, Rule) else None
        base = legal.subcon if legal else inner
        fmtstr = getattr(base, "fmtstr", None)
        try:
            size = inner.sizeof()
        except Exception:  # variable-length (Bytes(this.x), GreedyBytes)
            size = None
        out.append(FieldInfo(name, doc, inner, offset, size, fmtstr, legal, rule))
        offset = None if offset is None or size is None else offset + size
    return out
