"""The proxy's one persistent upstream connection, shared by every local client.

Each forwarded request gets a fresh uid from a proxy-wide counter (1, 2, ... wrapping at 32 bits
and skipping uids still in flight: :class:`~distcache.protocol.RequestTracker`), is written in one
call, and its reply is matched by that uid. The link is always in one of three states:

``DOWN``        no connection: :meth:`UpstreamLink.exchange` answers ``b""`` at once (the local
                client gets the legacy EMPTY reply); a reconnect is scheduled ``retry`` after
                the failure, on a timer (not the legacy's coarse poll).
``CONNECTING``  an attempt is under way: requests wait for its outcome (forwarded, or answered
                DISCONNECTED if it fails), as the legacy did with requests queued to a backend
                whose connect then failed.
``UP``          requests are forwarded, at most ``max_in_flight`` at a time; the rest wait.

When the connection fails (end of stream, socket error, or anything the protocol forbids: garbage,
a bad version, an unknown uid, a mismatched operation) every request in flight is answered with
the status byte DISCONNECTED and the link goes DOWN. Nothing the server sends can stop the proxy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable

from ..address import Address
from ..netio import ConnectError, open_connection
from ..protocol import Closed, MessageDecoder, RemoteProtocolError, RequestTracker, encode_request
from ..wire import Direction, Operation, Status

log = logging.getLogger("distcache.proxy")

#: The reply payload the proxy gives when it has no upstream connection (PROXY-2).
EMPTY_REPLY = b""
#: The reply payload for a request whose upstream connection failed while in flight (PROXY-3).
DISCONNECTED_REPLY = bytes((Status.DISCONNECTED,))
#: Seconds a connect attempt may take before it counts as failed (a black-holed host would
#: otherwise keep requests waiting for minutes of SYN retries).
CONNECT_TIMEOUT = 5.0
_READ_SIZE = 1 << 16


class LinkState(enum.Enum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


class UpstreamLink:
    """Forwards requests over one connection to ``address``; see the module doc string."""

    def __init__(self, address: Address, *, retry_ms: int, max_in_flight: int) -> None:
        self.address = address
        self.retry = retry_ms / 1000
        self.max_in_flight = max_in_flight
        self.state = LinkState.DOWN
        #: Connections made so far (tests and logs use it to tell reconnects apart).
        self.connections = 0
        self._tracker = RequestTracker()
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._attempt: asyncio.Task | None = None
        self._reader_task: asyncio.Task | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._outage_logged = False

    @property
    def in_flight(self) -> int:
        return len(self._tracker)

    # -- connection management ------------------------------------------------------------------

    def start(self) -> None:
        """Make the first connect attempt (the legacy connected as soon as it was serving)."""
        self._connect_now()

    async def settled(self) -> None:
        """Wait until no connect attempt is in progress."""
        if self._attempt is not None:
            await asyncio.wait({self._attempt})

    def _connect_now(self) -> None:
        self._retry_timer = None
        if self._closed:
            return
        self.state = LinkState.CONNECTING
        self._attempt = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            reader, writer = await open_connection(self.address, timeout=CONNECT_TIMEOUT)
        except (ConnectError, OSError) as error:
            if not self._outage_logged:
                log.warning(
                    "cannot connect to the server: %s (retrying every %g s)", error, self.retry
                )
                self._outage_logged = True
            self._went_down()
            return
        if self._closed:
            writer.close()
            return
        self.connections += 1
        if self._outage_logged or self.connections > 1:
            log.warning("connected to the server %s", self.address)
        self._outage_logged = False
        self.state = LinkState.UP
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies(reader))
        self._wake_slot_waiters()

    def _went_down(self) -> None:
        """Answer everything in flight with DISCONNECTED and schedule the next attempt."""
        self.state = LinkState.DOWN
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for entry in self._tracker.drain():
            if not entry.context.done():
                entry.context.set_result(DISCONNECTED_REPLY)
        self._wake_slot_waiters()
        if not self._closed and self._retry_timer is None:
            self._retry_timer = asyncio.get_running_loop().call_later(self.retry, self._connect_now)

    async def close(self) -> None:
        """Stop for good: no more attempts; requests in flight are answered DISCONNECTED."""
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        for task in (self._attempt, self._reader_task):
            if task is not None and not task.done():
                task.cancel()
        self._went_down()

    # -- replies ----------------------------------------------------------------------------

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        decoder = MessageDecoder(receives=Direction.RESPONSE)
        tracker = self._tracker
        try:
            while True:
                decoder.receive_data(await reader.read(_READ_SIZE))
                for event in decoder.events():
                    if type(event) is Closed:
                        raise ConnectionResetError("the server closed the connection")
                    future = tracker.match(event).context
                    if not future.done():
                        future.set_result(event.payload)
                    # else: the local client gave up; its late reply is dropped (PROXY-4).
                    self._free_slot()
        except RemoteProtocolError as error:
            log.warning("server broke the protocol, dropping its connection: %s", error)
        except OSError as error:
            log.warning("lost the server connection: %s", error.strerror or error)
        except asyncio.CancelledError:
            return
        if self._reader_task is asyncio.current_task():
            self._reader_task = None
        self._went_down()

    # -- forwarding -------------------------------------------------------------------------

    async def exchange(
        self, operation: Operation, payload: bytes, on_forward: Callable[[], None] | None = None
    ) -> bytes:
        """Forward one request and return the payload to answer the local client with.

        A request that finds the link DOWN is answered EMPTY at once; one that had to wait (for
        a connect attempt or a free slot) and then loses the link is answered DISCONNECTED.
        """
        waited = False
        if self.state is LinkState.CONNECTING:
            waited = True
            await asyncio.wait({self._attempt})
        while self.state is LinkState.UP and len(self._tracker) >= self.max_in_flight:
            waited = True
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if self.state is not LinkState.UP:
            return DISCONNECTED_REPLY if waited else EMPTY_REPLY
        uid = self._tracker.allocate_uid()
        future = asyncio.get_running_loop().create_future()
        self._tracker.add(uid, operation, future)
        self._writer.write(encode_request(uid, operation, payload))
        if on_forward is not None:
            on_forward()
        return await future

    def _free_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():  # skip waiters whose client went away
                waiter.set_result(None)
                return

    def _wake_slot_waiters(self) -> None:
        while self._slot_waiters:
            self._free_slot()
