"""Typed protocol errors. Like h11, they say whose fault it is: the peer's (Remote...) or ours
(Local...). Every remote error carries a stable machine-readable ``reason``, the header ``field``
it concerns (when there is one) and the stream ``offset`` of the offending bytes."""

from __future__ import annotations

from ..wire.fastcodec import HEADER_CHECKS

#: Reasons a receiver rejects a stream, beyond the header checks declared in the schema.
STREAM_REASONS: dict[str, str] = {
    "wrong_direction": "a server received a response frame, or a client a request frame",
    "uid_changed": "a continuation frame carries another request_uid than its message",
    "operation_changed": "a continuation frame carries another operation than its message",
    "direction_changed": "a continuation frame switches between request and response",
    "message_too_large": "the reassembled payload would exceed the message limit",
    "truncated": "the stream ended inside a frame or inside a multi-frame message",
    "add_payload_too_short": "an ADD payload too short to hold its timeout and id_len fields",
    "unknown_uid": "a response whose request_uid matches no outstanding request",
    "operation_mismatch": "a response whose operation differs from its request's",
}

#: Every reason a :class:`RemoteProtocolError` can carry, with its meaning (header checks first,
#: in validation order).
REASONS: dict[str, str] = {c.reason: f"{c.field}: {c.legal}" for c in HEADER_CHECKS}
REASONS.update(STREAM_REASONS)


class ProtocolError(Exception):
    """Base class of every distcache protocol error."""


class LocalProtocolError(ProtocolError, ValueError):
    """We were asked to send something the protocol cannot carry (e.g. an oversize payload)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. Fatal for the connection it arrived on, and for nothing else."""

    def __init__(
        self, reason: str, detail: str, *, offset: int | None = None, field: str | None = None
    ):
        assert reason in REASONS, reason
        super().__init__(f"{reason} at offset {offset}: {detail}" if offset is not None else detail)
        self.reason = reason
        self.detail = detail
        self.offset = offset
        self.field = field

    def as_dict(self) -> dict:
        """The error as the JSON record of ``distcache decode`` (``error``, ``detail``, ``offset``)."""
        record = {"error": self.reason, "detail": self.detail, "offset": self.offset}
        if self.field is not None:
            record["field"] = self.field
        return record
