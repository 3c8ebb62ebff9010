"""An independent distcache server, written from the specification alone.

It imports nothing of the distcache package: every constant, layout and rule below was taken from
the spec's text, so it is a second implementation the conformance suite can be judged against.
Where the spec allows more than one behaviour it deliberately makes the choice the reference
server does not make:

* a message that would grow past 32768 bytes is refused when the crossing frame's data has
  arrived, not on that frame's header (FRAG-3 allows both);
* the consistency of a continuation frame (uid, op_class, operation) is judged on its complete
  header, not byte by byte (FRAG-2 sets no moment);
* replies are written one request at a time, as soon as each is executed;
* on SIGTERM it keeps reading each connection until nothing is left to answer (ROBUST-7),
  checking for bytes the kernel still holds as it goes;
* with ``--drop-replies-on-error`` it also declines a SHOULD: the replies to requests that came
  in the same read as a protocol error are not sent (CONN-7 recommends sending them).

Run it like any target::

    python tests/independent_server.py --host 127.0.0.1 --port 9001 --sessions 64
    python tests/independent_server.py --unix /run/dc.sock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import os
import signal
import struct
import sys
import termios
import time

# -- the wire, from the framing chapter --------------------------------------------------------

HEADER = struct.Struct(">IBIBBBH")  # proto_level, is_response, uid, op_class, operation, ...
HEADER_SIZE = HEADER.size  # 14
VERSION = 0x0011
PROTO_LEVEL = VERSION << 16
MAX_FRAME_DATA = 2048
MAX_MESSAGE = 32768
ADD, GET, REMOVE, HAVE = 0, 1, 2, 3
OK, NOTOK = 0x00, 0x01
ADD_CORRUPT, ADD_MATCHING, ADD_TIMEOUT, ADD_ID_RANGE = 0x64, 0x65, 0x66, 0x67
MAX_TIMEOUT_MS = 604_800_000
MAX_ID = 64
MIN_SESSIONS, MAX_SESSIONS = 64, 60000


class ProtocolError(Exception):
    """The peer broke the framing rules: the connection is closed without a reply."""


def header_problem(head: bytes) -> str | None:
    """The first failing header check on the bytes that have arrived (validation-order table)."""
    if len(head) < 5:
        return None  # never judge fewer than five bytes
    if head[0:2] != b"\x00\x11":
        return "protocol version"
    if head[4] not in (0, 1):
        return "is_response"
    if len(head) >= 10 and head[9] != 0:
        return "op_class"
    if len(head) >= 11 and head[10] > HAVE:
        return "operation"
    if len(head) >= 12 and head[11] not in (0, 1):
        return "complete"
    if len(head) >= 14:
        data_len = int.from_bytes(head[12:14], "big")
        if data_len > MAX_FRAME_DATA:
            return "data_len"
        if head[11] == 0 and data_len != MAX_FRAME_DATA:
            return "short non-final frame"
    return None


def frames(uid: int, operation: int, payload: bytes) -> bytes:
    """A response cut by the splitting rule: full non-final frames, the rest in the last."""
    out = []
    rest = payload
    while True:
        chunk, rest = rest[:MAX_FRAME_DATA], rest[MAX_FRAME_DATA:]
        last = not rest
        out.append(HEADER.pack(PROTO_LEVEL, 1, uid, 0, operation, int(last), len(chunk)) + chunk)
        if last:
            return b"".join(out)


class Reassembler:
    """Bytes in, complete requests out: ``feed`` returns [(uid, operation, payload)]."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.first: tuple[int, int, int] | None = None  # (uid, op_class, operation) of a message
        self.payload = bytearray()

    def feed(self, data: bytes) -> tuple[list[tuple[int, int, bytes]], str | None]:
        """The requests completed by ``data``, and the protocol error that follows them if any
        (the requests before an error are still answered, as CONN-7 recommends)."""
        done: list[tuple[int, int, bytes]] = []
        try:
            self._feed(data, done)
        except ProtocolError as error:
            return done, str(error)
        return done, None

    def _feed(self, data: bytes, done: list) -> None:
        self.buffer += data
        while True:
            problem = header_problem(bytes(self.buffer[:HEADER_SIZE]))
            if problem:
                raise ProtocolError(problem)
            if len(self.buffer) < HEADER_SIZE:
                return
            _, is_response, uid, op_class, operation, complete, data_len = HEADER.unpack_from(
                self.buffer
            )
            if is_response:
                raise ProtocolError("a response sent to a server")
            if self.first is not None and self.first != (uid, op_class, operation):
                raise ProtocolError("continuation frame of another message")
            if len(self.buffer) < HEADER_SIZE + data_len:
                return  # the total is judged once the frame's data is here
            if len(self.payload) + data_len > MAX_MESSAGE:
                raise ProtocolError("message longer than 32768 bytes")
            self.payload += self.buffer[HEADER_SIZE : HEADER_SIZE + data_len]
            del self.buffer[: HEADER_SIZE + data_len]
            if complete:
                done.append((uid, operation, bytes(self.payload)))
                self.first, self.payload = None, bytearray()
            else:
                self.first = (uid, op_class, operation)


