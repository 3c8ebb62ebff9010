"""The proxy (dc_client): many local connections multiplexed over one upstream connection."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
from dataclasses import dataclass

from ..address import Address
from ..allowlist import AllowList
from ..link import UpstreamLink
from ..peers import DEFAULT_GRACE_SECONDS, DEFAULT_MAX_PEER_BYTES, ConnectionRegistry
from ..server.listeners import BACKLOG, bind_listeners, serve_listener, stop_listening
from ..tls import ClientTLSSetting, ServerTLS
from .local import LocalConnection

log = logging.getLogger("distcache.proxy")

#: Legacy defaults and bounds of the dc_client flags.
DEFAULT_LISTEN = "UNIX:/tmp/scache"
DEFAULT_RETRY_MS = 5000
MAX_RETRY_MS = 3_600_000
MAX_IDLE_MS = 3_600_000
#: The legacy's fixed limits, made adjustable here.
DEFAULT_MAX_IN_FLIGHT = 512
DEFAULT_MAX_CLIENTS = 1024
#: Local connections from one TCP peer address (a UNIX listener's peers are not counted).
DEFAULT_MAX_PER_PEER = DEFAULT_MAX_CLIENTS // 2


@dataclass(frozen=True)
class ProxySettings:
    listen: Address
    server: Address
    retry_ms: int = DEFAULT_RETRY_MS
    idle_ms: int = 0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    #: Bytes the local connections of one TCP peer address may hold together (0: not counted).
    max_peer_bytes: int = DEFAULT_MAX_PEER_BYTES
    #: Seconds a stop leaves local connections to get the answers to what they sent.
    grace: float = DEFAULT_GRACE_SECONDS
    #: How a ``TLS:`` server is verified and which certificate the proxy presents to it.
    tls: ClientTLSSetting = None
    #: The certificate of a ``TLS:`` listen address (and the CA its clients must chain to).
    listen_tls: ServerTLS | None = None
    #: The clients a plain TCP listen address serves (None: everyone).
    allow: AllowList | None = None


class Proxy:
    """Listen locally, forward upstream. ``await start()``, then ``await close()``."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.link = UpstreamLink(
            settings.server,
            retry_ms=settings.retry_ms,
            max_in_flight=settings.max_in_flight,
            tls=settings.tls,
        )
        self._listeners: list[asyncio.Server] = []
        # The proxy's idle timeout is the legacy -idle, kept per connection (LocalConnection).
        self.connections = ConnectionRegistry(
            log,
            max_connections=settings.max_clients,
            max_per_peer=settings.max_per_peer,
            max_peer_bytes=settings.max_peer_bytes,
        )
        self._sockets: list[socket.socket] = []
        self._accepted = 0
        # Read by the metrics (distcache.monitoring.metrics).
        self.protocol_errors: collections.Counter[str] = collections.Counter()  # by reason
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def accepted(self) -> int:
        """Local connections admitted since start."""
        return self._accepted

    @property
    def refused(self) -> int:
        """Local connections refused (every one busy at the cap, or over a peer's limit)."""
        return self.connections.refused

    @property
    def clients(self) -> int:
        """Local connections being served."""
        return len(self.connections)

    def listen_address(self) -> str:
        """The address actually listened on (the real port when the settings said port 0)."""
        address = self.settings.listen
        if address.kind != "tcp" or not self._listeners:
            return str(address)
        host, port = self._listeners[0].sockets[0].getsockname()[:2]
        prefix = "TLS" if address.tls else "IP"
        return f"{prefix}:[{host}]:{port}" if ":" in host else f"{prefix}:{host}:{port}"

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on already bound ``sockets`` (bound here from the settings when None; raises
        ListenError/AddressError), and make the first upstream attempt."""
        self.loop = asyncio.get_running_loop()
        if sockets is None:
            settings = self.settings
            sockets = bind_listeners(settings.listen, tls=settings.listen_tls, allow=settings.allow)
        for sock in sockets:
            sock.listen(BACKLOG)  # now, so that clients wait in the backlog (see below)
            # A UNIX peer has no address to count (peer_key): asking for it costs a socket
            # object and two system calls per connection.
            keyed = sock.family != socket.AF_UNIX
            self._listeners.append(
                await serve_listener(
                    sock,
                    functools.partial(LocalConnection, self, keyed=keyed),
                    registry=self.connections,
                    backlog=BACKLOG,
                    start_serving=False,
                )
            )
            self._sockets.append(sock)
        # Clients wait in the backlog until the first attempt has an outcome, so the first
        # requests are forwarded, or answered EMPTY, never caught by the attempt in progress.
        self.link.start()
        self.connections.start(self.loop)
        await self.link.settled()
        for listener in self._listeners:
            await listener.start_serving()

    def _new_connection(self) -> LocalConnection:
        return LocalConnection(self)

    def admit(self, connection: LocalConnection, key: str | None) -> int | None:
        """Register a new local connection and return its number, or None when refused (see
        :class:`~distcache.peers.ConnectionRegistry`)."""
        self._accepted += 1
        if not self.connections.admit(connection, key, f"local client {self._accepted}"):
            return None
        return self._accepted

    def forget(self, connection: LocalConnection) -> None:
        self.connections.forget(connection)  # (LocalConnection calls the registry itself)

    async def close(self, grace: float = 0.0, *, remove_socket_file: bool = True) -> None:
        """Stop listening; let local connections get the answers to the requests they sent for
        up to ``grace`` seconds, then drop the rest and the upstream link. Connections the kernel
        has queued on the listener are accepted first and served alike.

        A worker of ``dc_client -workers N`` leaves the UNIX socket file to its supervisor: the
        other workers still serve on it."""
        await stop_listening(
            self.connections, self._listeners, self._sockets, self._new_connection, grace
        )
        if remove_socket_file and self._listeners and self.settings.listen.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.settings.listen.path)
        dropped = await self.connections.drain(grace)
        if dropped and grace > 0:
            log.warning("stopped with %d local connections still busy after %g s", dropped, grace)
        await self.link.close()
