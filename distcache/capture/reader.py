"""Reading TCP segments out of pcap and pcapng files.

dpkt reads the file formats (pcap in either byte order and time resolution, pcapng); the link,
IP and TCP headers are unpacked here with ``struct`` because dpkt's per-layer objects cost about
ten times more per packet, and a busy capture holds millions of packets. Supported link types:
Ethernet (with VLAN tags), Linux cooked SLL and SLL2, raw IP, BSD loopback (NULL and LOOP);
IPv4 and IPv6 (extension headers skipped). IP fragments and non-TCP packets are skipped.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

import dpkt

#: First four bytes of a pcap file (both byte orders, micro- and nanosecond variants) and of a
#: pcapng file (its section header block type).
PCAP_MAGICS = frozenset(bytes.fromhex(m) for m in ("a1b2c3d4", "d4c3b2a1", "a1b23c4d", "4d3cb2a1"))
PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")

# TCP flag bits.
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100))
_IPV6_EXTENSIONS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT, _TCP = 44, 6
# BSD address families meaning IPv6 (they differ between BSDs); 2 is IPv4 everywhere.
_AF_INET6_VALUES = frozenset((10, 24, 28, 30))

_u16 = struct.Struct(">H").unpack_from
_u32le = struct.Struct("<I").unpack_from
_u32be = struct.Struct(">I").unpack_from
_ipv4 = struct.Struct(">BxHxxHxBxx4s4s").unpack_from  # ver/ihl, total, frag, proto, src, dst
_ipv6 = struct.Struct(">4xHBx16s16s").unpack_from  # payload length, next header, src, dst
_tcp = struct.Struct(">HHIIBB").unpack_from  # ports, seq, ack, data offset, flags


class CaptureError(Exception):
    """The file is not a readable capture (unknown format or link type, truncated, corrupt)."""


class Segment(NamedTuple):
    """One TCP segment as captured."""

    time: float  #: capture time, seconds since the epoch
    src: bytes  #: source address (4 or 16 bytes)
    sport: int
    dst: bytes
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def capture_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None, from the first four bytes of a file."""
    magic = bytes(head[:4])
    if magic in PCAP_MAGICS:
        return "pcap"
    if magic == PCAPNG_MAGIC:
        return "pcapng"
    return None


def format_endpoint(address: bytes, port: int) -> str:
    """``ip:port``, with brackets around an IPv6 address."""
    if len(address) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, address)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, address)}]:{port}"


class _ExactReads:
    """A file wrapper that turns a short read (the file ends inside a record) into an error.

    dpkt silently returns a shortened last packet; a capture cut off mid-write must be reported.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._read = stream.read
        self.name = getattr(stream, "name", "<stream>")
        #: Set once a pcap file header is read: reads then alternate record header, record body,
        #: and an empty read of a body is a file cut right after a record header.
        self.records_alternate = False
        self._reads = 0

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        body = self.records_alternate and self._reads % 2 == 1
        self._reads += 1
        if 0 < len(data) < size or (body and size > 0 and not data):
            raise CaptureError("truncated capture file")
        return data

    def start_records(self) -> None:
        self.records_alternate = True
        self._reads = 0


def _ip_offset(linktype: int) -> Callable[[bytes], int]:
    """A function giving the offset of the IP header in a packet of this link type (or -1)."""

    def ethernet(pkt: bytes) -> int:
        offset, ethertype = 14, _u16(pkt, 12)[0]
        while ethertype in _VLAN_TAGS:
            ethertype = _u16(pkt, offset + 2)[0]
            offset += 4
        return offset if ethertype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else -1

    def sll(pkt: bytes) -> int:
        return 16 if _u16(pkt, 14)[0] in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else -1

    def sll2(pkt: bytes) -> int:
        return 20 if _u16(pkt, 0)[0] in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else -1

    def bsd_null(pkt: bytes) -> int:  # address family in the writer's byte order
        family = _u32le(pkt, 0)[0]
        if family > 0xFFFF:
            family = _u32be(pkt, 0)[0]
        return 4 if family == 2 or family in _AF_INET6_VALUES else -1

    def bsd_loop(pkt: bytes) -> int:
        family = _u32be(pkt, 0)[0]
        return 4 if family == 2 or family in _AF_INET6_VALUES else -1

    def raw(pkt: bytes) -> int:
        return 0

    table = {
        dpkt.pcap.DLT_EN10MB: ethernet,
        dpkt.pcap.DLT_LINUX_SLL: sll,
        dpkt.pcap.DLT_LINUX_SLL2: sll2,
        dpkt.pcap.DLT_NULL: bsd_null,
        dpkt.pcap.DLT_LOOP: bsd_loop,
        101: raw,  # LINKTYPE_RAW, what files carry for raw IP
        12: raw,  # DLT_RAW as most systems number it in memory (some files carry it)
        14: raw,  # DLT_RAW on OpenBSD
        228: raw,  # LINKTYPE_IPV4
        229: raw,  # LINKTYPE_IPV6
    }
    try:
        return table[linktype]
    except KeyError:
        raise CaptureError(f"unsupported link type {linktype}") from None


def _tcp_segment(time: float, pkt: bytes, offset: int) -> Segment | None:
    """The TCP segment in the IP packet at ``pkt[offset:]``, or None (not TCP, a fragment)."""
    version = pkt[offset] >> 4
    if version == 4:
        ver_ihl, total, frag, proto, src, dst = _ipv4(pkt, offset)
        if proto != _TCP or frag & 0x3FFF:  # more-fragments flag or a fragment offset
            return None
        end = offset + total
        offset += (ver_ihl & 0x0F) * 4
    elif version == 6:
        length, proto, src, dst = _ipv6(pkt, offset)
        end = offset + 40 + length
        offset += 40
        while proto in _IPV6_EXTENSIONS:
            proto = pkt[offset]
            offset += (pkt[offset + 1] + 1) * 8
        if proto != _TCP:
            return None
    else:
        return None
    sport, dport, seq, ack, data_offset, flags = _tcp(pkt, offset)
    payload = pkt[offset + (data_offset >> 4) * 4 : end]
    return Segment(time, src, sport, dst, dport, seq, ack, flags, payload)


def read_segments(stream: BinaryIO) -> Iterator[Segment]:
    """Every TCP segment of a pcap or pcapng capture, in file order.

    Raises :class:`CaptureError` for anything that is not a readable capture.
    """
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)
    head = stream.peek(4)[:4]
    source = _ExactReads(stream)
    try:
        if capture_format(head) == "pcapng":
            reader = dpkt.pcapng.Reader(source)
        else:
            reader = dpkt.pcap.Reader(source)
            source.start_records()
    except CaptureError as error:
        raise CaptureError(f"{error}: cut short in its file header") from None
    except (ValueError, dpkt.UnpackError, struct.error) as error:
        raise CaptureError(f"not a pcap or pcapng capture ({error})") from None
    ip_offset = _ip_offset(reader.datalink())
    count = 0
    try:
        for time, pkt in reader:
            count += 1
            try:
                offset = ip_offset(pkt)
                if offset < 0:
                    continue
                segment = _tcp_segment(float(time), pkt, offset)
            except (IndexError, struct.error):
                continue  # a packet cut short by the snap length: nothing usable in it
            if segment is not None:
                yield segment
    except CaptureError as error:
        raise CaptureError(f"{error}: cut short after packet {count}") from None
    except (ValueError, dpkt.UnpackError, struct.error) as error:
        raise CaptureError(f"corrupt capture file after {count} packets ({error})") from None
