"""One persistent, pipelined upstream connection shared by many local requesters.

The proxy (``dc_client``) forwards every local client over one such link, and each worker of
``dc_server -workers N`` forwards its clients' requests over one to the process that owns the
memory engine: requests of many connections leave in one write and their replies arrive in one
read.

Each forwarded request gets a fresh uid from a proxy-wide counter (1, 2, ... wrapping at 32 bits
and skipping uids still in flight: :class:`~distcache.protocol.RequestTracker`), and its reply is
matched by that uid. The link is always in one of three states:

``DOWN``
    no connection: :meth:`UpstreamLink.submit` answers ``b""`` at once (the local client gets the
    legacy EMPTY reply). A link that was up and is lost (end of stream, socket error) is
    reconnected at once (the local clients should not pay a whole retry delay for one cut); a
    failed attempt, a server that broke the protocol, or a second loss within ``retry`` schedules the next attempt ``retry`` later, on a timer (not the legacy's
    coarse poll), so a server that keeps failing is not hammered. An attempt fails whatever it
    raises: an error no connect should give (a fault of the host, not of the server) is logged
    at ERROR, but retried all the same, so the link recovers once the cause is gone.
``CONNECTING``
    an attempt is under way: requests wait for its outcome (forwarded, or answered DISCONNECTED if
    it fails), as the legacy did with requests queued to a backend whose connect then failed.
``UP``
    requests are forwarded, at most ``max_in_flight`` at a time; the rest wait, first come first
    served.

When the connection fails (end of stream, socket error, or anything the protocol forbids: garbage,
a bad version, an unknown uid, a mismatched operation) every request in flight or waiting is
answered with the status byte DISCONNECTED and the link goes DOWN. Nothing the server sends can
stop the proxy.

Everything runs in transport callbacks, with no task or future per request: a reply is decoded,
matched and handed to its local connection within the callback that read it. Requests forwarded
in one pass of the event loop leave in one write, as do requests released by one read of replies.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Protocol

from ..address import Address
from ..netio import ConnectError, write_chunks
from ..protocol import (
    NEED_DATA,
    Closed,
    MessageDecoder,
    RemoteProtocolError,
    Request,
    RequestTracker,
    encode_message,
)
from ..tls import ClientTLSSetting
from ..wire import Direction, Status
from .dial import dial

_REQUEST = Direction.REQUEST

log = logging.getLogger("distcache.proxy")

#: The reply payload the proxy gives when it has no upstream connection (PROXY-2).
EMPTY_REPLY = b""
#: The reply payload for a request whose upstream connection failed while in flight (PROXY-3).
DISCONNECTED_REPLY = bytes((Status.DISCONNECTED,))
#: Seconds a connect attempt may take before it counts as failed (a black-holed host would
#: otherwise keep requests waiting for minutes of SYN retries).
CONNECT_TIMEOUT = 5.0


class LinkState(enum.Enum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


class LinkEvent(enum.Enum):
    """What moves the link from one state to another (the value says when it happens)."""

    ATTEMPT = "start-up, or the retry timer fires: a connect attempt begins"
    CONNECTED = "the connect attempt succeeded"
    FAILED = "the connect attempt failed (whatever the error) or timed out"
    LOST = "end of stream, a socket error, or a protocol error from the server"
    CLOSED = "the proxy stops; no further attempt"


_DOWN, _CONNECTING, _UP = LinkState.DOWN, LinkState.CONNECTING, LinkState.UP

#: The link's state machine: (state, event) -> next state. A pair not listed cannot happen; the
#: docs' transition table is generated from this one. Every move into DOWN answers the requests
#: in flight or waiting with DISCONNECTED and, unless CLOSED, arms the retry timer.
TRANSITIONS: dict[tuple[LinkState, LinkEvent], LinkState] = {
    (_DOWN, LinkEvent.ATTEMPT): _CONNECTING,
    (_CONNECTING, LinkEvent.CONNECTED): _UP,
    (_CONNECTING, LinkEvent.FAILED): _DOWN,
    (_UP, LinkEvent.LOST): _DOWN,
    (_DOWN, LinkEvent.CLOSED): _DOWN,
    (_CONNECTING, LinkEvent.CLOSED): _DOWN,
    (_UP, LinkEvent.CLOSED): _DOWN,
}


class Requester(Protocol):
    """What the link needs of a local connection: the request it has in progress, a way to
    answer it, and word of when it was forwarded (the idle timer counts from there)."""

    request: Request | None

    def answer(self, payload: bytes) -> None: ...

    def forwarded(self) -> None: ...


class UpstreamLink:
    """Forwards requests over one connection to ``address``; see the module doc string."""

    def __init__(
        self,
        address: Address,
        *,
        retry_ms: int,
        max_in_flight: int,
        tls: ClientTLSSetting = None,
        logger: logging.Logger = log,
    ) -> None:
        self.address = address
        #: How a ``TLS:`` server is verified (a ClientTLS's reloads apply to the next connect).
        self.tls = tls
        self.log = logger  # the user's logger: its messages say which program lost its server
        self.retry = retry_ms / 1000
        self.max_in_flight = max_in_flight
        self.state = LinkState.DOWN
        #: Connections made so far (tests and logs use it to tell reconnects apart).
        self.connections = 0
        self._tracker = RequestTracker()
        self._pending = self._tracker.pending  # its len() is the number in flight
        self._waiting: deque[Requester] = deque()
        self._connection: _UpstreamConnection | None = None
        self._decoder = MessageDecoder(receives=Direction.RESPONSE)
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._attempt: asyncio.Task | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._outage_logged = 0  # the highest level the outage was logged at
        self._last_quick_retry = float("-inf")  # loop time of the last at-once reconnect

    @property
    def in_flight(self) -> int:
        return len(self._tracker)

    # -- forwarding (the hot path) ---------------------------------------------------------

    def submit(self, requester: Requester) -> None:
        """Forward ``requester.request``; its answer comes through ``requester.answer``, at once
        (EMPTY) when the link is DOWN, else when the reply arrives or the link fails."""
        state = self.state
        if state is _UP and not self._waiting and len(self._pending) < self.max_in_flight:
            self._forward(requester)
        elif state is _DOWN:
            requester.answer(EMPTY_REPLY)
        else:
            self._waiting.append(requester)

    def _forward(self, requester: Requester) -> None:
        request = requester.request
        operation = request.operation
        uid = self._tracker.track(operation, requester)
        self._outbox.append(encode_message(_REQUEST, uid, operation, request.payload))
        if not self._flush_scheduled:
            # Other local connections ready in this pass of the loop join the same write.
            self._flush_scheduled = True
            # (The loop is kept: asyncio.get_running_loop() costs a getpid() system call.)
            self._loop.call_soon(self._scheduled_flush)  # type: ignore[union-attr]
        requester.forwarded()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        outbox = self._outbox  # (_flush, without its call: this runs once per loop pass)
        if outbox:
            self._outbox = []
            self._connection.transport.writelines(outbox)

    def _flush(self) -> None:
        outbox = self._outbox
        if outbox:
            self._outbox = []
            write_chunks(self._connection.transport, outbox)

    def _replies_received(self, connection: _UpstreamConnection, data: bytes) -> None:
        if connection is not self._connection:
            return  # a connection already given up
        decoder, tracker, waiting = self._decoder, self._tracker, self._waiting
        try:
            decoder.receive_data(data)
            while (event := decoder.next_event()) is not NEED_DATA:
                if type(event) is Closed:
                    self._lost("the server closed the connection")
                    return
                requester = tracker.match(event).context
                if waiting:  # the slot just freed goes to the longest waiting request
                    self._forward(waiting.popleft())
                # A requester that left meanwhile drops the late reply (PROXY-4).
                requester.answer(event.payload)
                if not decoder.buffered:
                    break  # the usual end of a read: spare the decoder a fruitless call
        except RemoteProtocolError as error:
            self.log.warning("server broke the protocol, dropping its connection: %s", error)
            self._went_down(LinkEvent.LOST, quick_retry=False)  # a broken server waits ``retry``
            return
        if self._outbox:  # requests the replies released (waiting or pipelined) leave now
            self._flush()

    # -- connection management -------------------------------------------------------------

    def start(self) -> None:
        """Make the first connect attempt (the legacy connected as soon as it was serving)."""
        self._loop = asyncio.get_running_loop()
        self._connect_now()

    async def settled(self) -> None:
        """Wait until no connect attempt is in progress."""
        if self._attempt is not None:
            await asyncio.wait({self._attempt})

    def _move(self, event: LinkEvent) -> None:
        """Take the transition ``event`` causes (a pair missing from TRANSITIONS is a bug)."""
        self.state = TRANSITIONS[(self.state, event)]

    def _connect_now(self) -> None:
        self._retry_timer = None
        if self._closed:
            return
        self._move(LinkEvent.ATTEMPT)
        self._attempt = self._loop.create_task(self._connect())  # type: ignore[union-attr]

    async def _connect(self) -> None:
        try:
            await dial(
                self.address,
                lambda: _UpstreamConnection(self),
                timeout=CONNECT_TIMEOUT,
                tls=self.tls,
            )
        except (ConnectError, OSError) as error:
            self._failed(logging.WARNING, error)
        except Exception as error:  # (close()'s cancellation is no Exception: it passes)
            # A fault rather than a refusal (seen: a LookupError from the idna codec after a
            # change of user), but a failed attempt all the same: ending the task instead would
            # leave the link CONNECTING, and every request waiting, for good.
            self.log.debug("connect attempt failed", exc_info=True)
            self._failed(logging.ERROR, f"{type(error).__name__}: {error}")

    def _failed(self, level: int, reason: object) -> None:
        """Log the outage (once per level: a fault that follows refusals still shows) and
        schedule the next attempt."""
        if self._outage_logged < level:
            self.log.log(
                level, "cannot connect to the server: %s (retrying every %g s)", reason, self.retry
            )
            self._outage_logged = level
        if self.state is LinkState.CONNECTING:
            self._went_down(LinkEvent.FAILED)

    def _connected(self, connection: _UpstreamConnection) -> None:
        if self._closed or self.state is not LinkState.CONNECTING:
            connection.transport.close()
            return
        self.connections += 1
        if self._outage_logged or self.connections > 1:
            self.log.info("connected to the server %s", self.address)  # regained: INFO
        self._outage_logged = 0
        self._move(LinkEvent.CONNECTED)
        self._connection = connection
        self._decoder = MessageDecoder(receives=Direction.RESPONSE)
        waiting = self._waiting
        while waiting and len(self._tracker) < self.max_in_flight:
            self._forward(waiting.popleft())

    def _connection_lost(self, connection: _UpstreamConnection, error: Exception | None) -> None:
        if connection is self._connection:
            self._lost(error.strerror or str(error) if isinstance(error, OSError) else error)

    def _lost(self, reason: object) -> None:
        self.log.warning("lost the server connection: %s", reason or "connection closed")
        self._went_down(LinkEvent.LOST)

    def _went_down(self, event: LinkEvent, *, quick_retry: bool = True) -> None:
        """Answer everything in flight or waiting with DISCONNECTED; schedule the next attempt."""
        self._move(event)
        connection, self._connection = self._connection, None
        self._outbox = []
        if connection is not None:
            connection.transport.close()
        in_flight = self._tracker.drain()
        waiting, self._waiting = self._waiting, deque()
        if not self._closed and self._retry_timer is None:
            loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]
            if (
                quick_retry
                and event is LinkEvent.LOST
                and loop.time() - self._last_quick_retry >= self.retry
            ):
                self._last_quick_retry = loop.time()
                self._connect_now()  # requests from now on wait for this attempt's outcome
            else:
                self._retry_timer = loop.call_later(self.retry, self._connect_now)
        # Answered after the state changed: a client's next request now waits for the attempt
        # under way, or gets EMPTY at once while the retry timer runs.
        for entry in in_flight:
            entry.context.answer(DISCONNECTED_REPLY)
        for requester in waiting:
            requester.answer(DISCONNECTED_REPLY)

    async def close(self) -> None:
        """Stop for good: no more attempts; requests in flight are answered DISCONNECTED."""
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()
        self._went_down(LinkEvent.CLOSED)


class _UpstreamConnection(asyncio.Protocol):
    """The callbacks of one upstream connection, passed on to its link (which ignores them
    once it has given that connection up)."""

    def __init__(self, link: UpstreamLink) -> None:
        self._link = link
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._link._connected(self)

    def data_received(self, data: bytes) -> None:
        self._link._replies_received(self, data)

    def eof_received(self) -> bool:
        self._link._replies_received(self, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._connection_lost(self, exc)
