"""The server: accepts connections on bound listeners and serves them from one storage engine."""

from __future__ import annotations

import asyncio
import logging
import socket

from ..cache import SessionStore
from .connection import ServerConnection
from .handler import RequestHandler
from .listeners import serve_listener

__all__ = ["DEFAULT_MAX_CONNECTIONS", "Server"]

log = logging.getLogger("distcache.server")

#: Connections served at once; further ones are accepted and closed at once.
DEFAULT_MAX_CONNECTIONS = 1024


class Server:
    """Serves the distcache protocol from ``store`` on the sockets given to :meth:`start`.

    ``operations`` counts answered requests (for the progress line).
    """

    def __init__(
        self, store: SessionStore, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.store = store
        self.max_connections = max_connections
        self.operations = 0
        self._handler = RequestHandler(store)
        self._connections: set[ServerConnection] = set()
        self._listeners: list[asyncio.AbstractServer] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket]) -> None:
        """Listen and accept on already bound sockets (see ``bind_listeners``)."""
        for sock in sockets:
            self._listeners.append(await serve_listener(sock, self._new_connection))

    async def close(self) -> None:
        """Stop accepting, drop every connection, and close the engine."""
        for listener in self._listeners:
            listener.close()
        for connection in list(self._connections):
            connection.abort()
        await self._handler.cancel_calls()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        await self.store.close()

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (e.g. to learn the port chosen for port 0)."""
        return [sock for listener in self._listeners for sock in listener.sockets]

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- connections (called by ServerConnection) -------------------------------------------

    def _new_connection(self) -> ServerConnection:
        return ServerConnection(self, self._handler)

    def admit(self, connection: ServerConnection) -> bool:
        """Register a new connection, or refuse it when the server is at its connection cap."""
        if len(self._connections) >= self.max_connections:
            log.warning(
                "%s: refused, already serving %d connections (the maximum)",
                connection.peer,
                len(self._connections),
            )
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: ServerConnection) -> None:
        self._connections.discard(connection)
