"""Deliberately faulty distcache servers, to prove the conformance suite has teeth.

A small asyncio server built on the sans-IO core and the memory cache, with one switch per fault.
With no fault it is a correct server. Each switch of the mutation table (conformance/coverage.toml)
breaks the one requirement the table names, and the table lists the cases that must fail on it
(tests/test_conformance_mutation.py checks that they do). Run it as a program (like dc_server) so
the runner can start, restart and watch it through ``--server-cmd``::

    python tests/faulty_servers.py -listen IP:127.0.0.1:9001 -sessions 64 -fault wrong_uid
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import struct
import sys
import termios

from distcache.address import parse_address
from distcache.cache import AddResult, MemoryCache
from distcache.conformance.coverage import load_coverage
from distcache.protocol import (
    NEED_DATA,
    Closed,
    RemoteProtocolError,
    Request,
    check_add,
    encode_message,
)
from distcache.protocol import MessageDecoder as _Decoder
from distcache.wire import PROTOCOL_VERSION, Direction, Operation, Status, fastcodec

#: Faults that test the runner itself (crashes, silence, floods), not one requirement.
RUNNER_FAULTS = {
    "crash_mid_run": "the process exits at its 15th connection",
    "never_answer": "requests are read and never answered",
}

#: Every fault, with what it does: the runner's own, and those of the mutation table
#: (conformance/coverage.toml), each breaking the one requirement the table names.
FAULTS = {
    **RUNNER_FAULTS,
    **{f.name: f.does for f in load_coverage().faults if f.target == "server"},
}


#: Eviction faults: which entries go first (a sort key over (id, entry)) and how many.
_EVICTION = {
    "evict_wrong": (lambda item: -item[1].seq, None),
    "evict_oldest": (lambda item: item[1].seq, None),
    "ties_newest_first": (lambda item: (item[1].expiry_ms, -item[1].seq), None),
    "batch_of_two": (lambda item: (item[1].expiry_ms, item[1].seq), 2),
}


class FaultyCache(MemoryCache):
    """The memory cache with the cache faults switched in."""

    def __init__(self, capacity: int, faults: set[str]):
        super().__init__(capacity)
        self.faults = faults
        self.timeouts: dict[bytes, int] = {}  # for the faults that restart a timeout
        self.ever_stored: set[bytes] = set()
        self.removed_slots = 0  # remove_keeps_slot: slots REMOVE did not give back

    def add(self, session_id, session, timeout_ms):
        if "ignore_expiry" in self.faults:
            timeout_ms = 604_800_000
        self._purge_expired(self.clock.now_ms())
        new = session_id not in self._entries
        if "add_over_expired_refused" in self.faults and new and session_id in self.ever_stored:
            return AddResult.DUPLICATE
        full = len(self._entries) + self.removed_slots >= self.capacity
        duplicate_evicts = "duplicate_evicts" in self.faults and not new
        if full and (duplicate_evicts or (self.removed_slots and new)):
            victims = sorted(
                self._entries.items(), key=lambda item: (item[1].expiry_ms, item[1].seq)
            )
            for victim, _ in victims[: self.eviction_batch]:
                del self._entries[victim]
            self.removed_slots = 0
            self._rebuild_heap()
        for fault in self.faults & set(_EVICTION):
            key, count = _EVICTION[fault]
            if new and len(self._entries) >= self.capacity:
                victims = sorted(self._entries.items(), key=key)[: count or self.eviction_batch]
                for victim, _ in victims:
                    del self._entries[victim]
                self._rebuild_heap()
        self.timeouts[session_id] = timeout_ms
        self.ever_stored.add(session_id)
        return super().add(session_id, session, timeout_ms)

    def remove(self, session_id):
        self.ever_stored.discard(session_id)
        removed = super().remove(session_id)
        if removed and "remove_keeps_slot" in self.faults:
            self.removed_slots += 1
        return removed

    def get(self, session_id):
        session = super().get(session_id)
        if session is not None and "get_refreshes_expiry" in self.faults:
            self._restart(session_id)
        return session

    def have(self, session_id):
        here = super().have(session_id)
        if here and "have_refreshes_expiry" in self.faults:
            self._restart(session_id)
        return here

    def _restart(self, session_id):
        self._entries[session_id].expiry_ms = self.clock.now_ms() + self.timeouts[session_id]
        self._rebuild_heap()


def _same_uid_throughout(data: bytes) -> bytes:
    """continuation_uid_ignored: each continuation frame in ``data`` takes its message's uid."""
    out, pos, uid = bytearray(data), 0, None
    while pos + fastcodec.HEADER_SIZE <= len(out):
        if uid is not None:
            out[pos + 5 : pos + 9] = uid
        complete = out[pos + 11]
        uid = bytes(out[pos + 5 : pos + 9]) if complete == 0 else None
        pos += fastcodec.HEADER_SIZE + int.from_bytes(out[pos + 12 : pos + 14], "big")
    return bytes(out)


