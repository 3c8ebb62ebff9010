"""TCP reassembly of one direction of a connection, as a capture saw it.

Segments arrive in capture order, which may repeat bytes (retransmissions, overlapping
re-segmentation) or reorder them. Each byte is delivered once, in stream order. Bytes the capture
never saw are a *gap*: it is reported with its offset and size and the direction delivers nothing
after it, because a distcache stream cannot be resynchronised (frames carry no marker to find the
next header by).

A hole is only declared a gap when it can no longer be filled: at the end of the capture, or when
more out-of-order data is waiting behind it than any TCP window holds. Waiting that long keeps a
late (reordered) segment from being mistaken for a lost one.
"""

from __future__ import annotations

from typing import NamedTuple

from .reader import FIN, SYN

_SEQ_MASK = 0xFFFFFFFF
_HALF = 0x80000000
#: Out-of-order bytes held behind a hole before it is declared a gap (well above TCP windows).
MAX_PENDING_BYTES = 64 * 1024 * 1024


class Gap(NamedTuple):
    """Bytes of a stream the capture does not hold."""

    offset: int  #: stream offset of the first missing byte
    size: int  #: number of missing bytes
    time: float  #: capture time of the first packet that shows the bytes are missing


class HalfStream:
    """One direction of one TCP connection: segments in, contiguous stream bytes out."""

    __slots__ = (
        "ack",
        "ack_time",
        "base",
        "delivered",
        "fin",
        "fin_time",
        "gap",
        "pending",
        "pending_bytes",
    )

    def __init__(self) -> None:
        self.base: int | None = None  # sequence number of stream offset 0
        self.delivered = 0  # stream offset of the next byte to deliver
        self.pending: dict[int, tuple[bytes, float]] = {}  # out-of-order data by stream offset
        self.pending_bytes = 0
        self.fin: int | None = None  # stream offset of the FIN
        self.fin_time = 0.0
        self.ack: int | None = None  # the peer's latest acknowledgement number (raw)
        self.ack_time = 0.0
        self.gap: Gap | None = None

    @property
    def ended(self) -> bool:
        """True once every byte up to the sender's FIN was delivered."""
        return self.fin is not None and self.delivered >= self.fin and self.gap is None

    def _offset(self, seq: int) -> int:
        """The stream offset of a sequence number, unwrapped next to the delivery point."""
        delta = ((seq - self.base - self.delivered) + _HALF) & _SEQ_MASK
        return self.delivered + delta - _HALF

    def add(self, seq: int, flags: int, payload: bytes, time: float) -> bytes | None:
        """Take one segment; return the bytes it makes deliverable in order, if any."""
        if self.base is None or (flags & SYN and not self.delivered):
            self.base = (seq + 1) & _SEQ_MASK if flags & SYN else seq
        if self.gap is not None:
            return None
        offset = self._offset((seq + 1) & _SEQ_MASK if flags & SYN else seq)
        if flags & FIN and self.fin is None:
            self.fin, self.fin_time = offset + len(payload), time
        if not payload:
            return None
        delivered = self.delivered
        if offset == delivered and not self.pending:  # the common case: next bytes, in order
            self.delivered = delivered + len(payload)
            return payload
        end = offset + len(payload)
        if end <= delivered:
            return None  # a retransmission of delivered bytes
        if offset > delivered:
            self._hold(offset, payload, time)
            return None
        chunks = [payload[delivered - offset :]]
        self.delivered = end
        self._drain(chunks)
        return b"".join(chunks)

    def _hold(self, offset: int, payload: bytes, time: float) -> None:
        held = self.pending.get(offset)
        if held is not None:
            if len(held[0]) >= len(payload):
                return
            self.pending_bytes -= len(held[0])
        self.pending[offset] = (payload, time)
        self.pending_bytes += len(payload)
        if self.pending_bytes > MAX_PENDING_BYTES:
            self.close()

    def _drain(self, chunks: list[bytes]) -> None:
        """Move held segments that now touch the delivery point into ``chunks``."""
        pending = self.pending
        while pending:
            ready = [offset for offset in pending if offset <= self.delivered]
            if not ready:
                return
            for offset in sorted(ready):
                data, _ = pending.pop(offset)
                self.pending_bytes -= len(data)
                end = offset + len(data)
                if end > self.delivered:
                    chunks.append(data[self.delivered - offset :])
                    self.delivered = end

    def note_ack(self, ack: int, time: float) -> None:
        """Record the peer's acknowledgement of this direction's bytes (proof of what was sent)."""
        self.ack, self.ack_time = ack, time

    def close(self) -> Gap | None:
        """No more segments will come: declare the hole, if any, a gap (and return it)."""
        if self.gap is not None or self.base is None:
            return self.gap
        if self.pending:
            first = min(self.pending)
            self.gap = Gap(self.delivered, first - self.delivered, self.pending[first][1])
        elif self.fin is not None and self.fin > self.delivered:
            self.gap = Gap(self.delivered, self.fin - self.delivered, self.fin_time)
        elif self.ack is not None and self.fin is None:
            # The peer acknowledged bytes the capture lacks. One byte more is the FIN's sequence
            # number (a FIN the capture missed), not data.
            acked = self._offset(self.ack)
            if acked > self.delivered + 1:
                self.gap = Gap(self.delivered, acked - self.delivered, self.ack_time)
        if self.gap is not None:
            self.pending.clear()
            self.pending_bytes = 0
        return self.gap
