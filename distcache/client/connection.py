"""The client side of one connection, sans-IO: uids, encoding, decoding, reply matching.

Both clients drive it the same way: :meth:`ClientConnection.send` gives the bytes of a request
(write them in one call), :meth:`ClientConnection.receive_data` takes whatever arrived and yields
each completed request's result. Any fault of the peer raises :class:`ProtocolViolation` and a
broken stream :class:`ConnectionLost`; after either, :meth:`ClientConnection.abandon` hands back
every request that will never be answered, and the connection must not be used again.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

from ..protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError, RequestTracker
from ..wire import MAX_REQUEST_UID, Direction
from .calls import Call
from .errors import ConnectionLost, DistcacheError, ProtocolViolation, UpstreamError


class UidCounter:
    """Request uids of one client: counting up from 1, wrapping within 32 bits.

    Per client, not per process as in the legacy (whose 64-bit counter stopped matching the 32-bit
    wire field after 2**32 operations, B9), and not reset by reconnecting.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 1

    def allocate(self, in_flight: Container[int] = ()) -> int:
        """The next uid that is not ``in_flight``."""
        uid = self._next
        while uid in in_flight:
            uid = (uid + 1) & MAX_REQUEST_UID
        self._next = (uid + 1) & MAX_REQUEST_UID
        return uid


@dataclass(frozen=True, slots=True)
class Completion:
    """A request's outcome: ``result``, or ``error`` (an UpstreamError: the connection is fine).

    ``context`` is whatever the caller attached when sending (e.g. an asyncio future).
    """

    context: Any
    result: Any = None
    error: DistcacheError | None = None


class ClientConnection:
    """The protocol state of one client connection (one per socket)."""

    __slots__ = ("_decoder", "_orphans", "_tracker", "_uids", "owner_pid")

    def __init__(self, uids: UidCounter) -> None:
        self._uids = uids
        self._decoder = MessageDecoder(receives=Direction.RESPONSE)
        self._tracker = RequestTracker()
        self._orphans: list[Any] = []  # contexts whose reply was matched but broke the protocol
        #: The process that opened the connection (PIDCHECK compares it after a fork).
        self.owner_pid = os.getpid()

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._tracker)

    def send(self, call: Call, context: Any = None) -> bytes:
        """Record ``call`` as in flight under a fresh uid and return its encoded request."""
        uid = self._uids.allocate(self._tracker)
        data = call.encode(uid)
        self._tracker.add(uid, call.operation, (call, context))
        return data

    def receive_data(self, data: bytes) -> Iterator[Completion]:
        """Feed bytes from the peer (``b""`` at end of stream); yield each completed request.

        Raises ProtocolViolation if the peer broke the protocol, ConnectionLost if the stream
        ended with requests unanswered or inside a message. A clean end with nothing pending
        yields nothing.
        """
        decoder = self._decoder
        try:
            decoder.receive_data(data)
            while True:
                event = decoder.next_event()
                if event is NEED_DATA:
                    return
                if type(event) is Closed:
                    if self._tracker:
                        raise ConnectionLost(
                            f"the server closed the connection with {len(self._tracker)} "
                            "request(s) unanswered"
                        )
                    return
                call, context = self._tracker.match(event).context
                yield self._complete(call, context, event.payload)
        except RemoteProtocolError as error:
            if error.reason == "truncated":
                raise ConnectionLost(
                    f"the server closed the connection mid-reply: {error}"
                ) from None
            raise ProtocolViolation.from_remote(error) from None

    def _complete(self, call: Call, context: Any, payload: bytes) -> Completion:
        try:
            return Completion(context, result=call.interpret(payload))
        except UpstreamError as error:
            return Completion(context, error=error)
        except ProtocolViolation:
            self._orphans.append(context)
            raise

    def abandon(self) -> list[Any]:
        """The contexts of every request that will never be answered (the connection is dead)."""
        orphans = self._orphans
        self._orphans = []
        return orphans + [entry.context[1] for entry in self._tracker.drain()]
