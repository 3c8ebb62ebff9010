"""The server: accepts connections on bound listeners and serves them from one storage engine."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket

from ..cache import SessionStore
from ..peers import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PEER_BYTES, ConnectionRegistry
from .accepting import AcceptSlot
from .connection import ServerConnection
from .handler import RequestHandler
from .listeners import serve_listener, stop_listening

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PER_PEER", "Server"]

log = logging.getLogger("distcache.server")

#: Connections served at once; at the cap the longest idle one makes room for a new one.
DEFAULT_MAX_CONNECTIONS = 1024
#: Connections from one TCP peer address (0: no limit but the global cap): half the default cap,
#: so that one host can never hold every place; see :mod:`distcache.peers`.
DEFAULT_MAX_PER_PEER = DEFAULT_MAX_CONNECTIONS // 2


class Server:
    """Serves the distcache protocol from ``store`` on the sockets given to :meth:`start`.

    ``operations`` counts answered requests (for the progress line).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_peer: int = DEFAULT_MAX_PER_PEER,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_peer_bytes: int = DEFAULT_MAX_PEER_BYTES,
        handler: RequestHandler | None = None,
        min_timeout_ms: int = 0,
    ) -> None:
        self.connections = ConnectionRegistry(
            log,
            max_connections=max_connections,
            max_per_peer=max_per_peer,
            idle_timeout=idle_timeout,
            max_peer_bytes=max_peer_bytes,
        )
        self.store = store
        self.max_connections = max_connections
        self.operations = 0
        # Read by the metrics (distcache.monitoring.metrics): plain counters, no cost per request.
        self.accepted = 0  # connections admitted since start
        self.protocol_errors: collections.Counter[str] = collections.Counter()  # by reason
        # A worker of ``dc_server -workers N`` answers through its engine owner instead.
        self._handler = (
            RequestHandler(store, min_timeout_ms=min_timeout_ms) if handler is None else handler
        )
        self._listeners: list[asyncio.AbstractServer] = []
        self._sockets: list[socket.socket] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket], balance: AcceptSlot | None = None) -> None:
        """Listen and accept on already bound sockets (see ``bind_listeners``); a worker of
        several takes its turn with the others through ``balance``."""
        if balance is not None:
            balance.attach(self.connections)
        for sock in sockets:
            self._listeners.append(
                await serve_listener(
                    sock, self._new_connection, registry=self.connections, balance=balance
                )
            )
            self._sockets.append(sock)
        self.connections.start(asyncio.get_running_loop())

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; let connections answer what they have received for up to ``grace``
        seconds (:meth:`ConnectionRegistry.drain`), drop the rest, and close the engine.

        Connections the kernel has queued on the listeners are accepted first and served alike:
        their clients may have sent requests before the stop."""
        await stop_listening(
            self.connections, self._listeners, self._sockets, self._new_connection, grace
        )
        dropped = await self.connections.drain(grace)
        if dropped and grace > 0:
            log.warning("stopped with %d connections still busy after %g s", dropped, grace)
        await self._handler.cancel_calls()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        self._sockets.clear()
        await self.store.close()

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (e.g. to learn the port chosen for port 0)."""
        return [sock for listener in self._listeners for sock in listener.sockets]

    @property
    def handler(self) -> RequestHandler:
        """Answers the requests (its ``outcomes`` are counted for the metrics)."""
        return self._handler

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    # -- connections (called by ServerConnection) -------------------------------------------

    def _new_connection(self) -> ServerConnection:
        return ServerConnection(self, self._handler)

    def admit(self, connection: ServerConnection, key: str | None) -> bool:
        """Register a new connection, or refuse it (see :class:`ConnectionRegistry`)."""
        admitted = self.connections.admit(connection, key, connection.peer)
        self.accepted += admitted
        return admitted

    @property
    def refused(self) -> int:
        """Connections refused (at the cap with every connection busy, or over a peer's limit)."""
        return self.connections.refused

    def forget(self, connection: ServerConnection) -> None:
        self.connections.forget(connection)
