"""One local client connection of the proxy, as transport callbacks.

At most one request per connection is in progress: the next one is not even decoded until the
previous reply has been written (PROXY-6), so pipelined requests are answered in order whatever
the reply sizes. Back-pressure: reading pauses while the decoder holds more than
``INPUT_BACKLOG`` unanswered bytes or the client is not reading its replies (the transport's
buffer is over its high-water mark), and resumes once both have drained; a client that sends
faster than it reads costs a bounded amount of memory. The connections of one TCP peer address
share a byte budget besides (:class:`~distcache.peers.PeerGroup`): over it they read no new
request, and take the next one only once the replies before it have left.

Stopping: the connection keeps reading and answering until it is idle (no request in progress,
nothing part-received, nothing unread in the kernel's receive buffer), then closes.

A protocol error from the client closes this connection only (PROXY-10, PROXY-12); replies already
written are flushed first. A client that leaves with a request in flight costs nothing: the reply
arrives later and is dropped (PROXY-4).

Idle timeout (PROXY-8): the connection is closed ``idle`` seconds after it was accepted or last
had a request forwarded upstream, unless a request is in progress. Requests answered locally (no
upstream) do not count as forwarded, as in the legacy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..netio import write_chunks
from ..peers import PeerGroup, peer_key, unread_bytes
from ..protocol import (
    NEED_DATA,
    Closed,
    MessageDecoder,
    RemoteProtocolError,
    Request,
    check_forwardable,
    encode_message,
)
from ..server.connection import INPUT_BACKLOG
from ..wire import Direction

if TYPE_CHECKING:
    from .proxy import Proxy

log = logging.getLogger("distcache.proxy")

_RESPONSE = Direction.RESPONSE


class LocalConnection(asyncio.Protocol):
    """The protocol object of one accepted local connection (created by :class:`Proxy`)."""

    def __init__(self, proxy: Proxy, *, keyed: bool = True) -> None:
        self._proxy = proxy
        self._keyed = keyed  # the peer has an address that per-peer limits count
        self._link = proxy.link
        self._idle = proxy.settings.idle_ms / 1000
        self._decoder = MessageDecoder(receives=Direction.REQUEST)
        self._transport: asyncio.Transport | None = None
        self.number = 0
        #: The request in progress (forwarded or waiting upstream), else None.
        self.request: Request | None = None
        self._serving = False  # inside _serve: answers given meanwhile are batched
        self._batched: list[bytes] = []
        self._writing_paused = False
        self._reading_paused = False
        self._eof = False
        self._stopping = False  # the proxy stops: close once idle
        self._closing = False
        self._partial = False  # the decoder's last bytes are an unfinished message
        self.last_active = 0.0  # loop time of the last read (the policies of distcache.peers)
        self.peer_group: PeerGroup | None = None  # set by the registry when bytes are counted
        self.peer_held = 0
        self._idle_deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.last_active = self._proxy.loop.time()
        key = peer_key(transport.get_extra_info("peername")) if self._keyed else None
        number = self._proxy.admit(self, key)
        if number is None:
            self._closing = True
            transport.close()  # accepted then closed at once, as the legacy did
            return
        self.number = number
        if self.peer_group is not None and self.peer_group.over:
            self._update_reading()  # its peer holds too much already: not a byte more for now
        if self._idle > 0:
            self._idle_deadline = self._proxy.loop.time() + self._idle
            self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if not self._closing:
            self.last_active = self._proxy.loop.time()
            self._decoder.receive_data(data)
            self._serve()
            if self.peer_group is not None and not self._closing:
                self.peer_group.report(self, self.held_now())

    def eof_received(self) -> bool:
        if not self._closing:
            self._eof = True
            self._decoder.receive_data(b"")
            self._serve()
        return True  # keep the sending side open: the reply in progress still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        # Let go of the buffered bytes now: this object and its transport form a cycle that
        # only the cyclic garbage collector would free.
        self._decoder = _RELEASED
        self._batched = []
        if self._idle_timer is not None:
            self._cancel_idle_timer()
        self._proxy.connections.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._serve()
        if self.peer_group is not None and not self._closing:
            self.peer_group.report(self, self.held_now())

    # -- requests and replies ---------------------------------------------------------------

    def _serve(self) -> None:
        """Take the next request unless one is in progress or the client is not reading."""
        decoder, batched = self._decoder, self._batched
        group = self.peer_group
        finished = False
        self._partial = False
        self._serving = True
        try:
            while self.request is None and not (self._writing_paused or self._closing):
                if (
                    group is not None
                    and group.over
                    and (batched or self._transport.get_write_buffer_size())
                ):
                    break  # the peer holds too much: the next one once its replies have left
                event = decoder.next_event()
                if event is NEED_DATA:
                    self._partial = decoder.buffered > 0 or decoder.in_message
                    # Stopping: close once every request received is answered.
                    finished = self._stopping and not (
                        self._partial or unread_bytes(self._transport)
                    )
                    break
                if type(event) is Closed:
                    finished = True
                    break
                # What the server would answer by closing the shared link closes this one only.
                check_forwardable(event)
                self.request = event
                self._link.submit(self)
        except RemoteProtocolError as error:
            self._proxy.protocol_errors[error.reason] += 1
            log.warning("local client %d broke the protocol, closing it: %s", self.number, error)
            error.__traceback__ = None  # (it and the dead decoder would form a cycle)
            finished = True
        finally:
            self._serving = False
        if batched:  # answered locally (link down): pipelined replies leave in one write
            write_chunks(self._transport, batched)
            batched.clear()
        if finished:
            self.close()
        elif (
            self._reading_paused
            or self._writing_paused
            or decoder.buffered > INPUT_BACKLOG
            or (group is not None and group.over)
        ):
            self._update_reading()

    def answer(self, payload: bytes) -> None:
        """Reply to the request in progress (called by the link), then take the next one."""
        request, self.request = self.request, None
        if self._closing or self._transport.is_closing():
            return  # the client left or was closed: nobody to answer
        # (Request.respond, without its call: one of the few calls made per connection)
        reply = encode_message(_RESPONSE, request.request_uid, request.operation, payload)
        if self._serving:
            self._batched.append(reply)
            return
        self._transport.write(reply)
        if self._idle_timer is None and self._idle > 0:
            self._arm_idle_timer()  # it fell due while the request was in progress
        if self._decoder.buffered or self._eof or self._reading_paused or self._stopping:
            self._serve()  # pipelined bytes (or the end of the stream) wait behind the reply
        if self.peer_group is not None and not self._closing:
            self.peer_group.report(self, self.held_now())

    def forwarded(self) -> None:
        if self._idle > 0:
            self._idle_deadline = self._proxy.loop.time() + self._idle

    def _update_reading(self) -> None:
        if self._closing:
            return
        wanted = not self._writing_paused and self._decoder.buffered <= INPUT_BACKLOG
        if wanted and self.peer_group is not None and self.peer_group.over:
            wanted = self._partial  # over the peer's budget: only to finish a message
        if wanted == self._reading_paused:
            if wanted:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()
            self._reading_paused = not wanted

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close once the replies written so far are sent."""
        if self._closing:
            return
        self._closing = True
        if self._idle_timer is not None:
            self._cancel_idle_timer()
        self._transport.close()

    # -- the policies of distcache.peers ----------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.request is not None

    def reclaim(self) -> None:
        if self._transport.get_write_buffer_size():
            self._abort()  # a client that does not read must not keep its place
        else:
            self.close()

    def finish(self) -> None:
        """Proxy stop: keep reading and answering until idle, then close."""
        if self._closing or self._stopping:
            return
        self._stopping = True
        if self.request is None:
            self._serve()  # else answer() carries on

    def held_now(self) -> int:
        if self._closing:
            return 0
        return self._decoder.buffered + self._transport.get_write_buffer_size()

    def peer_review(self) -> None:
        if not self._closing and self.request is None:
            self._serve()  # takes the next request if it may now, and sets reading accordingly

    def abort(self) -> None:
        self._abort()

    def _abort(self) -> None:
        if not self._closing:
            self._closing = True
            self._cancel_idle_timer()
            self._transport.abort()

    def _arm_idle_timer(self) -> None:
        self._idle_timer = self._proxy.loop.call_at(self._idle_deadline, self._idle_check)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_check(self) -> None:
        # Forwarding only moves the deadline; the timer catches up here rather than being
        # re-armed for every request.
        self._idle_timer = None
        if self._closing or self.request is not None:
            return  # answer() re-arms it
        if self._proxy.loop.time() < self._idle_deadline:
            self._arm_idle_timer()
        else:
            self.close()


#: The decoder of a closed connection (holds nothing; never fed).
_RELEASED = MessageDecoder(receives=Direction.REQUEST)
