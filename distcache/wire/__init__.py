"""The wire format of distcache: enums, limits and construct schemas (the single source of truth),
plus the hot-path header codec generated from them."""

from . import fastcodec, limits, schema
from .enums import Complete, Direction, OpClass, Operation, Status
from .limits import *  # noqa: F403 - the limits are the public vocabulary of the wire
from .schema import (
    MESSAGES,
    AddRequest,
    AddResponse,
    DisconnectedResponse,
    EmptyResponse,
    Frame,
    FrameHeader,
    GetHitResponse,
    GetMissResponse,
    IdRequest,
    MessageSchema,
    PresenceResponse,
)

__all__ = [
    "MESSAGES",
    "AddRequest",
    "AddResponse",
    "Complete",
    "Direction",
    "DisconnectedResponse",
    "EmptyResponse",
    "Frame",
    "FrameHeader",
    "GetHitResponse",
    "GetMissResponse",
    "IdRequest",
    "MessageSchema",
    "OpClass",
    "Operation",
    "PresenceResponse",
    "Status",
    "fastcodec",
    "limits",
    "schema",
    *[name for name in dir(limits) if name.isupper()],
]