class Cache:
    """At most ``capacity`` sessions; expiry in milliseconds; eviction by soonest expiry."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[bytes, tuple[float, int, bytes]] = {}  # id -> (expiry, order, data)
        self.order = itertools.count()

    @staticmethod
    def now_ms() -> float:
        return time.monotonic() * 1000

    def live(self, session_id: bytes) -> bytes | None:
        entry = self.entries.get(session_id)
        if entry is None:
            return None
        if self.now_ms() > entry[0]:
            del self.entries[session_id]
            return None
        return entry[2]

    def add(self, payload: bytes) -> int:
        if len(payload) < 8:
            raise ProtocolError("ADD payload shorter than 8 bytes")
        received = self.now_ms()
        timeout = int.from_bytes(payload[0:4], "big")
        id_len = int.from_bytes(payload[4:8], "big")
        if timeout > MAX_TIMEOUT_MS:
            return ADD_TIMEOUT
        if id_len >= len(payload) - 8:
            return ADD_CORRUPT
        if id_len == 0 or id_len > MAX_ID:
            return ADD_ID_RANGE
        session_id, data = payload[8 : 8 + id_len], payload[8 + id_len :]
        if self.live(session_id) is not None:
            return ADD_MATCHING
        if len(self.entries) >= self.capacity:
            batch = max(1, self.capacity // 30)
            soonest = sorted(self.entries.items(), key=lambda item: item[1][:2])[:batch]
            for victim, _ in soonest:
                del self.entries[victim]
        self.entries[session_id] = (received + timeout, next(self.order), data)
        return OK

    def execute(self, operation: int, payload: bytes) -> bytes:
        if operation == ADD:
            return bytes((self.add(payload),))
        if operation == GET:
            data = self.live(payload)
            return bytes((NOTOK,)) if data is None else data
        if operation == REMOVE:
            found = self.live(payload) is not None
            if found:
                del self.entries[payload]
            return bytes((OK if found else NOTOK,))
        return bytes((OK if self.live(payload) is not None else NOTOK,))


def unread_bytes(writer) -> int:
    """Bytes the kernel has received on the connection that nobody has read yet."""
    sock = writer.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, AttributeError):
        return 0


async def next_read(reader, writer, incoming: Reassembler, stop: asyncio.Event) -> bytes:
    """The next bytes; b"" at the end of the stream, or once stopping finds nothing left."""
    while True:
        if stop.is_set():
            try:
                return await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                if not incoming.buffer and incoming.first is None and not unread_bytes(writer):
                    return b""  # stopping and idle: every request received is answered
                continue
        read = asyncio.ensure_future(reader.read(65536))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if read.done():
            return read.result()
        read.cancel()  # (the stream keeps what it had read; the loop reads it again)
        with contextlib.suppress(asyncio.CancelledError):
            await read


async def serve_connection(
    cache: Cache, reader, writer, drop_replies_on_error: bool, stop: asyncio.Event
) -> None:
    incoming = Reassembler()
    try:
        while True:
            data = await next_read(reader, writer, incoming, stop)
            if not data:
                break  # half-close: every complete request has been answered already
            requests, error = incoming.feed(data)
            for uid, operation, payload in requests:
                try:
                    reply = cache.execute(operation, payload)
                except ProtocolError as bad_payload:
                    error = str(bad_payload)
                    break
                if not (error and drop_replies_on_error):
                    writer.write(frames(uid, operation, reply))
            await writer.drain()
            if error:
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--host", default="127.0.0.1")
    options.add_argument("--port", type=int)
    options.add_argument("--unix", metavar="PATH")
    options.add_argument("--sessions", type=int, default=512)
    options.add_argument("--drop-replies-on-error", action="store_true")
    args = options.parse_args(argv)
    if not MIN_SESSIONS <= args.sessions <= MAX_SESSIONS:
        print(f"--sessions must be {MIN_SESSIONS}..{MAX_SESSIONS}", file=sys.stderr)
        return 2
    cache = Cache(args.sessions)
    stop = asyncio.Event()
    serving: set[asyncio.Task] = set()

    async def handle(reader, writer):
        task = asyncio.current_task()
        serving.add(task)
        try:
            await serve_connection(cache, reader, writer, args.drop_replies_on_error, stop)
        finally:
            serving.discard(task)

    if args.unix:
        server = await asyncio.start_unix_server(handle, path=args.unix)
    elif args.port is not None:
        server = await asyncio.start_server(handle, args.host, args.port)
    else:
        print("give --port or --unix", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        server.close()
        if serving:  # a grace period of 10 s for what was received
            await asyncio.wait(set(serving), timeout=10.0)
    if args.unix:
        os.unlink(args.unix)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
