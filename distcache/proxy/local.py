"""One local client connection of the proxy.

At most one request per connection is in progress: the next one is not even decoded until the
previous reply has been written (PROXY-6), so pipelined requests are answered in order whatever
the reply sizes, and a client that sends faster than it reads is held back by the socket (its
unread bytes wait in the kernel and a bounded stream buffer; nothing grows without limit).

A protocol error from the client closes this connection only (PROXY-10, PROXY-12); replies already
written are flushed first. A client that leaves with a request in flight costs nothing: the reply
arrives later and is dropped (PROXY-4).
"""

from __future__ import annotations

import asyncio
import logging

from ..protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError
from ..wire import Direction
from .upstream import UpstreamLink

log = logging.getLogger("distcache.proxy")

_READ_SIZE = 1 << 16


class IdleWatch:
    """Closes an idle connection ``idle`` seconds after it was accepted or last forwarded a
    request, unless a request is in progress (PROXY-8). Requests answered locally (no upstream)
    do not count as forwarded, as in the legacy."""

    def __init__(self, idle: float, writer: asyncio.StreamWriter) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._writer = writer
        self._deadline = self._loop.time() + idle
        self._busy = False
        self.expired = False
        self._timer = self._loop.call_at(self._deadline, self._check)

    def busy(self) -> None:
        self._busy = True

    def forwarded(self) -> None:
        self._deadline = self._loop.time() + self._idle

    def answered(self) -> None:
        self._busy = False
        self._timer.cancel()
        self._timer = self._loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        if self._busy:
            return  # re-armed by answered()
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check)
            return
        self.expired = True
        self._writer.close()

    def cancel(self) -> None:
        self._timer.cancel()


async def serve_local_client(
    number: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    link: UpstreamLink,
    idle: float,
) -> None:
    """Serve one local connection until it closes (or breaks the protocol, or idles out)."""
    decoder = MessageDecoder(receives=Direction.REQUEST)
    watch = IdleWatch(idle, writer) if idle > 0 else None
    try:
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                decoder.receive_data(await reader.read(_READ_SIZE))
                continue
            if type(event) is Closed:
                break
            if watch is None:
                payload = await link.exchange(event.operation, event.payload)
            else:
                watch.busy()
                payload = await link.exchange(event.operation, event.payload, watch.forwarded)
                watch.answered()
            writer.write(event.respond(payload))
            await writer.drain()
    except RemoteProtocolError as error:
        if watch is None or not watch.expired:
            log.warning("local client %d broke the protocol, closing it: %s", number, error)
    except (ConnectionError, OSError):
        pass  # the client went away; nothing of it is left to serve
    finally:
        if watch is not None:
            watch.cancel()
        writer.close()
