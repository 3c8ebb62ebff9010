"""The client's typed errors. Each says what went wrong and where, so callers can choose to
retry (transport), give up on the peer (protocol), or route around a proxy (upstream).

Hierarchy::

    DistcacheError
    ├── TransportError               the network failed
    │   ├── ConnectionFailed         could not connect
    │   ├── ConnectionLost           the connection died before the reply was complete
    │   └── OperationTimeout         no reply in time (also a builtin TimeoutError)
    ├── ProtocolViolation            the peer broke the protocol; the connection was dropped
    ├── UpstreamError                a proxy answered for a cache server it cannot reach
    │   ├── UpstreamDisconnected     the 0x02 reply: upstream lost while the request was in flight
    │   └── NoUpstream               the empty reply: the proxy has no upstream connection
    └── InvalidRequest               refused locally, before any traffic (also a ValueError)
"""

from __future__ import annotations

from ..protocol import RemoteProtocolError


class DistcacheError(Exception):
    """Base class of every error the client raises (bad arguments aside: TypeError)."""


class TransportError(DistcacheError):
    """The network failed: connecting, sending or receiving. RETRY mode may resend once."""


class ConnectionFailed(TransportError):
    """A connection to the cache could not be opened (refused, unreachable, no such socket)."""


class ConnectionLost(TransportError):
    """The connection broke or was closed by the peer before the reply was complete."""


class OperationTimeout(TransportError, TimeoutError):
    """Connecting or waiting for the reply took longer than the client's ``timeout``.

    The connection is dropped (its reply may still arrive, and must not be mistaken for the reply
    to a later request). Never resent, even in RETRY mode: the server may have acted on it.
    """


class ProtocolViolation(DistcacheError):
    """The peer broke the protocol: a reply with an unknown uid or the wrong operation, a request
    frame where a reply was due, an oversize or malformed message, an undefined status byte, a
    status reply that is not exactly one byte.

    The connection is dropped, so the next operation starts clean (legacy bug B15: it hung).
    ``reason`` is a stable machine-readable name; ``cause`` is the sans-IO core's
    :class:`~distcache.protocol.RemoteProtocolError` when the framing layer found the fault.
    """

    def __init__(self, reason: str, detail: str, cause: RemoteProtocolError | None = None):
        super().__init__(reason, detail, cause)  # all in args, so copy.copy() works
        self.reason = reason
        self.detail = detail
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"

    @classmethod
    def from_remote(cls, error: RemoteProtocolError) -> ProtocolViolation:
        """Wrap an error raised by the sans-IO core."""
        return cls(error.reason, str(error), error)


class UpstreamError(DistcacheError):
    """A proxy (dc_client) answered on behalf of a cache server it could not reach. The
    connection to the proxy is fine and is kept."""


class UpstreamDisconnected(UpstreamError):
    """The proxy's link to the cache server failed while the request was in flight (reply 0x02).
    The request may or may not have been carried out."""


class NoUpstream(UpstreamError):
    """The proxy has no link to a cache server (an empty reply). The request was not forwarded."""


class InvalidRequest(DistcacheError, ValueError):
    """An argument the protocol cannot carry or the client refuses to send; nothing was sent."""

    def __init__(self, reason: str, override: str | None = None) -> None:
        hint = f" ({override} sends it anyway)" if override else ""
        super().__init__(reason + hint)
        self.reason = reason
        #: The Client keyword setting that would let the request through, None if none would;
        #: a command line names its own flag instead.
        self.override = override
