"""The pipelined upstream link: many local requesters over one persistent connection.

Shared by the proxy (``dc_client``), whose local clients all go to one server, and by the
workers of ``dc_server -workers N``, whose clients' requests all go to the engine's owner.
"""

from .dial import dial
from .upstream import (
    CONNECT_TIMEOUT,
    DISCONNECTED_REPLY,
    EMPTY_REPLY,
    TRANSITIONS,
    LinkEvent,
    LinkState,
    Requester,
    UpstreamLink,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DISCONNECTED_REPLY",
    "EMPTY_REPLY",
    "TRANSITIONS",
    "LinkEvent",
    "LinkState",
    "Requester",
    "UpstreamLink",
    "dial",
]
