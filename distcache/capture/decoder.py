"""Decoding the distcache connections of a capture: TCP segments in, timed messages out.

Each TCP connection is reassembled per direction (:mod:`.tcpstream`); the directions of the
connections that carry distcache feed one :class:`~distcache.protocol.MessageDecoder` each (an
observer: every message's own header says whether it is a request or a response). Requests and
responses are paired by uid per connection to measure latency. A message's time is the capture
time of the packet that completed it.

Which connections carry distcache: with ``ports``, those with either end on one of the ports;
otherwise those whose first bytes in either direction are a legal frame header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..decoding import message_record
from ..protocol import NEED_DATA, MessageDecoder, RemoteProtocolError, Request, Response
from ..protocol.events import Message
from ..wire.fastcodec import decode_header, first_failure
from ..wire.limits import HEADER_SIZE, MIN_BYTES_EXAMINED
from .reader import ACK, FIN, RST, SYN, Segment, format_endpoint
from .tcpstream import Gap, HalfStream


class CapturedMessage(NamedTuple):
    """A message seen in a capture."""

    time: float  #: capture time of the packet that completed it (seconds since the epoch)
    src: str  #: sender, ``ip:port``
    dst: str  #: receiver, ``ip:port``
    message: Message
    #: For a response: milliseconds since its request completed (None if the request was not
    #: captured). Always None for a request.
    latency_ms: float | None


class CaptureProblem(NamedTuple):
    """Something that ends the decoding of one direction: a protocol error or a capture gap."""

    time: float
    src: str
    dst: str
    record: dict  #: an error record (``error``, ``detail``, ``offset``, ...)


def gap_record(gap: Gap) -> dict:
    """The error record of a gap (``error`` is ``"gap"``, ``gap`` the missing byte count)."""
    return {
        "error": "gap",
        "detail": f"{gap.size} bytes missing from the capture; the rest of this direction "
        "cannot be decoded",
        "offset": gap.offset,
        "gap": gap.size,
    }


def capture_record(item: CapturedMessage | CaptureProblem) -> dict:
    """The JSON record of a captured message or problem: the stream decoder's record plus
    ``time``, ``src``, ``dst`` (and ``latency_ms`` on responses)."""
    if type(item) is CaptureProblem:
        return {**item.record, "time": item.time, "src": item.src, "dst": item.dst}
    record = message_record(item.message)
    record["time"] = item.time
    record["src"] = item.src
    record["dst"] = item.dst
    if type(item.message) is not Request:
        latency = item.latency_ms
        record["latency_ms"] = None if latency is None else round(latency, 3)
    return record


# Builds named tuples without their Python-level __new__: one per message on the hot path.
_new = tuple.__new__


class _Connection:
    __slots__ = ("distcache", "requests")

    def __init__(self, distcache: bool | None) -> None:
        self.distcache = distcache  # None until the first bytes decide
        self.requests: dict[int, float] = {}  # completion time of each request in flight, by uid


class _Half:
    """One direction of a connection: its reassembly, its decoder and its output labels."""

    __slots__ = ("conn", "decoder", "done", "dst", "held", "last_time", "reverse", "src", "stream")

    def __init__(self, conn: _Connection, src: str, dst: str) -> None:
        self.conn = conn
        self.src, self.dst = src, dst
        self.stream = HalfStream()
        self.decoder = MessageDecoder(receives=None)
        self.held: list[bytes] = []  # bytes waiting for the connection to be classified
        self.done = False  # an error, a gap or the end of the stream was handled
        self.last_time = 0.0  # capture time of the last bytes fed to the decoder
        self.reverse: _Half | None = None


class CaptureDecoder:
    """Turns the TCP segments of a capture (in capture order) into messages and problems."""

    def __init__(self, ports: Iterable[int] | None = None) -> None:
        self.ports = frozenset(ports) if ports else None
        self._halves: dict[tuple, _Half] = {}
        self._out: list[CapturedMessage | CaptureProblem] = []
        self._connections: list[_Connection] = []

    def decode(self, segments: Iterable[Segment]) -> Iterator[CapturedMessage | CaptureProblem]:
        """Every message and problem, in the order the capture completes them."""
        out = self._out
        halves = self._halves
        for segment in segments:
            time, src, sport, dst, dport, seq, ack, flags, payload = segment
            half = halves.get((src, sport, dst, dport))
            if half is None or (flags & SYN and not flags & ACK and half.stream.delivered):
                half = self._open(segment)
            if flags & ACK:  # proof of what the peer sent, for sizing a gap at the end
                reverse = half.reverse.stream
                reverse.ack, reverse.ack_time = ack, time
            stream = half.stream
            data = stream.add(seq, flags, payload, time)
            if data is not None and not half.done:
                if half.conn.distcache:
                    yield from self._messages(half, data, time)
                elif half.conn.distcache is None:
                    self._classify(half, data, time)
            elif stream.gap is not None and not half.done:
                self._report_gap(half, stream.gap)
            if flags & (FIN | RST) or stream.fin is not None:
                self._maybe_end(half, time)
            if out:
                yield from out
                out.clear()
        for half in list(halves.values()):
            self._finish(half)
        yield from out
        out.clear()

    @property
    def connections(self) -> int:
        """Number of TCP connections decoded as distcache so far."""
        return sum(1 for conn in self._connections if conn.distcache)

    # -- connections -------------------------------------------------------------------------

    def _open(self, segment: Segment) -> _Half:
        _, src, sport, dst, dport = segment[:5]
        forward_key, reverse_key = (src, sport, dst, dport), (dst, dport, src, sport)
        for key in (forward_key, reverse_key):  # a new connection on a reused 4-tuple
            old = self._halves.pop(key, None)
            if old is not None:
                self._finish(old)
        distcache = None if self.ports is None else bool({sport, dport} & self.ports)
        conn = _Connection(distcache)
        a, b = format_endpoint(src, sport), format_endpoint(dst, dport)
        forward, reverse = _Half(conn, a, b), _Half(conn, b, a)
        forward.reverse, reverse.reverse = reverse, forward
        self._halves[forward_key], self._halves[reverse_key] = forward, reverse
        self._connections.append(conn)
        return forward

    def _classify(self, half: _Half, data: bytes, time: float, final: bool = False) -> None:
        """Hold a connection's first bytes until a whole frame header says whether it is
        distcache (or, at its end, whatever bytes there are)."""
        if data:
            half.held.append(data)
        head = b"".join(half.held)
        if len(head) >= HEADER_SIZE:
            half.conn.distcache = decode_header(head, 0) is not None
        elif final and len(head) >= MIN_BYTES_EXAMINED:
            half.conn.distcache = first_failure(head, 0, len(head)) is None
        else:
            return
        for side in (half, half.reverse):
            held, side.held = b"".join(side.held), []
            if held and half.conn.distcache:
                self._feed(side, held, time)

    # -- decoding ----------------------------------------------------------------------------

    def _messages(
        self, half: _Half, data: bytes, time: float
    ) -> Iterator[CapturedMessage | CaptureProblem]:
        """Feed bytes (``b""``: the end) to a direction's decoder; yield what they complete."""
        decoder = half.decoder
        decoder.receive_data(data)
        half.last_time = time
        next_event, requests = decoder.next_event, half.conn.requests
        src, dst = half.src, half.dst
        try:
            while True:
                event = next_event()
                kind = type(event)
                if kind is Request:
                    requests[event.request_uid] = time
                    yield _new(CapturedMessage, (time, src, dst, event, None))
                elif kind is Response:
                    sent = requests.pop(event.request_uid, None)
                    latency = None if sent is None else (time - sent) * 1000.0
                    yield _new(CapturedMessage, (time, src, dst, event, latency))
                elif event is NEED_DATA:
                    return
                else:  # Closed: the stream ended cleanly
                    half.done = True
                    return
        except RemoteProtocolError as error:
            half.done = True
            yield CaptureProblem(time, src, dst, error.as_dict())

    def _feed(self, half: _Half, data: bytes, time: float) -> None:
        """:meth:`_messages` for the rarer paths, which collect their output in ``_out``."""
        self._out.extend(self._messages(half, data, time))

    def _report_gap(self, half: _Half, gap: Gap) -> None:
        half.done = True
        if half.conn.distcache:
            self._out.append(CaptureProblem(gap.time, half.src, half.dst, gap_record(gap)))

    def _maybe_end(self, half: _Half, time: float) -> None:
        """Tell a decoder its stream ended once every byte up to the FIN has been fed."""
        if half.stream.ended and not half.done and half.conn.distcache:
            self._feed(half, b"", time)

    def _finish(self, half: _Half) -> None:
        """The capture holds nothing more of this direction: report what was left open."""
        if half.conn.distcache is None and half.held:
            self._classify(half, b"", half.stream.fin_time or half.stream.ack_time, final=True)
        if half.done or not half.conn.distcache:
            return
        gap = half.stream.close()
        if gap is not None:
            self._report_gap(half, gap)
            return
        # A capture may stop while a connection is still open; only a message cut short is news.
        if half.decoder.in_message:
            self._feed(half, b"", half.last_time)
        half.done = True
