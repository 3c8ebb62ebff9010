"""The distcache client library: the legacy DC_CTX API in Python, blocking and asyncio.

:class:`Client` (blocking) and :class:`AsyncClient` (asyncio, pipelined) are thin shells over one
sans-IO core (:mod:`distcache.client.calls`, :mod:`distcache.client.connection`, which build on
:mod:`distcache.protocol`); both behave identically::

    with Client("IP:127.0.0.1:9001") as cache:
        cache.add(b"id", b"session", 60_000)        # True if stored
        cache.get(b"id")                            # b"session", or None on a miss

    async with AsyncClient("UNIX:/run/scache") as cache:
        await asyncio.gather(*(cache.have(i) for i in ids))   # pipelined on one connection

Operations and results
    ``add(id, session, timeout_ms) -> bool``: True if stored. ``add_status(...) -> Status``:
    ``Status.OK`` or the server's refusal (101 already present, 102 timeout range, 103 id range,
    100/104 malformed), so callers can tell them apart. ``get(id) -> bytes | None``;
    ``remove(id) -> bool`` (False: nothing to remove); ``have(id) -> bool``;
    ``Client.reget(id) -> bytes | None`` (the last successful get's data, no traffic).

Errors (:mod:`distcache.client.errors`)
    TransportError (ConnectionFailed, ConnectionLost, OperationTimeout — also a TimeoutError),
    ProtocolViolation (the peer broke the protocol), UpstreamDisconnected and NoUpstream (a proxy
    answered for a server it cannot reach), InvalidRequest (a ValueError: refused before sending),
    TypeError for arguments that are not bytes. After a TransportError or ProtocolViolation the
    connection is dropped and the next operation opens a new one, so nothing ever hangs on a
    reply that was rejected (legacy bug B15). Every operation has a timeout (default 5 s, the
    legacy had none, B18).

Connection modes (:class:`Mode`, the legacy flag values)
    ``TEMPORARY`` (0) one connection per operation; ``PERSISTENT`` (0x1) one reused connection;
    modifiers, only with PERSISTENT: ``PIDCHECK`` (0x2) a forked child reconnects once, then
    reuses its own connection (legacy: on every operation, B13); ``RETRY`` (0x4) on a network
    failure of a reused connection, reconnect once and resend, and if the reconnect fails raise
    ConnectionFailed and stay usable (legacy: crashed, B14); ``LATE`` (0x8) connect at the first
    operation rather than at construction. Default: ``PERSISTENT | PIDCHECK | RETRY``.

Reading a GET reply (the 1-byte ambiguity)
    On the wire a miss is the single byte 0x01, a proxy whose upstream failed answers the single
    byte 0x02, and a hit is the stored session, raw. A stored 1-byte session is therefore
    indistinguishable from those answers. This library reads a GET reply as:

    - empty: NoUpstream (only a proxy without upstream answers so);
    - exactly ``01``: a miss (None);
    - exactly ``02``: UpstreamDisconnected, always, since the peer may be a proxy and a silent
      miss would hide the failure;
    - any other single byte (``00``, ``03``..``ff``): a hit, the 1-byte session;
    - 2 bytes or more: a hit. The legacy library took every reply shorter than 5 bytes for a miss
      (B17), which made sessions of 1 to 4 bytes unreadable; real sessions are rarely that short,
      but a cache must return what it stored.

    Because no GET could read them back, ADD refuses the 1-byte sessions ``01`` and ``02`` with
    InvalidRequest, unless the client was made with ``allow_ambiguous=True``. For drop-in
    behaviour, ``legacy_get_semantics=True`` restores "shorter than 5 bytes is a miss" (proxy
    failures still raise).

ADD validation (errors, where the legacy aborted the process, B26/CTX-8)
    Empty id or session, or an ADD payload over MAX_PAYLOAD, raise InvalidRequest before any
    traffic. With ``strict_timeouts=True`` (the default) the timeout must be within
    ``CLIENT_MIN_TIMEOUT_MS + 1 .. MAX_TIMEOUT_MS`` (501 ms to 7 days); ``strict_timeouts=False``
    sends any 32-bit value (tests of expiry need short timeouts). Ids longer than 64 bytes are
    left to the server, which refuses them with 103.

Request uids
    Each client counts its own uids from 1, wrapping within 32 bits, across reconnects. The
    legacy used one process-wide 64-bit counter whose low 32 bits went on the wire, so after 2**32
    operations no reply could match (B9). Replies are matched by uid and operation; anything else
    is a ProtocolViolation.
"""

from ..wire import Status
from .aio import DEFAULT_MAX_IN_FLIGHT, AsyncClient
from .blocking import Client
from .errors import (
    ConnectionFailed,
    ConnectionLost,
    DistcacheError,
    InvalidRequest,
    NoUpstream,
    OperationTimeout,
    ProtocolViolation,
    TransportError,
    UpstreamDisconnected,
    UpstreamError,
)
from .modes import DEFAULT_MODE, Mode
from .settings import DEFAULT_TIMEOUT

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MODE",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "ConnectionLost",
    "DistcacheError",
    "InvalidRequest",
    "Mode",
    "NoUpstream",
    "OperationTimeout",
    "ProtocolViolation",
    "Status",
    "TransportError",
    "UpstreamDisconnected",
    "UpstreamError",
]
