"""Codec benchmark: the hot path against plain construct and a bare struct floor.

Decodes and encodes the same realistic mix of messages (mostly small requests and replies, some
32 KiB fragmented sessions) three ways, side by side in one run:

  hot path   distcache.protocol.MessageDecoder + encode_message (validation, reassembly, events),
             with the compiled decoder when it is built
  pure path  the same with the compiled decoder turned off (MessageDecoder(accelerated=False))
  construct  distcache.wire.schema.Frame.parse / Frame.build per frame, plus reassembly
  floor      a bare struct.unpack_from / pack loop over the same frames, no checks at all

and prints messages per CPU second (process time, robust on a busy host) and the ratios. Run: python3 benchmarks/codec.py [--seconds S]
"""

from __future__ import annotations

import argparse
import random
import struct
import time

from distcache.protocol import MessageDecoder, add_request, encode_message, get_request
from distcache.protocol.decoder import ACCELERATED
from distcache.wire import Direction, Frame, Operation, limits


def message_mix(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for uid in range(count):
        kind = rng.random()
        if kind < 0.45:
            out.append(get_request(uid, rng.randbytes(32)))
        elif kind < 0.75:
            out.append(encode_message(Direction.RESPONSE, uid, Operation.HAVE, b"\x00"))
        elif kind < 0.97:
            out.append(
                add_request(uid, rng.randbytes(32), rng.randbytes(rng.randint(50, 2100)), 60000)
            )
        else:
            out.append(
                encode_message(
                    Direction.RESPONSE, uid, Operation.GET, rng.randbytes(limits.MAX_PAYLOAD)
                )
            )
    return out


def hot_path(stream: bytes, accelerated: bool = True) -> int:
    decoder = MessageDecoder(receives=None, accelerated=accelerated)
    decoder.receive_data(stream)
    count = 0
    for event in decoder.events():
        encode_message(event.direction, event.request_uid, event.operation, event.payload)
        count += 1
    return count


def pure_path(stream: bytes) -> int:
    return hot_path(stream, accelerated=False)


def with_construct(stream: bytes) -> int:
    count, pos, parts = 0, 0, []
    parse, build = Frame.parse, Frame.build
    while pos < len(stream):
        frame = parse(stream[pos : pos + limits.MAX_FRAME_SIZE])
        header = frame.header
        pos += limits.HEADER_SIZE + header.data_len
        parts.append(frame.data)
        if header.complete:
            payload = b"".join(parts)
            parts = []
            for start in range(0, max(len(payload), 1), limits.MAX_FRAME_DATA):
                chunk = payload[start : start + limits.MAX_FRAME_DATA]
                last = start + limits.MAX_FRAME_DATA >= len(payload)
                build(
                    dict(header=dict(header, complete=int(last), data_len=len(chunk)), data=chunk)
                )
            count += 1
    return count


_HEADER = struct.Struct(">LBLBBBH")


def floor(stream: bytes) -> int:
    count, pos, parts = 0, 0, []
    unpack, pack = _HEADER.unpack_from, _HEADER.pack
    while pos < len(stream):
        level, is_response, uid, op_class, op, complete, data_len = unpack(stream, pos)
        pos += 14
        parts.append(stream[pos : pos + data_len])
        pos += data_len
        if complete:
            payload = b"".join(parts)
            parts = []
            pack(level, is_response, uid, op_class, op, complete, len(payload) & 0xFFFF)
            count += 1
    return count


def rate(function, stream: bytes, seconds: float) -> float:
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        done += function(stream)
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per codec (default 2)")
    parser.add_argument("--messages", type=int, default=5000, help="messages in the mix")
    args = parser.parse_args()
    stream = b"".join(message_mix(args.messages))
    counts = {f(stream) for f in (hot_path, pure_path, with_construct, floor)}
    assert len(counts) == 1, f"codecs disagree on the message count: {counts}"
    rates = {
        name: rate(f, stream, args.seconds)
        for name, f in (
            ("hot path", hot_path),
            ("pure path", pure_path),
            ("construct", with_construct),
            ("floor", floor),
        )
    }
    print(f"mix: {args.messages} messages, {len(stream)} bytes")
    for name, value in rates.items():
        print(f"{name:>10}: {value:12,.0f} messages/s")
    print(f"hot path / construct = {rates['hot path'] / rates['construct']:.1f}x (target >= 20x)")
    print(f"floor / hot path     = {rates['floor'] / rates['hot path']:.2f}x (target <= 3x)")
    print(
        f"hot path / pure path = {rates['hot path'] / rates['pure path']:.2f}x (compiled decoder: {ACCELERATED})"
    )


if __name__ == "__main__":
    main()
