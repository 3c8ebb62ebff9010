"""One client connection: bytes in through the sans-IO decoder, replies out in request order.

Ordering: replies leave in request order. With a synchronous engine core each reply is written
before the next request is decoded. An engine that executes calls in submission order (one
Valkey/Redis store) gets up to ``PIPELINE_DEPTH`` requests of one connection at once: a proxy
pipelines the requests of many TLS servers on one connection and must not wait one store round
trip per request. Each reply then waits in its request's place until the replies before it have
been written. Any other engine gets one request of a connection at a time, so that each request
still sees the effect of those before it.

Back-pressure: reading pauses while the transport holds more than ``REPLY_BACKLOG`` unsent reply
bytes or the decoder holds more than ``INPUT_BACKLOG`` received bytes, and resumes once both have
drained; a client that pipelines requests without reading its replies therefore costs a bounded
amount of memory. The connections of one peer address share a byte budget besides
(:class:`~distcache.peers.PeerGroup`): over it they read no new request and answer a pipelined
one only once the replies before it have left.

Stopping: the connection keeps reading and answering until it is idle (nothing in progress,
nothing part-received, nothing unread in the kernel's receive buffer), then closes; so every
request a client had sent when the stop came is answered.

Errors: a protocol error closes only this connection, without a reply, after the replies to every
request that was complete before the offending bytes have been sent (the legacy executed those
requests but lost their answers); so does the client's end of input.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from ..netio import write_chunks
from ..peers import PeerGroup, peer_key, unread_bytes
from ..protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError
from ..wire import HEADER_SIZE, MAX_FRAMES, MAX_PAYLOAD, Direction

if TYPE_CHECKING:
    from .handler import RequestHandler
    from .server import Server

__all__ = [
    "INPUT_BACKLOG",
    "LINGER_SECONDS",
    "PIPELINE_DEPTH",
    "REPLY_BACKLOG",
    "REPLY_BATCH",
    "ServerConnection",
]

log = logging.getLogger("distcache.server")

#: Unsent reply bytes above which the connection stops reading requests.
REPLY_BACKLOG = 64 * 1024
#: Received, undecoded bytes above which the connection stops reading: two of the largest
#: messages, so one whole message can always be buffered behind the one being answered.
INPUT_BACKLOG = 2 * (MAX_PAYLOAD + MAX_FRAMES * HEADER_SIZE)
#: Requests of one connection in flight at once with an engine that keeps their order; their
#: payloads together stay under INPUT_BACKLOG, plus one. Each answered one holds its reply
#: (one of the largest messages at most) until the replies before it have been written.
PIPELINE_DEPTH = 16
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
        self._depth = PIPELINE_DEPTH if handler.in_order else 1  # requests in flight at most
        self._decoder = MessageDecoder(receives=Direction.REQUEST)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.peer = "?"
        self._writing_paused = False  # the transport's reply buffer is over its high mark
        self._reading_paused = False
        # Requests given to an asynchronous engine whose replies are not written yet, in order.
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._in_flight_bytes = 0  # their request payloads
        self._draining = False  # no more requests: close once the ones in flight are answered
        self._stopping = False  # the server stops: close once idle
        self._closing = False
        self._partial = False  # the decoder's last bytes are an unfinished message
        self.last_active = 0.0  # loop time of the last read (the idle policies' clock)
        self.peer_group: PeerGroup | None = None  # set by the registry when bytes are counted
        self.peer_held = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # Kept: asyncio.get_running_loop() costs a getpid() system call on CPython 3.11.
        self._loop = asyncio.get_running_loop()
        self.peer = _describe_peer(transport)
        self.last_active = self._loop.time()
        if not self._server.admit(self, peer_key(transport.get_extra_info("peername"))):
            self._closing = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=REPLY_BACKLOG)  # type: ignore[attr-defined]
        if self.peer_group is not None and self.peer_group.over:
            self._update_reading()  # its peer holds too much already: not a byte more for now

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        # The transport and this object refer to each other, so they wait for the cyclic garbage
        # collector: the buffered bytes are let go now instead.
        self._decoder = _RELEASED
        self._server.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._draining:
            return
        self.last_active = self._loop.time()  # type: ignore[union-attr]
        self._decoder.receive_data(data)
        self._serve()
        if self.peer_group is not None and not self._closing:
            self.peer_group.report(self, self.held_now())

    def eof_received(self) -> bool:
        if not (self._closing or self._draining):
            self._decoder.receive_data(b"")
            self._serve()
        return True  # keep the sending side open: replies to earlier requests still go out

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._serve()
        if self.peer_group is not None and not self._closing:
            self.peer_group.report(self, self.held_now())

    # -- serving ----------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer requests while the decoder has whole ones and the peer is keeping up.

        Replies to the requests of one read leave in one write (a proxy pipelines many requests
        per read; one system call for all their replies), flushed early past ``REPLY_BATCH``
        bytes so that pause_writing can stop the loop before memory piles up.
        """
        next_event = self._decoder.next_event
        answer_now = self._handler.answer_now if self._sync else None
        in_flight = self._in_flight
        replies: list[bytes] = []
        batched = 0
        group = self.peer_group
        self._partial = False
        try:
            while not (self._writing_paused or self._closing or self._draining):
                if len(in_flight) >= self._depth or self._in_flight_bytes > INPUT_BACKLOG:
                    break  # taken up again by _answered
                if group is not None and group.over and (replies or self._unsent()):
                    # The peer holds too much: one reply per turn, once the others have left
                    # (its next turn: peer_review, resume_writing or the next read).
                    break
                event = next_event()
                if event is NEED_DATA:
                    self._write(replies)
                    self._partial = self._decoder.buffered > 0 or self._decoder.in_message
                    if self._stopping:  # close once every request received is answered
                        self._close_when_idle()
                        return
                    # The decoder now holds less than one message (it checks every limit on the
                    # header), so it is under INPUT_BACKLOG: only paused reading, or the peer's
                    # budget, may need a change.
                    if self._reading_paused or (group is not None and group.over):
                        self._update_reading()
                    return
                if type(event) is Closed:
                    self._write(replies)
                    self._close_when_answered()
                    return
                if answer_now is not None:
                    reply = answer_now(event)
                    replies.append(reply)
                    batched += len(reply)
                    if batched > REPLY_BATCH:
                        self._write(replies)
                        replies, batched = [], 0
                    continue
                waiting = _InFlight(self, len(event.payload))
                reply = self._handler.begin(event, waiting.settle)
                if reply is None or in_flight:  # its place is behind the requests in flight
                    waiting.reply = reply
                    in_flight.append(waiting)
                    self._in_flight_bytes += waiting.size
                else:  # answered without the engine (a refused ADD), and nothing before it
                    replies.append(reply)
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

    def _unsent(self) -> int:
        return self._transport.get_write_buffer_size()  # type: ignore[union-attr]

    def _write(self, replies: list[bytes]) -> None:
        if replies:
            self._server.operations += len(replies)
            if len(replies) == 1:
                self._transport.write(replies[0])  # type: ignore[union-attr]
            else:
                write_chunks(self._transport, replies)  # type: ignore[arg-type]

    def _answered(self) -> None:
        """A request in flight got its outcome: write every reply now in order, then go on."""
        if self._closing:
            return
        in_flight = self._in_flight
        replies: list[bytes] = []
        while in_flight and in_flight[0].reply is not None:
            done = in_flight.popleft()
            self._in_flight_bytes -= done.size
            reply = done.reply
            if type(reply) is not bytes:  # the engine failed: this connection ends here
                self._write(replies)
                self._engine_failed(reply)
                return
            replies.append(reply)
        self._write(replies)
        if self._draining:
            if not in_flight:
                self._close()
        else:
            self._serve()
            if self.peer_group is not None and not self._closing:
                self.peer_group.report(self, self.held_now())

    def _engine_failed(self, error: object) -> None:
        log.error(
            "%s: storage engine failed; closing the connection",
            self.peer,
            exc_info=error if isinstance(error, BaseException) else None,
        )
        self._close(abort=True)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing or self._draining:
            return
        wanted = not self._writing_paused and self._decoder.buffered <= INPUT_BACKLOG
        if wanted and self.peer_group is not None and self.peer_group.over:
            wanted = self._partial  # over the peer's budget: only to finish a message
        if wanted == self._reading_paused:
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()
            self._reading_paused = not wanted

    # -- closing ----------------------------------------------------------------------------

    def _close_when_idle(self) -> None:
        """Stopping: close once nothing is part-received or still unread by the kernel (the
        next read carries on otherwise)."""
        if self._partial or unread_bytes(self._transport):
            self._update_reading()
            return
        self._close_when_answered()

    def _close_when_answered(self) -> None:
        """Take no more requests; close once the replies to those in flight are written."""
        if self._in_flight:
            self._draining = True  # what arrives now is dropped, so stop reading it at all
            if not self._reading_paused:
                self._transport.pause_reading()  # type: ignore[union-attr]
                self._reading_paused = True
        else:
            self._close()

    def _reject(self, error: RemoteProtocolError) -> None:
        self._server.protocol_errors[error.reason] += 1
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
        # The dead decoder keeps the error, whose traceback keeps the decoder: without this
        # cycle its buffers are freed with the connection, not at the next garbage collection.
        error.__traceback__ = None
        self._close_when_answered()

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

    # -- the policies of distcache.peers ----------------------------------------------------

    @property
    def busy(self) -> bool:
        """A request is at the engine (a reply waiting for a peer that does not read is not)."""
        return bool(self._in_flight)

    def reclaim(self) -> None:
        """Close an idle connection (idle timeout, or room for a new one at the cap)."""
        transport = self._transport
        self._close(abort=transport is None or bool(transport.get_write_buffer_size()))

    def finish(self) -> None:
        """Server stop: keep reading and answering until idle, then close."""
        if self._closing or self._stopping:
            return
        self._stopping = True
        if not self._draining:
            self._serve()  # writing paused: resume_writing carries on

    def held_now(self) -> int:
        if self._closing:
            return 0
        return self._decoder.buffered + self._in_flight_bytes + self._unsent()

    def peer_review(self) -> None:
        if self._closing or self._draining:
            return
        self._serve()  # answers what it may now, and sets reading accordingly


#: The decoder of a closed connection (holds nothing; never fed).
_RELEASED = MessageDecoder(receives=Direction.REQUEST)


class _InFlight:
    """One request given to an asynchronous engine: its reply, once the engine has answered."""

    __slots__ = ("connection", "reply", "size")

    def __init__(self, connection: ServerConnection, size: int) -> None:
        self.connection = connection
        self.size = size  # of the request's payload, counted against INPUT_BACKLOG
        #: The reply's bytes, or the exception that stopped the engine; None until answered.
        self.reply: object = None

    def settle(self, outcome: object) -> None:
        self.reply = outcome
        self.connection._answered()


def _describe_peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if peer:
        return f"UNIX:{peer}"
    sockname = transport.get_extra_info("sockname")
    return f"UNIX:{sockname}" if sockname else "UNIX:(unnamed)"
