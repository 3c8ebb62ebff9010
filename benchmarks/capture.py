"""Capture benchmark: ``distcache decode`` on a large synthesised pcap against bare dpkt reading.

Synthesises a capture (with dpkt) of pipelined distcache traffic over several connections: each
client write carries a batch of requests (mostly small GET/HAVE/REMOVE, some ADDs, a few 32 KiB
fragmented sessions), each server write the batch of responses, cut into TCP segments of at most
``--mss`` bytes. Then it times, on the same file:

  dpkt only   iterating the file with dpkt.pcap.Reader, no decoding at all (the floor)
  sans-IO     the protocol decoder alone, fed the same segments from memory (the ceiling)
  core        distcache.capture: TCP reassembly, decoding, uid pairing (CapturedMessage events)
  records     the core plus distcache.decoding's JSON records (what --format json prints)

and prints messages per second and the ratios. Run: python3 benchmarks/capture.py [--messages N]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import dpkt

from distcache.capture import CaptureDecoder, capture_record, read_segments
from distcache.protocol import (
    NEED_DATA,
    MessageDecoder,
    add_request,
    encode_message,
    get_request,
    have_request,
)
from distcache.wire import Direction, Operation, Status, limits

CLIENT_IP, SERVER_IP, SERVER_PORT = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 9001


def exchange(rng: random.Random, uid: int) -> tuple[bytes, bytes]:
    """One request and its response."""
    kind, key = rng.random(), rng.randbytes(32)
    if kind < 0.45:
        if rng.random() < 0.03:
            reply = encode_message(
                Direction.RESPONSE, uid, Operation.GET, rng.randbytes(limits.MAX_PAYLOAD - 9)
            )
        else:
            reply = encode_message(Direction.RESPONSE, uid, Operation.GET, rng.randbytes(120))
        return get_request(uid, key), reply
    if kind < 0.8:
        return have_request(uid, key), encode_message(
            Direction.RESPONSE, uid, Operation.HAVE, bytes([Status.OK])
        )
    session = rng.randbytes(rng.randint(50, 400))
    return add_request(uid, key, session, 60000), encode_message(
        Direction.RESPONSE, uid, Operation.ADD, bytes([Status.OK])
    )


def packet(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, data: bytes):
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=0x18, data=data)
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def synthesise(
    path: str, messages: int, connections: int, batch: int, mss: int
) -> tuple[int, dict[tuple[int, int], list[bytes]]]:
    """Write the capture; return the number of packets and each direction's segment payloads."""
    rng = random.Random(7)
    seqs = {c: [1000, 5000] for c in range(connections)}  # client seq, server seq
    packets, uid, now = 0, 0, 1_700_000_000.0
    segments: dict[tuple[int, int], list[bytes]] = {}
    with open(path, "wb") as out:
        writer = dpkt.pcap.Writer(out)
        while uid * 2 < messages:
            conn = rng.randrange(connections)
            port = 40000 + conn
            pairs = [exchange(rng, uid + i) for i in range(batch)]
            uid += batch
            for side, data in enumerate(
                (b"".join(p[0] for p in pairs), b"".join(p[1] for p in pairs))
            ):
                ends = (CLIENT_IP, port, SERVER_IP, SERVER_PORT)
                if side:
                    ends = (SERVER_IP, SERVER_PORT, CLIENT_IP, port)
                for start in range(0, len(data), mss):
                    chunk = data[start : start + mss]
                    own, peer = seqs[conn][side], seqs[conn][1 - side]
                    writer.writepkt(packet(*ends, own, peer, chunk), now)
                    segments.setdefault((conn, side), []).append(chunk)
                    seqs[conn][side] = (own + len(chunk)) & 0xFFFFFFFF
                    packets += 1
                    now += 0.00001
    return packets, segments


def dpkt_only(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(1 for _ in dpkt.pcap.Reader(stream))


def sans_io(segments: dict[tuple[int, int], list[bytes]]) -> int:
    count = 0
    for chunks in segments.values():
        decoder = MessageDecoder(receives=None)
        for chunk in chunks:
            decoder.receive_data(chunk)
            while decoder.next_event() is not NEED_DATA:
                count += 1
    return count


def core(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(1 for _ in CaptureDecoder().decode(read_segments(stream)))


def records(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(
            1 for item in CaptureDecoder().decode(read_segments(stream)) if capture_record(item)
        )


def timed(function, argument, repeat: int) -> tuple[float, int]:
    """Best time of ``repeat`` runs (the least disturbed by other load) and the result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(argument)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages to synthesise")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="requests per pipelined write")
    parser.add_argument("--mss", type=int, default=16384, help="largest TCP segment payload")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.pcap")
        packets, segments = synthesise(path, args.messages, args.connections, args.batch, args.mss)
        size = os.path.getsize(path)
        floor_s, counted = timed(dpkt_only, path, args.repeat)
        assert counted == packets
        sans_io_s, decoded = timed(sans_io, segments, args.repeat)
        core_s, messages = timed(core, path, args.repeat)
        assert decoded == messages
        records_s, recorded = timed(records, path, args.repeat)
        assert recorded == messages
    print(
        f"capture: {messages} messages in {packets} packets, {size / 1e6:.1f} MB "
        f"(batch {args.batch}, mss {args.mss}, {args.connections} connections)"
    )
    runs = (
        ("dpkt only", floor_s),
        ("sans-IO", sans_io_s),
        ("core", core_s),
        ("records", records_s),
    )
    for name, seconds in runs:
        print(
            f"  {name:<10} {messages / seconds:>12,.0f} messages/s  "
            f"{packets / seconds:>10,.0f} packets/s  {seconds:6.2f} s  "
            f"x{seconds / floor_s:.1f} the dpkt floor"
        )
    print(f"  core / sans-IO decoder alone: {sans_io_s / core_s:.0%} of its speed")


if __name__ == "__main__":
    main()
