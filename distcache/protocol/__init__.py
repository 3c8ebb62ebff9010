"""The sans-IO core of distcache: framing, reassembly, validation, request/response matching.

Nothing here touches sockets, asyncio or files; servers, clients, the proxy, the snooper, the
capture decoder and the conformance runner all call this code, so each protocol rule lives once.
"""

from .decoder import MessageDecoder
from .errors import REASONS, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import NEED_DATA, Closed, Message, Request, Response
from .framing import (
    encode_message,
    encode_request,
    encode_response,
    encode_status,
    frame_count,
    wire_size,
)
from .matching import Outstanding, RequestTracker
from .operations import (
    AddArgs,
    Outcome,
    add_payload,
    add_request,
    check_add,
    check_add_fields,
    check_forwardable,
    get_request,
    have_request,
    interpret_response,
    remove_request,
)

__all__ = [
    "NEED_DATA",
    "REASONS",
    "AddArgs",
    "Closed",
    "LocalProtocolError",
    "Message",
    "MessageDecoder",
    "Outcome",
    "Outstanding",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestTracker",
    "Response",
    "add_payload",
    "add_request",
    "check_add",
    "check_add_fields",
    "check_forwardable",
    "encode_message",
    "encode_request",
    "encode_response",
    "encode_status",
    "frame_count",
    "get_request",
    "have_request",
    "interpret_response",
    "remove_request",
    "wire_size",
]
