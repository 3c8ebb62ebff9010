"""Watching one relayed connection: decode each direction, pair replies with requests, and turn
what is seen into records (the ``distcache decode`` records plus when and where).

Decoding never touches the relayed bytes: a protocol error is reported once, with its reason and
offset, and decoding of that direction stops while the relay goes on.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

from ..decoding import message_record
from ..protocol import Closed, MessageDecoder, RemoteProtocolError
from ..wire import Direction

#: Receives each record (a dict) as soon as it is complete.
Emit = Callable[[dict], None]


class ConnectionObserver:
    """Decodes both directions of connection number ``number``."""

    def __init__(self, number: int, emit: Emit, clock: Callable[[], float] = time.time) -> None:
        self.number = number
        self._emit = emit
        self._clock = clock
        self._decoders = {
            Direction.REQUEST: MessageDecoder(receives=Direction.REQUEST),
            Direction.RESPONSE: MessageDecoder(receives=Direction.RESPONSE),
        }
        # Requests awaiting their reply, by uid: the time each was seen (uids may repeat).
        self._asked: dict[int, deque[float]] = defaultdict(deque)

    def event(self, name: str, **details) -> None:
        """A connection-level record (``open``, ``close``, ``upstream_failed``)."""
        self._emit({"time": self._clock(), "connection": self.number, "event": name, **details})

    def feed(self, direction: Direction, data: bytes) -> None:
        """Bytes relayed in ``direction`` (REQUEST: client to server); ``b""`` is end of stream."""
        decoder = self._decoders.get(direction)
        if decoder is None:
            return  # this direction broke the protocol earlier; the bytes are only relayed
        now = self._clock()
        try:
            decoder.receive_data(data)
            for message in decoder.events():
                if type(message) is Closed:
                    break
                self._emit(self._message_record(message, now))
        except RemoteProtocolError as error:
            del self._decoders[direction]
            record = {"time": now, "connection": self.number, **error.as_dict()}
            record["direction"] = direction.name.lower()
            self._emit(record)

    def _message_record(self, message, now: float) -> dict:
        record = {"time": now, "connection": self.number, **message_record(message)}
        uid = message.request_uid
        if message.direction is Direction.REQUEST:
            self._asked[uid].append(now)
        elif self._asked.get(uid):
            record["latency_ms"] = round((now - self._asked[uid].popleft()) * 1000, 3)
            if not self._asked[uid]:
                del self._asked[uid]
        return record
