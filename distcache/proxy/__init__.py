"""The local proxy (dc_client): many local connections over one persistent upstream connection.

A thin asyncio shell around :mod:`distcache.protocol`: the decoder validates and reassembles, the
request tracker rewrites and matches uids, the framing encoder writes each message in one call.
"""

from ..link import (
    DISCONNECTED_REPLY,
    EMPTY_REPLY,
    TRANSITIONS,
    LinkEvent,
    LinkState,
    UpstreamLink,
)
from .proxy import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_RETRY_MS,
    MAX_IDLE_MS,
    MAX_RETRY_MS,
    Proxy,
    ProxySettings,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_PER_PEER",
    "DEFAULT_RETRY_MS",
    "DISCONNECTED_REPLY",
    "EMPTY_REPLY",
    "MAX_IDLE_MS",
    "MAX_RETRY_MS",
    "TRANSITIONS",
    "LinkEvent",
    "LinkState",
    "Proxy",
    "ProxySettings",
    "UpstreamLink",
]
