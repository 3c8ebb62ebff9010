"""The snooper's relay: each accepted client gets its own server connection, bytes go through
unchanged in both directions, and a copy of each chunk goes to the observer (and the pcap).

Closing (SNOOP-1): a client that half-closes has its end of stream passed on to the server (after
every byte before it), and replies keep flowing back; when the server closes, the pending bytes
are flushed to the client and the client connection is closed. Either side failing closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from ..address import Address
from ..netio import ConnectError, open_connection
from ..server.listeners import BACKLOG, listener_options
from ..tls import ClientTLSSetting
from ..wire import Direction
from .observer import ConnectionObserver, Emit
from .pcap import PcapRecorder

log = logging.getLogger("distcache.snoop")

#: Seconds allowed to connect to the server for a new client.
CONNECT_TIMEOUT = 10.0
_READ_SIZE = 1 << 16


class Snooper:
    """Relays clients accepted on ``start(sockets)`` to ``server``, reporting through ``emit``."""

    def __init__(
        self,
        server: Address,
        emit: Emit,
        pcap: PcapRecorder | None = None,
        *,
        tls: ClientTLSSetting = None,
    ) -> None:
        self.server = server
        #: How a ``TLS:`` server is verified (the relayed bytes are the decrypted stream).
        self.tls = tls
        self._emit = emit
        self._pcap = pcap
        self._listeners: list[asyncio.Server] = []
        self._relays: set[asyncio.Task] = set()
        self.connections = 0

    async def start(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            start = (
                asyncio.start_unix_server if sock.family == socket.AF_UNIX else asyncio.start_server
            )
            self._listeners.append(
                await start(self._accept, sock=sock, backlog=BACKLOG, **listener_options(sock))
            )

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        for task in list(self._relays):
            task.cancel()
        if self._relays:
            await asyncio.wait(self._relays, timeout=1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        self._relays.add(task)
        observer = ConnectionObserver(number, self._emit)
        try:
            try:
                up_reader, up_writer = await open_connection(
                    self.server, timeout=CONNECT_TIMEOUT, tls=self.tls
                )
            except ConnectError as error:
                observer.event("upstream_failed", reason=str(error))
                writer.close()
                return
            observer.event("open", peer=_peer(writer))
            if self._pcap is not None:
                self._pcap.open(number, time.time())
            try:
                await asyncio.gather(
                    self._pump(number, observer, reader, up_writer, Direction.REQUEST),
                    self._pump(number, observer, up_reader, writer, Direction.RESPONSE),
                )
            finally:
                up_writer.close()
                writer.close()
                observer.event("close")
                if self._pcap is not None:
                    self._pcap.forget(number)
                    self._pcap.flush()
        finally:
            self._relays.discard(task)

    async def _pump(self, number, observer, source, sink, direction: Direction) -> None:
        from_client = direction is Direction.REQUEST
        pcap = self._pcap
        try:
            while data := await source.read(_READ_SIZE):
                sink.write(data)  # relay first, unchanged; watching must not delay it
                observer.feed(direction, data)
                if pcap is not None:
                    pcap.data(number, from_client, data, time.time())
                await sink.drain()
        except OSError:
            pass  # a reset counts as the end of this direction
        observer.feed(direction, b"")
        if pcap is not None:
            pcap.fin(number, from_client, time.time())
        with contextlib.suppress(OSError):
            if from_client and sink.can_write_eof():
                sink.write_eof()  # pass the half-close on; replies may still come back
            else:
                await sink.drain()
                sink.close()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return "local"