def _frames_of(message: bytes) -> list[bytes]:
    """The frames of an encoded message, each with its header."""
    frames, pos = [], 0
    while pos < len(message):
        end = pos + fastcodec.HEADER_SIZE + int.from_bytes(message[pos + 12 : pos + 14], "big")
        frames.append(message[pos:end])
        pos = end
    return frames


class Connection(asyncio.Protocol):
    def __init__(self, server: FaultyServer):
        self.server = server
        self.faults = server.faults
        self.decoder = _Decoder(receives=Direction.REQUEST)
        self.transport = None
        self.idle_timer = None
        self.writing_paused = False
        self.held = b""  # wait_for_whole_header: a header's first bytes, not yet examined
        self.last_uid = None  # repeated_uid_ignored
        self.pending: list[list[bytes]] = []  # interleave_frames: replies not yet written
        self.queued = b""  # partial_frame_stalls_others: bytes held while another stalls
        self.hoard: bytearray | None = None  # oversize_held: an oversize message, kept

    def connection_made(self, transport):
        self.transport = transport
        if "refuse_at_cap" in self.faults and len(self.server.open) >= REFUSING_CAP:
            transport.abort()  # the lock-out ROBUST-5 forbids: full, so everyone is refused
            return
        self.server.connections += 1
        self.server.open.add(self)
        if "crash_mid_run" in self.faults and self.server.connections >= 15:
            os._exit(3)
        self._arm_idle()

    def _arm_idle(self):
        idle = 0.15 if "idle_close" in self.faults else None
        if "idle_close_seconds" in self.faults:
            idle = 1.5
        if idle is not None:
            if self.idle_timer:
                self.idle_timer.cancel()
            self.idle_timer = asyncio.get_running_loop().call_later(idle, self.transport.close)

    # A correct server stops reading while its replies back up (ROBUST-4).
    def pause_writing(self):
        if "unbounded_replies" not in self.faults:
            self.writing_paused = True
            self.transport.pause_reading()

    def resume_writing(self):
        if self.writing_paused:
            self.writing_paused = False
            self.transport.resume_reading()
            self._serve()

    def data_received(self, data):
        self._arm_idle()
        if self.hoard is not None:
            self.hoard += data  # oversize_held: the message grows past the limits in memory
            return
        if "crash_on_bad_version" in self.faults:
            buffered = bytes(self.decoder._buf[self.decoder._pos :]) + data
            if len(buffered) >= 5 and int.from_bytes(buffered[:2], "big") != PROTOCOL_VERSION:
                os._exit(134)
        if "direction_first" in self.faults and not self.decoder.in_message:
            buffered = bytes(self.decoder._buf[self.decoder._pos :]) + data
            if len(buffered) >= 5 and buffered[4] == Direction.RESPONSE:
                self.transport.close()
                return
        split = "split_header_close" in self.faults and 0 < len(data) < fastcodec.HEADER_SIZE
        if split and not self.decoder.in_message:
            self.transport.close()
            return
        at_boundary = not self.decoder.in_message and not self.decoder.buffered
        if "wait_for_whole_header" in self.faults and (self.held or at_boundary):
            self.held += data
            if len(self.held) < fastcodec.HEADER_SIZE:
                return
            data, self.held = self.held, b""
        if "continuation_uid_ignored" in self.faults and at_boundary:
            data = _same_uid_throughout(data)
        stalled_by = self.server.stalled_by
        if stalled_by is not None and stalled_by is not self:
            self.queued += data  # partial_frame_stalls_others: served once the stall ends
            return
        if "op_class_ignored" in self.faults and at_boundary and len(data) >= 10:
            data = data[:9] + b"\x00" + data[10:]
        if "judge_early" in self.faults and at_boundary and data[:2] != b"\x00\x11"[: len(data)]:
            self.transport.close()  # judged on fewer than 5 bytes
            return
        patched = at_boundary and len(data) >= 4 and data[2:4] != b"\x00\x00"
        if "patch_level_refused" in self.faults and patched:
            self.transport.close()
            return
        self.decoder.receive_data(data)
        self._serve()
        if "partial_frame_stalls_others" in self.faults:
            self._stall(self.decoder.buffered > 0)
        if "reply_partial" in self.faults:
            pending = len(self.decoder._buf) - self.decoder._pos
            if pending >= fastcodec.HEADER_SIZE:
                header = fastcodec.decode_header(self.decoder._buf, self.decoder._pos)
                if header and pending == fastcodec.HEADER_SIZE + header[-1] - 1:
                    self._write(
                        encode_message(Direction.RESPONSE, header[2], Operation(header[4]), b"\x01")
                    )

    def eof_received(self):
        if "half_close_drop" in self.faults:
            self.transport.abort()
            return False
        self.decoder.receive_data(b"")
        self._serve()
        return True

    def _protocol_error(self, error: RemoteProtocolError):
        if "oversize_held" in self.faults and error.reason == "message_too_large":
            self.hoard = bytearray()  # every byte from now on is kept, awaiting a final frame
            return
        if (
            "continue_after_error" in self.faults
            and not self.transport.is_closing()
            and error.reason != "bad_version"
        ):
            # Skip the offending frame and go on with the bytes behind it.
            start = self.decoder._pos
            rest = bytes(self.decoder._buf[start:])
            if len(rest) >= fastcodec.HEADER_SIZE:
                skip = fastcodec.HEADER_SIZE + int.from_bytes(rest[12:14], "big")
                self.decoder = _Decoder(receives=Direction.REQUEST)
                self.decoder.receive_data(rest[skip:])
                self._serve()
                self.transport.close()  # the close is right; what ran before it is not
                return
        everyone = "error_closes_everyone" in self.faults or (
            "foreign_version_closes_everyone" in self.faults and error.reason == "bad_version"
        )
        for connection in list(self.server.open) if everyone else [self]:
            connection.transport.close()

    def connection_lost(self, exc):
        self.server.open.discard(self)
        if self.server.stalled_by is self:
            self._stall(False)

    def _stall(self, partial: bool):
        """partial_frame_stalls_others: while this connection holds part of a frame, no other
        connection is served."""
        server = self.server
        if partial:
            server.stalled_by = self
        elif server.stalled_by is self:
            server.stalled_by = None
            for other in list(server.open):
                queued, other.queued = other.queued, b""
                if queued and not other.transport.is_closing():
                    other.data_received(queued)

    def _serve(self):
        answered = 0
        while not self.writing_paused:
            try:
                event = self.decoder.next_event()
            except RemoteProtocolError as error:
                self._protocol_error(error)
                return
            if event is NEED_DATA:
                if self.server.stopping and not self.decoder.buffered and not _unread(self):
                    self.transport.close()  # stopping and idle: every request answered
                return
            if isinstance(event, Closed):
                self.transport.close()
                return
            try:
                reply = self._answer(event)
            except RemoteProtocolError as error:
                if "short_add_answered" in self.faults and error.reason == "add_payload_too_short":
                    reply = event.respond(bytes((Status.ADD_CORRUPT,)))
                else:
                    self._protocol_error(error)
                    return
            if "never_answer" in self.faults:
                continue
            repeated = event.request_uid == self.last_uid
            self.last_uid = event.request_uid
            if "repeated_uid_ignored" in self.faults and repeated:
                continue
            answered += 1
            if "slow_pipelining" in self.faults and answered > 1:
                loop = asyncio.get_running_loop()
                loop.call_later(0.1 * (answered - 1), self._write_now, reply)
                continue
            if "close_on_pipelining" in self.faults and len(reply) > 6116 and self.decoder.buffered:
                self.transport.write(reply[:2062])
                self.transport.close()
                return
            self._write(reply)
            if "flood" in self.faults:
                self._write(reply)

    def _write(self, data):
        if "half_close_drop" in self.faults:
            # Like the legacy loop: read (and see the EOF) before writing, then drop everything.
            asyncio.get_running_loop().call_later(0.05, self._write_now, data)
        elif "interleave_frames" in self.faults:
            self._interleaved(data)
        else:
            self._write_now(data)

    def _interleaved(self, data):
        """interleave_frames: replies written in one pass of the loop go out frame by frame."""
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush_interleaved)
        self.pending.append(_frames_of(data))

    def _flush_interleaved(self):
        pending, self.pending = self.pending, []
        while any(pending):
            for frames in pending:
                if frames:
                    self._write_now(frames.pop(0))

    def _write_now(self, data):
        if "pad_frames" in self.faults:
            data += b"\x00"
        if not self.transport.is_closing():
            self.transport.write(data)

    def _answer(self, request: Request) -> bytes:
        cache = self.server.cache
        op = request.operation
        if op is Operation.ADD:
            checked = check_add(request.payload)
            if "add_order" in self.faults and checked is Status.ADD_CORRUPT:
                id_len = int.from_bytes(request.payload[4:8], "big")
                if id_len == 0 or id_len > 64:
                    checked = Status.ADD_ID_RANGE
            if "largest_refused" in self.faults and len(request.payload) >= 32768:
                raise RemoteProtocolError("message_too_large", "32768 bytes refused")
            longest = not isinstance(checked, Status) and checked.timeout_ms == 604_800_000
            if "max_timeout_refused" in self.faults and longest:
                checked = Status.ADD_TIMEOUT_RANGE
            small = not isinstance(checked, Status) and len(checked.session) < 5
            if "short_sessions_refused" in self.faults and small:
                checked = Status.ADD_CORRUPT
            if isinstance(checked, Status):
                payload = bytes((checked,))
            else:
                stored = cache.add(checked.session_id, checked.session, checked.timeout_ms)
                duplicate = stored is AddResult.DUPLICATE and "wrong_status" not in self.faults
                payload = bytes((Status.ADD_MATCHING_SESSION if duplicate else Status.OK,))
        elif op is Operation.GET:
            session = cache.get(request.payload)
            payload = session if session is not None else bytes((Status.NOTOK,))
        elif op is Operation.REMOVE:
            removed = cache.remove(request.payload) or "remove_always_ok" in self.faults
            miss = (
                Status.DISCONNECTED if "remove_miss_disconnected" in self.faults else Status.NOTOK
            )
            payload = bytes((Status.OK if removed else miss,))
        else:
            payload = bytes((Status.OK if cache.have(request.payload) else Status.NOTOK,))
        uid = request.request_uid
        if "wrong_uid" in self.faults:
            uid &= 0x7FFFFFFF
        if "wrong_patch_level" in self.faults:
            header = fastcodec.encode_header(1, uid, op, 1, len(payload), 0x00110001)
            return (
                header + payload
                if len(payload) <= 2048
                else encode_message(Direction.RESPONSE, uid, op, payload)
            )
        if "no_fragmentation" in self.faults and len(payload) > 2048:
            header = fastcodec.encode_header(1, uid, op, 1, len(payload) & 0xFFFF, 0x00110000)
            return header + payload
        if "trailing_empty_frame" in self.faults and payload and len(payload) % 2048 == 0:
            pieces = [payload[at : at + 2048] for at in range(0, len(payload), 2048)] + [b""]
            return b"".join(
                fastcodec.encode_header(1, uid, op, int(n == len(pieces) - 1), len(p), 0x00110000)
                + p
                for n, p in enumerate(pieces)
            )
        if "half_frames" in self.faults and len(payload) > 1024:
            pieces = [payload[at : at + 1024] for at in range(0, len(payload), 1024)]
            return b"".join(
                fastcodec.encode_header(1, uid, op, int(n == len(pieces) - 1), len(p), 0x00110000)
                + p
                for n, p in enumerate(pieces)
            )
        return encode_message(Direction.RESPONSE, uid, op, payload)


