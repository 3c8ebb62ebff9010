"""TLS listeners whose connections count from their accept on, not from their handshake's end.

asyncio's TLS servers call a protocol only once the handshake is over, so a peer that opens
connections and never finishes a handshake would hold sockets and TLS state outside every
connection limit (ROBUST-10). A :class:`TLSAcceptor` accepts the connections itself, registers
each with the program's :class:`~distcache.peers.ConnectionRegistry` as a handshake in progress
(idle since its accept: the first to make room at the cap), and only then lets asyncio run the
handshake; the connection's own protocol takes the place over when the handshake is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from ..peers import ConnectionRegistry, PeerGroup, peer_key
from ..tls import HANDSHAKE_TIMEOUT, ServerTLS
from .accepting import Acceptor, AcceptSlot

__all__ = ["TLSAcceptor"]


class TLSAcceptor(Acceptor):
    """Serves one listening TLS socket, counting each connection from its accept on."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ServerTLS,
        protocol_factory: Callable[[], asyncio.Protocol],
        registry: ConnectionRegistry,
        balance: AcceptSlot | None = None,
    ) -> None:
        super().__init__(sock, balance)
        self._tls = tls
        self._factory = protocol_factory
        self._registry = registry

    def _take(self, connection: socket.socket, address: object) -> None:
        pending = _Handshake(self._loop.time())
        if not self._registry.admit(pending, peer_key(address), f"{_describe(address)} (TLS)"):
            connection.close()
            return
        factory = self._factory
        registry = self._registry

        def hand_over() -> asyncio.Protocol:
            return _HandOver(factory(), lambda: registry.forget(pending))

        def done(task: asyncio.Task) -> None:
            registry.forget(pending)  # (a no-op once the connection's protocol took over)
            if task.cancelled() or task.exception() is not None:
                connection.close()  # refused, too slow, or reclaimed (asyncio may have already)

        pending.task = self._loop.create_task(
            self._loop.connect_accepted_socket(
                hand_over,
                connection,
                ssl=self._tls.context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        )
        pending.task.add_done_callback(done)


class _Handshake:
    """A connection whose TLS handshake is in progress, as the registry sees it."""

    __slots__ = ("last_active", "peer_group", "peer_held", "task")

    def __init__(self, accepted: float) -> None:
        self.last_active = accepted
        self.task: asyncio.Task | None = None
        self.peer_group: PeerGroup | None = None
        self.peer_held = 0

    @property
    def busy(self) -> bool:
        return False  # nothing asked yet: the first to make room at the cap

    def reclaim(self) -> None:
        self.abort()

    def finish(self) -> None:
        """Stopping: the handshake goes on; its connection then finishes like the others."""

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def held_now(self) -> int:
        return 0

    def peer_review(self) -> None:
        pass


class _HandOver(asyncio.Protocol):
    """Wraps the connection's protocol until the handshake is done, then steps aside."""

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._release()  # the handshake's place goes to the connection itself
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(Exception):
            self._inner.connection_lost(exc)


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "TLS peer"
