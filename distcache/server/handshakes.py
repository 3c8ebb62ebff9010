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
import logging
import socket
from collections.abc import Callable

from ..peers import ConnectionRegistry, PeerGroup, peer_key
from ..tls import HANDSHAKE_TIMEOUT, ServerTLS

__all__ = ["ACCEPTS_PER_TURN", "TLSAcceptor"]

log = logging.getLogger("distcache.server")

#: Connections accepted in one go before the event loop serves the others.
ACCEPTS_PER_TURN = 64


class TLSAcceptor:
    """Serves one listening TLS socket (the parts of ``asyncio.Server`` that programs use)."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ServerTLS,
        protocol_factory: Callable[[], asyncio.Protocol],
        registry: ConnectionRegistry,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._factory = protocol_factory
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._closed = asyncio.Event()
        self.sockets = [sock]

    async def start_serving(self) -> None:
        if not self._serving and not self._closed.is_set():
            self._serving = True
            self._loop.add_reader(self._sock.fileno(), self.accept_now)

    def is_serving(self) -> bool:
        return self._serving

    def accept_now(self) -> None:
        """Take in the connections the kernel has queued (a stopping program's last call)."""
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors, say: the next turn tries again
                log.warning("cannot accept a TLS connection: %s", error.strerror or error)
                return
            self._handshake(connection, address)

    def _handshake(self, connection: socket.socket, address: object) -> None:
        connection.setblocking(False)
        if connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        if not self._closed.is_set():
            self._closed.set()
            self._sock.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()


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
