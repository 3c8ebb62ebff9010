"""A client connection that records every byte: what replays and cases talk to a target through.

End-of-file and resets are outcomes here, never exceptions: a conformance run must survive a target
that closes, resets, stalls or floods.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from ..address import Address
from ..netio import open_connection
from ..protocol import NEED_DATA, MessageDecoder, RemoteProtocolError, Response
from ..tls import ClientTLSSetting
from ..wire import Direction

__all__ = ["EOF", "RESET", "TIMEOUT", "Probe", "ProbeError", "WireEntry", "WireLog"]

#: Outcomes of a read that produced no bytes.
EOF = "eof"
RESET = "reset"
TIMEOUT = "timeout"

#: Longest hex kept per log entry in reports (bytes); longer entries keep their head and length.
REPORT_ENTRY_BYTES = 512


class ProbeError(Exception):
    """An expectation about the target was not met; ``got`` holds what arrived instead."""

    def __init__(self, message: str, got: bytes = b"", outcome: str | None = None):
        super().__init__(message)
        self.got = got
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class WireEntry:
    """One event on the wire: bytes sent or received on connection ``conn``, or a note."""

    t_ms: float
    conn: int
    dir: str  # "sent", "received" or "event"
    data: bytes = b""
    note: str = ""

    def as_json(self, limit: int = REPORT_ENTRY_BYTES) -> dict:
        record: dict = {"t_ms": round(self.t_ms, 1), "conn": self.conn, "dir": self.dir}
        if self.dir == "event":
            record["event"] = self.note
        else:
            record["hex"] = self.data[:limit].hex()
            if len(self.data) > limit:
                record["len"] = len(self.data)
                record["truncated"] = True
        return record


@dataclass
class WireLog:
    """Every byte sent and received during one case, in order, with times relative to its start."""

    entries: list[WireEntry] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)

    def _now(self) -> float:
        return (time.monotonic() - self.start) * 1000

    def sent(self, conn: int, data: bytes) -> None:
        self.entries.append(WireEntry(self._now(), conn, "sent", bytes(data)))

    def received(self, conn: int, data: bytes) -> None:
        last = self.entries[-1] if self.entries else None
        if last is not None and last.dir == "received" and last.conn == conn:
            # Coalesce consecutive reads: TCP segmentation is not an event worth logging.
            self.entries[-1] = WireEntry(last.t_ms, conn, "received", last.data + data)
        else:
            self.entries.append(WireEntry(self._now(), conn, "received", bytes(data)))

    def event(self, conn: int, note: str) -> None:
        self.entries.append(WireEntry(self._now(), conn, "event", note=note))

    def as_json(self, limit: int = REPORT_ENTRY_BYTES) -> list[dict]:
        return [entry.as_json(limit) for entry in self.entries]

    def render(self, limit: int = 64) -> str:
        """A few lines for a terminal: direction, connection, hex (shortened)."""
        lines = []
        for e in self.entries:
            if e.dir == "event":
                lines.append(f"  {e.t_ms:8.1f} ms  #{e.conn}  -- {e.note}")
            else:
                arrow = ">>" if e.dir == "sent" else "<<"
                text = e.data[:limit].hex() + ("..." if len(e.data) > limit else "")
                lines.append(f"  {e.t_ms:8.1f} ms  #{e.conn}  {arrow} [{len(e.data)}] {text}")
        return "\n".join(lines)


class Probe:
    """One client connection to a target, with its wire log and a response decoder."""

    def __init__(self, reader, writer, log: WireLog, conn: int):
        self._reader = reader
        self._writer = writer
        self.log = log
        self.conn = conn
        self._pending = bytearray()
        self.closed_by_peer: str | None = None  # EOF or RESET once seen
        self.decoder = MessageDecoder(receives=Direction.RESPONSE)
        #: uids of requests already answered on this connection (to recognise extra replies).
        self.answered_uids: set[int] = set()

    @classmethod
    async def open(
        cls,
        address: Address | str,
        *,
        timeout: float,
        log: WireLog | None = None,
        conn: int = 0,
        tls: ClientTLSSetting = None,
    ) -> Probe:
        """Connect (a ``TLS:`` address under ``tls``); raises
        :class:`distcache.netio.ConnectError` when the target is unreachable or refuses."""
        reader, writer = await open_connection(address, timeout=timeout, limit=1 << 20, tls=tls)
        log = log if log is not None else WireLog()
        log.event(conn, "connected")
        return cls(reader, writer, log, conn)

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), None on a plain connection."""
        ssl_object = self._writer.get_extra_info("ssl_object")
        return None if ssl_object is None else ssl_object.version()

    # -- writing ----------------------------------------------------------------------------

    async def send(self, data: bytes) -> bool:
        """Write ``data`` in one write; False (logged) if the connection is already gone."""
        self.log.sent(self.conn, data)
        if self._writer.transport.is_closing():
            # asyncio would swallow the write and log a warning per write on a lost connection.
            self.log.event(self.conn, "write failed: connection already closed")
            return False
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as error:
            self.log.event(self.conn, f"write failed: {error.__class__.__name__}")
            return False
        return True

    @property
    def can_half_close(self) -> bool:
        """Whether this connection can shut down only its sending side (TLS cannot)."""
        return self._writer.can_write_eof()

    def half_close(self) -> None:
        """Shut down our sending side (the peer reads end-of-file) and keep reading."""
        if self._writer.can_write_eof():
            self._writer.write_eof()
            self.log.event(self.conn, "half-closed (sent EOF)")

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
            self.log.event(self.conn, "closed by us")

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    # -- reading ----------------------------------------------------------------------------

    async def _read_more(self, timeout: float) -> str | None:
        """Read one chunk into the pending buffer; the outcome if nothing arrived."""
        if self.closed_by_peer:
            return self.closed_by_peer
        try:
            chunk = await asyncio.wait_for(self._reader.read(1 << 16), max(timeout, 0))
        except TimeoutError:
            return TIMEOUT
        except (ConnectionError, OSError):
            self.closed_by_peer = RESET
            self.log.event(self.conn, "connection reset by target")
            return RESET
        if not chunk:
            self.closed_by_peer = EOF
            self.log.event(self.conn, "end of stream from target")
            return EOF
        self.log.received(self.conn, chunk)
        self._pending += chunk
        return None

    async def read_exact(self, size: int, timeout: float) -> bytes:
        """Exactly ``size`` bytes; ``timeout`` bounds the wait for each chunk.

        Raises ProbeError (with what did arrive) on end-of-file, reset or timeout.
        """
        while len(self._pending) < size:
            outcome = await self._read_more(timeout)
            if outcome is not None:
                got = bytes(self._pending)
                self._pending.clear()
                raise ProbeError(
                    f"{_describe(outcome, timeout)} after {len(got)} of {size} bytes", got, outcome
                )
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    async def expect_close(self, timeout: float) -> str:
        """Wait for end-of-file or a reset (either satisfies a close); returns which.

        Raises ProbeError if bytes arrive first or the connection stays open.
        """
        if self._pending:
            raise ProbeError("bytes arrived instead of a close", self._take_pending())
        outcome = await self._read_more(timeout)
        if outcome in (EOF, RESET):
            return outcome
        if outcome == TIMEOUT:
            raise ProbeError(f"connection still open after {timeout:g} s", b"", TIMEOUT)
        raise ProbeError("bytes arrived instead of a close", self._take_pending())

    async def expect_silence(self, seconds: float) -> None:
        """Nothing may arrive for ``seconds`` and the connection must stay open."""
        if self._pending:
            raise ProbeError("bytes arrived during an expected silence", self._take_pending())
        outcome = await self._read_more(seconds)
        if outcome == TIMEOUT:
            return
        if outcome in (EOF, RESET):
            raise ProbeError(f"connection closed ({outcome}) during an expected silence", b"")
        raise ProbeError("bytes arrived during an expected silence", self._take_pending())

    async def await_bytes(self, seconds: float) -> None:
        """Return once bytes are waiting or the target has closed, or after ``seconds``."""
        if not self._pending:
            await self._read_more(seconds)

    async def drain_for(self, seconds: float) -> tuple[bytes, str | None]:
        """Everything that arrives within ``seconds`` and how the wait ended (None: still open)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        outcome = None
        while (left := deadline - loop.time()) > 0:
            outcome = await self._read_more(left)
            if outcome in (EOF, RESET):
                break
            outcome = None
        return self._take_pending(), outcome

    def _take_pending(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data

    # -- messages ---------------------------------------------------------------------------

    async def response(self, timeout: float) -> Response:
        """The next whole response message, decoded by the protocol core.

        Raises ProbeError on a close, reset or timeout before it is complete, and lets
        :class:`RemoteProtocolError` through when the target sends something malformed.
        """
        while True:
            if self._pending:
                self.decoder.receive_data(self._take_pending())
            event = self.decoder.next_event()
            if event is not NEED_DATA:
                if isinstance(event, Response):
                    return event
                raise ProbeError("connection closed instead of a response", b"", EOF)
            outcome = await self._read_more(timeout)
            if outcome is not None:
                if outcome in (EOF, RESET) and not self.decoder.in_message:
                    raise ProbeError(f"{_describe(outcome, timeout)} instead of a response", b"")
                if outcome == EOF:
                    self.decoder.receive_data(b"")
                    with contextlib.suppress(RemoteProtocolError):
                        self.decoder.next_event()
                raise ProbeError(f"{_describe(outcome, timeout)} inside a response", b"", outcome)

    async def request(self, data: bytes, timeout: float) -> Response:
        """Send one encoded request and wait for its response."""
        await self.send(data)
        return await self.response(timeout)


def _describe(outcome: str, timeout: float) -> str:
    return {
        EOF: "end of stream",
        RESET: "connection reset",
        TIMEOUT: f"nothing for {timeout:g} s",
    }[outcome]
