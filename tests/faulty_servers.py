"""Deliberately faulty distcache servers, to prove the conformance suite has teeth.

A small asyncio server built on the sans-IO core and the memory cache, with one switch per fault.
With no fault it is a correct server. Run it as a program (like dc_server) so the runner can start,
restart and watch it through ``--server-cmd``::

    python tests/faulty_servers.py -listen IP:127.0.0.1:9001 -sessions 64 -fault wrong_uid
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from distcache.address import parse_address
from distcache.cache import AddResult, MemoryCache
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

#: Every fault, with what it breaks.
FAULTS = {
    "wrong_status": "a duplicate ADD answers OK instead of 0x65",
    "add_order": "ADD checks the id range before the id_len consistency (103 instead of 100)",
    "no_fragmentation": "replies over 2048 bytes go out as one oversized frame",
    "wrong_uid": "replies drop the top bit of the request uid",
    "evict_wrong": "a full cache evicts the most recently added entries",
    "ignore_expiry": "sessions never expire",
    "close_on_pipelining": "a large reply with another request waiting closes the connection",
    "reply_partial": "a frame missing only its last byte is answered as a GET miss",
    "crash_on_bad_version": "a foreign protocol version kills the process",
    "never_answer": "requests are read and never answered",
    "flood": "every request is answered twice",
    "crash_mid_run": "the process exits at its 15th connection",
    "half_close_drop": "replies are dropped once the client half-closes",
    "idle_close": "connections idle for 150 ms are closed",
    "split_header_close": "a frame header split across reads closes the connection",
}


class FaultyCache(MemoryCache):
    """The memory cache with the cache faults switched in."""

    def __init__(self, capacity: int, faults: set[str]):
        super().__init__(capacity)
        self.faults = faults

    def add(self, session_id, session, timeout_ms):
        if "ignore_expiry" in self.faults:
            timeout_ms = 604_800_000
        if "evict_wrong" in self.faults and session_id not in self._entries:
            self._purge_expired(self.clock.now_ms())
            if len(self._entries) >= self.capacity:
                for victim in list(self._entries)[-self.eviction_batch :]:
                    del self._entries[victim]
                self._rebuild_heap()
        return super().add(session_id, session, timeout_ms)


class Connection(asyncio.Protocol):
    def __init__(self, server: FaultyServer):
        self.server = server
        self.faults = server.faults
        self.decoder = _Decoder(receives=Direction.REQUEST)
        self.transport = None
        self.idle_timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1
        if "crash_mid_run" in self.faults and self.server.connections >= 15:
            os._exit(3)
        self._arm_idle()

    def _arm_idle(self):
        if "idle_close" in self.faults:
            if self.idle_timer:
                self.idle_timer.cancel()
            self.idle_timer = asyncio.get_running_loop().call_later(0.15, self.transport.close)

    def data_received(self, data):
        self._arm_idle()
        if "crash_on_bad_version" in self.faults:
            buffered = bytes(self.decoder._buf[self.decoder._pos :]) + data
            if len(buffered) >= 5 and int.from_bytes(buffered[:2], "big") != PROTOCOL_VERSION:
                os._exit(134)
        split = "split_header_close" in self.faults and 0 < len(data) < fastcodec.HEADER_SIZE
        if split and not self.decoder.in_message:
            self.transport.close()
            return
        self.decoder.receive_data(data)
        self._serve()
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

    def _serve(self):
        while True:
            try:
                event = self.decoder.next_event()
            except RemoteProtocolError:
                self.transport.close()
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Closed):
                self.transport.close()
                return
            try:
                reply = self._answer(event)
            except RemoteProtocolError:
                self.transport.close()
                return
            if "never_answer" in self.faults:
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
        else:
            self._write_now(data)

    def _write_now(self, data):
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
            payload = bytes((Status.OK if cache.remove(request.payload) else Status.NOTOK,))
        else:
            payload = bytes((Status.OK if cache.have(request.payload) else Status.NOTOK,))
        uid = request.request_uid
        if "wrong_uid" in self.faults:
            uid &= 0x7FFFFFFF
        if "no_fragmentation" in self.faults and len(payload) > 2048:
            header = fastcodec.encode_header(1, uid, op, 1, len(payload) & 0xFFFF, 0x00110000)
            return header + payload
        return encode_message(Direction.RESPONSE, uid, op, payload)


class FaultyServer:
    def __init__(self, faults=(), sessions: int = 512):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.faults = set(faults)
        self.cache = FaultyCache(sessions, self.faults)
        self.connections = 0
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faulty_servers")
    parser.add_argument("-listen", required=True)
    parser.add_argument("-sessions", type=int, default=512)
    parser.add_argument("-fault", action="append", default=[], choices=sorted(FAULTS))
    args = parser.parse_args(argv)

    async def run():
        server = FaultyServer(args.fault, args.sessions)
        await server.start(args.listen)
        await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
