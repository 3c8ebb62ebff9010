"""Wire enumerations: every code point the protocol defines, as documented IntEnums.

The doc string of each member is its meaning on the wire; the Sphinx spec and the Wireshark
dissector take their value tables from here.
"""

from __future__ import annotations

from enum import IntEnum


class _Documented(IntEnum):
    """An IntEnum whose members carry a one-line description (``member.doc``)."""

    def __new__(cls, value: int, doc: str = ""):
        member = int.__new__(cls, value)
        member._value_ = value
        member.doc = doc
        return member


class Direction(_Documented):
    """The ``is_response`` byte of the frame header."""

    REQUEST = 0, "A request, sent by a client (or a proxy) to a server."
    RESPONSE = 1, "A response, sent by a server (or a proxy) to a client."


class OpClass(_Documented):
    """The ``op_class`` byte. Only the user class exists."""

    USER = 0, "Session-cache operations (the only class defined)."


class Operation(_Documented):
    """The ``operation`` byte: what the request asks for."""

    ADD = 0, "Store a session under an id, with a timeout in milliseconds."
    GET = 1, "Fetch the session stored under an id."
    REMOVE = 2, "Delete the session stored under an id."
    HAVE = 3, "Ask whether a session is stored under an id."


class Complete(_Documented):
    """The ``complete`` byte: whether this frame ends its message."""

    MORE = 0, "More frames of this message follow; this frame carries exactly 2048 data bytes."
    LAST = 1, "This frame is the last (or only) frame of its message."


class Status(_Documented):
    """One-byte status answers (ADD, REMOVE and HAVE responses, GET misses, proxy failures)."""

    OK = 0, "Success: stored (ADD), removed (REMOVE), present (HAVE)."
    NOTOK = 1, "Failure or absence: no such session (GET miss, REMOVE, HAVE)."
    DISCONNECTED = (
        2,
        "Sent only by a proxy: its upstream link failed while the request was in flight.",
    )
    ADD_CORRUPT = 100, "ADD: id_len leaves no session byte or runs past the payload."
    ADD_MATCHING_SESSION = 101, "ADD: a live session is already stored under this id (unchanged)."
    ADD_TIMEOUT_RANGE = 102, "ADD: the timeout exceeds 604 800 000 ms (7 days)."
    ADD_ID_RANGE = 103, "ADD: the id is empty or longer than 64 bytes."
    ADD_DATA_RANGE = (
        104,
        "ADD: the session is empty or longer than 32768 bytes (unreachable on the wire).",
    )
