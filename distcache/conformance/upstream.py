"""A scripted upstream server for proxy cases: the runner plays the server a proxy talks to."""

from __future__ import annotations

import asyncio
import contextlib

from ..protocol import (
    Closed,
    MessageDecoder,
    RemoteProtocolError,
    Request,
    encode_message,
)
from ..wire import Direction
from .targets import bound_loopback_socket

__all__ = ["FakeUpstream", "UpstreamLink"]


class UpstreamLink:
    """One connection the proxy opened to us."""

    def __init__(self, upstream: FakeUpstream, reader, writer):
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.decoder = MessageDecoder(receives=Direction.REQUEST)
        self.closed = asyncio.Event()

    async def pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(1 << 16)
                self.decoder.receive_data(data)
                for event in self.decoder.events():
                    if isinstance(event, Request):
                        await self.upstream.requests.put((self, event))
                    elif isinstance(event, Closed):
                        return
                if not data:
                    return
        except (ConnectionError, OSError, RemoteProtocolError):
            return
        finally:
            self.closed.set()
            self.writer.close()

    def reply(self, request: Request, payload: bytes, *, uid: int | None = None, operation=None):
        """Answer ``request`` (optionally lying about its uid or operation)."""
        data = encode_message(
            Direction.RESPONSE,
            request.request_uid if uid is None else uid,
            request.operation if operation is None else operation,
            payload,
        )
        if not self.writer.is_closing():
            self.writer.write(data)

    def drop(self) -> None:
        """Close the link abruptly, as a failing server would."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


class FakeUpstream:
    """Listens on a loopback port; hands out the proxy's links and the requests they carry."""

    def __init__(self) -> None:
        self.address = ""
        self.links: asyncio.Queue[UpstreamLink] = asyncio.Queue()
        self.requests: asyncio.Queue[tuple[UpstreamLink, Request]] = asyncio.Queue()
        self.link_count = 0
        self._server = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._accept, sock=bound_loopback_socket())
        self.address = f"IP:127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader, writer) -> None:
        link = UpstreamLink(self, reader, writer)
        self.link_count += 1
        await self.links.put(link)
        task = asyncio.current_task()
        self._tasks.add(task)
        await link.pump()

    async def next_link(self, timeout: float) -> UpstreamLink:
        return await asyncio.wait_for(self.links.get(), timeout)

    async def next_request(self, timeout: float) -> tuple[UpstreamLink, Request]:
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