#: refuse_at_cap: the connections it serves at most (the reference server reclaims idle ones).
REFUSING_CAP = 64


def _unread(connection: Connection) -> int:
    sock = connection.transport.get_extra_info("socket")
    answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", answer)[0]


class FaultyServer:
    def __init__(self, faults=(), sessions: int = 512):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.faults = set(faults)
        self.cache = FaultyCache(sessions, self.faults)
        self.connections = 0
        self.open: set[Connection] = set()
        self.stalled_by: Connection | None = None
        self.stopping = False
        self._server = None

    async def start(self, listen: str):
        loop = asyncio.get_running_loop()
        address = parse_address(listen)
        if address.kind == "unix":
            self._server = await loop.create_unix_server(lambda: Connection(self), address.path)
        else:
            self._server = await loop.create_server(
                lambda: Connection(self), address.host or "0.0.0.0", address.port
            )
        return self._server

    async def serve_forever(self):
        await self._server.serve_forever()

    async def serve_until_stopped(self, grace: float = 10.0):
        """SIGTERM: stop accepting, answer what was received (ROBUST-7), then return."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        self.stopping = True
        self._server.close()
        for connection in list(self.open):
            if "stop_drops_requests" in self.faults:
                connection.transport.abort()  # the legacy's SIGTERM: what was received is lost
            else:
                connection._serve()
        deadline = loop.time() + grace
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faulty_servers")
    parser.add_argument("-listen", required=True)
    parser.add_argument("-sessions", type=int, default=512)
    parser.add_argument("-fault", action="append", default=[], choices=sorted(FAULTS))
    args = parser.parse_args(argv)

    async def run():
        server = FaultyServer(args.fault, args.sessions)
        await server.start(args.listen)
        await server.serve_until_stopped()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
