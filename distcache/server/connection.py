"""One client connection: bytes in through the sans-IO decoder, replies out in request order.

Ordering: requests are taken from the decoder one at a time. With a synchronous engine core each
reply is written before the next request is decoded; otherwise the connection stops taking
requests while one is in flight with the engine, so replies can never overtake each other and
pipelining works whatever the reply sizes.

Back-pressure: reading pauses while the transport holds more than ``REPLY_BACKLOG`` unsent reply
bytes or the decoder holds more than ``INPUT_BACKLOG`` received bytes, and resumes once both have
drained; a client that pipelines requests without reading its replies therefore costs a bounded
amount of memory.

Errors: a protocol error closes only this connection, without a reply, after the replies to every
request that was complete before the offending bytes have been sent (the legacy executed those
requests but lost their answers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError
from ..wire import HEADER_SIZE, MAX_FRAMES, MAX_PAYLOAD, Direction

if TYPE_CHECKING:
    from .handler import RequestHandler
    from .server import Server

__all__ = [
    "INPUT_BACKLOG",
    "LINGER_SECONDS",
    "REPLY_BACKLOG",
    "REPLY_BATCH",
    "ServerConnection",
]

log = logging.getLogger("distcache.server")

#: Unsent reply bytes above which the connection stops reading requests.
REPLY_BACKLOG = 256 * 1024
#: Received, undecoded bytes above which the connection stops reading: two of the largest
#: messages, so one whole message can always be buffered behind the one being answered.
INPUT_BACKLOG = 2 * (MAX_PAYLOAD + MAX_FRAMES * HEADER_SIZE)
#: Reply bytes gathered from one read before they are written out anyway.
REPLY_BATCH = 64 * 1024
#: How long a closing connection may take to flush its last replies to a peer that does not read.
LINGER_SECONDS = 30.0


class ServerConnection(asyncio.Protocol):
    """The protocol object of one accepted connection (created by :class:`Server`)."""

    def __init__(self, server: Server, handler: RequestHandler) -> None:
        self._server = server
        self._handler = handler
        self._sync = handler.sync_core is not None
        self._decoder = MessageDecoder(receives=Direction.REQUEST)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.peer = "?"
        self._writing_paused = False  # the transport's reply buffer is over its high mark
        self._reading_paused = False
        self._in_flight = False  # an asynchronous engine call is pending
        self._closing = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # Kept: asyncio.get_running_loop() costs a getpid() system call on CPython 3.11.
        self._loop = asyncio.get_running_loop()
        self.peer = _describe_peer(transport)
        if not self._server.admit(self):
            self._closing = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=REPLY_BACKLOG)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._decoder.receive_data(data)
        self._serve()

    def eof_received(self) -> bool:
        if not self._closing:
            self._decoder.receive_data(b"")
            self._serve()
        return True  # keep the sending side open: replies to earlier requests still go out

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._serve()

    # -- serving ----------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer requests while the decoder has whole ones and the peer is keeping up.

        Replies to the requests of one read leave in one write (a proxy pipelines many requests
        per read; one system call for all their replies), flushed early past ``REPLY_BATCH``
        bytes so that pause_writing can stop the loop before memory piles up.
        """
        next_event = self._decoder.next_event
        answer_now = self._handler.answer_now if self._sync else None
        replies: list[bytes] = []
        batched = 0
        try:
            while not (self._writing_paused or self._in_flight or self._closing):
                event = next_event()
                if event is NEED_DATA:
                    self._write(replies)
                    # The decoder now holds less than one message (it checks every limit on the
                    # header), so it is under INPUT_BACKLOG: only paused reading may need a change.
                    if self._reading_paused:
                        self._update_reading()
                    return
                if type(event) is Closed:
                    self._write(replies)
                    self._close()
                    return
                if answer_now is not None:
                    reply = answer_now(event)
                    replies.append(reply)
                    batched += len(reply)
                    if batched > REPLY_BATCH:
                        self._write(replies)
                        replies, batched = [], 0
                else:
                    reply = self._handler.begin(event, self._answered)
                    if reply is not None:  # answered without the engine (a refused ADD)
                        replies.append(reply)
                        continue
                    self._write(replies)
                    replies = []
                    self._in_flight = True
        except RemoteProtocolError as error:
            if error.offset is None:  # raised on a whole message: point at its start
                error.offset = event.offset
            self._write(replies)  # the requests before the offending bytes are answered
            self._reject(error)
            return
        except Exception as error:  # the engine refused the call itself (e.g. closed)
            self._write(replies)
            self._engine_failed(error)
            return
        self._write(replies)
        self._update_reading()

    def _write(self, replies: list[bytes]) -> None:
        if replies:
            self._server.operations += len(replies)
            if len(replies) == 1:
                self._transport.write(replies[0])  # type: ignore[union-attr]
            else:
                self._transport.writelines(replies)  # type: ignore[union-attr]

    def _answered(self, outcome: object) -> None:
        """The engine's answer to the request in flight: its reply, or the error that stopped it."""
        self._in_flight = False
        if self._closing:
            return
        if type(outcome) is bytes:
            self._transport.write(outcome)  # type: ignore[union-attr]
            self._server.operations += 1
            self._serve()
        else:
            self._engine_failed(outcome)

    def _engine_failed(self, error: object) -> None:
        log.error(
            "%s: storage engine failed; closing the connection",
            self.peer,
            exc_info=error if isinstance(error, BaseException) else None,
        )
        self._close(abort=True)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        wanted = not self._writing_paused and self._decoder.buffered <= INPUT_BACKLOG
        if wanted == self._reading_paused:
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()
            self._reading_paused = not wanted

    # -- closing ----------------------------------------------------------------------------

    def _reject(self, error: RemoteProtocolError) -> None:
        level = logging.INFO if error.reason == "truncated" else logging.WARNING
        log.log(
            level,
            "%s: protocol error %s at offset %s%s: %s; closing the connection",
            self.peer,
            error.reason,
            error.offset,
            f" ({error.field})" if error.field else "",
            error.detail,
        )
        self._close()

    def _close(self, *, abort: bool = False) -> None:
        """Close after the queued replies are sent (or at once with ``abort``)."""
        if self._closing:
            return
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if abort:
            transport.abort()
            return
        transport.close()
        if transport.get_write_buffer_size():
            # A peer that stops reading must not hold the connection open for ever.
            self._loop.call_later(LINGER_SECONDS, transport.abort)  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection now (server shutdown)."""
        self._close(abort=True)


def _describe_peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if peer:
        return f"UNIX:{peer}"
    sockname = transport.get_extra_info("sockname")
    return f"UNIX:{sockname}" if sockname else "UNIX:(unnamed)"
